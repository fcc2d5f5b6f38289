"""What every blob store promises, whatever holds the bytes.

A blob is an immutable-looking byte string under a key such as
``models/churn/3/model.onnx``. Each store records the sha256 of every blob it
writes and checks it on every read, so a flipped bit on disk or a half-written
object is reported as :class:`BlobIntegrityError` instead of being served.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from strata.core.errors import NotFoundError, StrataError

BlobData = bytes | AsyncIterable[bytes] | Path
"""What ``put`` accepts: the bytes, a stream of chunks, or a file to copy."""

MAX_KEY_BYTES = 1024
"""S3's limit on key length, applied to every store so keys move between them."""


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its key, size in bytes and sha256 (lowercase hex)."""

    key: str
    size: int
    sha256: str


class BlobIntegrityError(StrataError):
    """The bytes read back do not match the sha256 recorded when they were written."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"blob {key!r} failed its integrity check: {detail}")
        self.key = key


class BlobNotFoundError(NotFoundError):
    """No blob is stored under ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"blob {key!r}")
        self.key = key


class BlobStore(Protocol):
    """Blob storage behind one interface: the local filesystem or S3.

    Keys are ``/``-separated paths (see :func:`check_key`); the same key means the
    same blob on every store, so moving from a laptop to S3 is a settings change.
    """

    async def put(self, key: str, data: BlobData) -> BlobInfo:
        """Store ``data`` under ``key`` (replacing any blob there) and record its sha256."""
        ...

    async def get(self, key: str) -> bytes:
        """The whole blob, after checking its sha256; for large blobs prefer :meth:`open`."""
        ...

    def open(self, key: str, chunk_size: int = ...) -> AsyncIterator[bytes]:
        """Stream the blob in chunks; the sha256 is checked after the last chunk.

        A mismatch raises BlobIntegrityError from the final step of the iteration,
        so a consumer must not act on the data before the iteration has finished.
        """
        ...

    async def stat(self, key: str) -> BlobInfo:
        """Size and recorded sha256 of a blob, without reading it."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; removing a key that holds nothing is not an error."""
        ...

    async def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as in S3), sorted."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_key(key: str) -> str:
    """Return ``key`` if every store can hold it, else raise ValueError naming it.

    A key is one or more ``/``-separated segments; no segment is empty, ``.`` or
    ``..`` or starts with ``.`` (hidden names are kept for the stores' own
    bookkeeping), and there is no leading ``/``, backslash or NUL. These rules keep a
    key from escaping the local store's folder and mean the same thing on S3.
    """
    if not isinstance(key, str):
        raise TypeError(f"blob key must be a str, got {type(key).__name__}")
    problem = _key_problem(key)
    if problem:
        raise ValueError(f"invalid blob key {key!r}: {problem}")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start a valid key ("" lists everything), else ValueError."""
    if prefix:
        try:
            check_key(prefix.removesuffix("/"))
        except ValueError as exc:
            raise ValueError(str(exc).replace("blob key", "blob key prefix", 1)) from None
    return prefix


def _key_problem(key: str) -> str | None:
    if not key:
        return "it is empty"
    if key.startswith("/"):
        return "it starts with '/'"
    if "\\" in key or "\x00" in key:
        return "it contains a backslash or NUL"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"it is longer than {MAX_KEY_BYTES} bytes"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return f"it has an empty, '.' or '..' segment ({segment!r})"
        if segment.startswith("."):
            return f"segment {segment!r} starts with '.'"
    return None
