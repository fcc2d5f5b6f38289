"""A blob store on S3 or any S3-compatible server (aioboto3).

Objects above ``multipart_threshold`` go up as a multipart upload of
``multipart_chunk``-sized parts, ``multipart_concurrency`` at a time (aioboto3's
managed transfer). The sha256 of the whole object is stored as user metadata
(``x-amz-meta-sha256``) and checked on every read; the server also checks each
request's own SHA256 checksum (``ChecksumAlgorithm=SHA256``) on upload.

The sha256 must be known before the upload starts (metadata travels with the
first request), so a stream of chunks is spooled to a temporary file first:
in memory up to ``multipart_threshold``, on disk beyond.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import io
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self, cast

import aioboto3
from aiobotocore.config import AioConfig
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from strata.core.blobs.protocol import (
    BlobData,
    BlobInfo,
    BlobIntegrityError,
    BlobNotFoundError,
    check_key,
    check_prefix,
)
from strata.core.blobs.streams import CHUNK, Digest, chunks_of, wrong_type
from strata.core.errors import UnreachableError
from strata.core.reachability import probe
from strata.core.settings import BlobSettings

if TYPE_CHECKING:
    from aiobotocore.session import ClientCreatorContext
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import GetObjectOutputTypeDef

SHA256_METADATA = "sha256"
"""User-metadata name of the whole object's sha256 (header ``x-amz-meta-sha256``)."""

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore:
    """Blobs as objects in ``settings.bucket``; the client connects on first use."""

    def __init__(self, settings: BlobSettings) -> None:
        self.settings = settings
        self._client: S3Client | None = None
        self._exits = AsyncExitStack()
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3BlobStore({self.settings.endpoint_url!r}, bucket={self.settings.bucket!r})"

    async def put(self, key: str, data: BlobData) -> BlobInfo:
        check_key(key)
        s3 = await self._s3()
        async with _staged(data, self.settings.multipart_threshold) as staged:
            await s3.upload_fileobj(
                cast("IO[bytes]", _ThreadedReader(staged.file)),  # aioboto3 awaits read()
                self.settings.bucket,
                key,
                ExtraArgs={
                    "Metadata": {SHA256_METADATA: staged.sha256},
                    "ChecksumAlgorithm": "SHA256",
                },
                Config=self._transfer_config(),
            )
        return BlobInfo(key, staged.size, staged.sha256)

    async def get(self, key: str) -> bytes:
        response = await self._get_object(key)
        body = response["Body"]
        async with body:  # releases the connection; reads go through ``body``
            data = await body.read()
        digest = Digest()
        await digest.update(data)
        digest.verify(key, response["Metadata"].get(SHA256_METADATA))
        return data

    async def open(self, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        response = await self._get_object(key)
        digest = Digest()
        body = response["Body"]
        async with body:
            async for chunk in body.iter_chunks(chunk_size):
                await digest.update(chunk)
                yield chunk
        digest.verify(key, response["Metadata"].get(SHA256_METADATA))

    async def stat(self, key: str) -> BlobInfo:
        s3 = await self._s3()
        try:
            head = await s3.head_object(Bucket=self.settings.bucket, Key=check_key(key))
        except ClientError as exc:
            raise _not_found_or(exc, key) from None
        sha256 = head["Metadata"].get(SHA256_METADATA)
        if sha256 is None:
            raise BlobIntegrityError(key, "no sha256 was recorded when it was written")
        return BlobInfo(key, head["ContentLength"], sha256)

    async def exists(self, key: str) -> bool:
        s3 = await self._s3()
        try:
            await s3.head_object(Bucket=self.settings.bucket, Key=check_key(key))
        except ClientError as exc:
            if isinstance(_not_found_or(exc, key), BlobNotFoundError):
                return False
            raise
        return True

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.settings.bucket, Key=check_key(key))

    async def list(self, prefix: str = "") -> builtins.list[str]:
        s3 = await self._s3()
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=check_prefix(prefix)
        )
        return sorted([item["Key"] async for page in pages for item in page.get("Contents", [])])

    async def close(self) -> None:
        await self._exits.aclose()
        self._client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _s3(self) -> S3Client:
        if self._client is not None:
            return self._client
        async with self._connecting:
            if self._client is None:
                config = AioConfig(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"mode": "standard", "max_attempts": 3},
                    max_pool_connections=max(10, 2 * self.settings.multipart_concurrency),
                )
                client = _connect(self.settings, config)
                self._client = await self._exits.enter_async_context(client)
            return self._client

    async def _get_object(self, key: str) -> GetObjectOutputTypeDef:
        s3 = await self._s3()
        try:
            return await s3.get_object(Bucket=self.settings.bucket, Key=check_key(key))
        except ClientError as exc:
            raise _not_found_or(exc, key) from None

    def _transfer_config(self) -> TransferConfig:
        concurrency = self.settings.multipart_concurrency
        return TransferConfig(
            multipart_threshold=self.settings.multipart_threshold,
            multipart_chunksize=self.settings.multipart_chunk,
            max_concurrency=concurrency,
            max_io_queue=concurrency,  # bounds memory to about concurrency x 2 parts
            io_chunksize=CHUNK,
        )


