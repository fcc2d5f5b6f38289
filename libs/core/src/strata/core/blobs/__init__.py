"""Blob storage: artifacts, datasets and offline features, on S3 or a local folder.

``open_blob_store(settings)`` picks the backend from ``STRATA_BLOB_BACKEND``; code
written against :class:`BlobStore` runs unchanged on either. Every blob's sha256
is recorded on write and checked on read.
"""

from __future__ import annotations

from strata.core.blobs import local, s3
from strata.core.blobs.local import LocalBlobStore
from strata.core.blobs.protocol import (
    BlobData,
    BlobInfo,
    BlobIntegrityError,
    BlobNotFoundError,
    BlobStore,
    check_key,
)
from strata.core.blobs.s3 import S3BlobStore
from strata.core.settings import BlobSettings

__all__ = [
    "BlobData",
    "BlobInfo",
    "BlobIntegrityError",
    "BlobNotFoundError",
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "check_key",
    "open_blob_store",
    "ping",
]


def open_blob_store(settings: BlobSettings) -> BlobStore:
    """The store ``settings.backend`` names; close it when done (or use ``async with``)."""
    if settings.backend == "s3":
        return S3BlobStore(settings)
    return LocalBlobStore(settings.root)


async def ping(settings: BlobSettings, timeout: float = 5.0) -> None:
    """Check the configured store can be used; raise UnreachableError when it cannot.

    S3: list one key of the bucket. Local: write and remove a file in the folder.
    """
    if settings.backend == "s3":
        await s3.ping(settings, timeout)
    else:
        await local.ping(settings.root, timeout)
