"""Chunked reading and hashing shared by the stores.

Hashing a large object takes long enough to stall an event loop, so chunks of
real size are hashed on a worker thread (hashlib releases the GIL meanwhile).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from strata.core.blobs.protocol import BlobData, BlobIntegrityError

CHUNK = 1024 * 1024
"""Bytes read or written per step when streaming."""

_INLINE_HASH_MAX = 64 * 1024
"""Below this, hashing on the event loop is cheaper than a thread hop."""


class Digest:
    """A running sha256 and byte count that never blocks the event loop for long."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    async def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(chunk) <= _INLINE_HASH_MAX:
            self._sha256.update(chunk)
        else:
            await asyncio.to_thread(self._sha256.update, chunk)

    @property
    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    def verify(self, key: str, expected: str | None) -> None:
        """Raise BlobIntegrityError unless the bytes seen hash to ``expected``."""
        if expected is None:
            raise BlobIntegrityError(key, "no sha256 was recorded when it was written")
        if self.hexdigest != expected.lower():
            raise BlobIntegrityError(key, f"sha256 is {self.hexdigest}, expected {expected}")


async def chunks_of(data: BlobData, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
    """``data`` as a stream of chunks (files are read on a worker thread)."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), chunk_size):
            yield bytes(view[start : start + chunk_size])
    elif isinstance(data, Path):
        with await asyncio.to_thread(data.open, "rb") as file:
            while chunk := await asyncio.to_thread(file.read, chunk_size):
                yield chunk
    elif isinstance(data, AsyncIterable):
        async for chunk in data:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"data must yield bytes, got a {type(chunk).__name__}")
            yield bytes(chunk)
    else:
        raise wrong_type(data)


def wrong_type(data: object) -> TypeError:
    """The error for a ``put`` whose data is none of the accepted kinds."""
    return TypeError(
        f"data must be bytes, an async iterable of bytes or a Path, got {type(data).__name__}"
    )