async def ping(settings: BlobSettings, timeout: float = 5.0) -> None:
    """List one key of the bucket; raise UnreachableError when that fails."""
    address = settings.endpoint_url
    config = AioConfig(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": 1},
    )

    async def list_one_key() -> None:
        try:
            async with _connect(settings, config) as s3:
                await s3.list_objects_v2(Bucket=settings.bucket, MaxKeys=1)
        except EndpointConnectionError:
            raise UnreachableError("S3", address, "could not connect") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            reason = f"bucket {settings.bucket!r}: {error.get('Message') or error.get('Code')}"
            raise UnreachableError("S3", address, reason) from None

    await probe("S3", address, list_one_key, timeout, (BotoCoreError, OSError))


def _connect(settings: BlobSettings, config: AioConfig) -> ClientCreatorContext[S3Client]:
    """An ``async with`` context yielding an S3 client for ``settings``."""
    return aioboto3.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=config,
    )


def _not_found_or(exc: ClientError, key: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return BlobNotFoundError(key) if code in _NOT_FOUND else exc


@dataclass
class _Staged:
    file: IO[bytes]
    size: int
    sha256: str


@asynccontextmanager
async def _staged(data: BlobData, spool_limit: int) -> AsyncIterator[_Staged]:
    """``data`` as a readable file whose size and sha256 are known."""
    if isinstance(data, bytes | bytearray | memoryview):
        digest = Digest()
        await digest.update(bytes(data))
        yield _Staged(io.BytesIO(data), digest.size, digest.hexdigest)
    elif isinstance(data, Path):
        with await asyncio.to_thread(data.open, "rb") as file:
            size, sha256 = await asyncio.to_thread(_measure, file)
            yield _Staged(file, size, sha256)
    elif isinstance(data, AsyncIterable):
        with tempfile.SpooledTemporaryFile(max_size=spool_limit) as spool:
            digest = Digest()
            async for chunk in chunks_of(data):
                await digest.update(chunk)
                await asyncio.to_thread(spool.write, chunk)
            spool.seek(0)
            yield _Staged(cast("IO[bytes]", spool), digest.size, digest.hexdigest)
    else:
        raise wrong_type(data)


def _measure(file: io.BufferedReader) -> tuple[int, str]:
    """Size and sha256 of an open file, which is left at its start."""
    sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    size = file.tell()
    file.seek(0)
    return size, sha256


class _ThreadedReader:
    """A file whose reads run on a worker thread, in the awaitable form aioboto3 accepts."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    async def read(self, size: int = -1) -> bytes:
        return await asyncio.to_thread(self._file.read, size)
