"""Where a code bundle lives in the blob store, and how its ``BundleRef.uri`` names it.

A bundle is the archive of a user's project, stored once under its own sha256:
``bundles/<sha256>.tar.gz``. The SDK writes it there (``strata workflow apply``)
and every agent reads it from there, both through the blob store their
``STRATA_BLOB_*`` settings name, so the key is the same everywhere. The uri
recorded in ``BundleRef`` says where it is for people and lineage:
``s3://<bucket>/bundles/<sha256>.tar.gz`` or ``file://<root>/bundles/<sha256>.tar.gz``;
an agent reads the key back from it (:func:`key_of`) and refuses a uri its own
store does not hold.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from strata.core.errors import InvalidArgumentError
from strata.core.settings import BlobSettings

PREFIX = "bundles/"
SUFFIX = ".tar.gz"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def valid_sha256(text: str) -> bool:
    """Whether ``text`` is a lower-case hex sha256, as ``BundleRef.sha256`` must be."""
    return _SHA256.fullmatch(text) is not None


def bundle_key(sha256: str) -> str:
    """The blob key of the bundle whose archive has this sha256."""
    if not valid_sha256(sha256):
        raise InvalidArgumentError(
            "bundle.sha256", f"expected 64 lower-case hex digits, got {sha256!r}"
        )
    return f"{PREFIX}{sha256}{SUFFIX}"


def bundle_uri(settings: BlobSettings, sha256: str) -> str:
    """The uri of the bundle in the store ``settings`` names."""
    key = bundle_key(sha256)
    if settings.backend == "s3":
        return f"s3://{settings.bucket}/{key}"
    return (settings.root.resolve() / key).as_uri()


def key_of(uri: str, settings: BlobSettings) -> str:
    """The blob key ``uri`` names in the store ``settings`` names; an InvalidArgumentError
    on ``bundle.uri`` when that store does not hold it (another bucket, another folder)."""
    parts = urlsplit(uri)
    if settings.backend == "s3" and parts.scheme == "s3":
        if parts.netloc != settings.bucket:
            raise InvalidArgumentError(
                "bundle.uri",
                f"{uri} is in bucket {parts.netloc!r}; this store reads {settings.bucket!r}",
            )
        key = parts.path.lstrip("/")
    elif settings.backend == "local" and parts.scheme == "file":
        root = settings.root.resolve()
        path = Path(parts.path)
        if not path.is_relative_to(root):
            raise InvalidArgumentError(
                "bundle.uri", f"{uri} is not under this store's folder {root}"
            )
        key = path.relative_to(root).as_posix()
    else:
        raise InvalidArgumentError(
            "bundle.uri", f"{uri} is not in this {settings.backend!r} blob store"
        )
    if not (key.startswith(PREFIX) and key.endswith(SUFFIX)):
        raise InvalidArgumentError("bundle.uri", f"{uri} does not name {PREFIX}<sha256>{SUFFIX}")
    return key
