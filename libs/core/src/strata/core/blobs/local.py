"""A blob store in a folder: no server, for laptops, tests and single machines.

Layout under ``root``::

    <key>                     the blob itself, a plain file (DuckDB can read it in place)
    .strata/sha256/<key>      its sha256, lowercase hex
    .strata/tmp/              files being written

A put writes the blob to ``.strata/tmp``, fsyncs it, records the sha256, then
renames the file into place, so a key either holds a complete blob or nothing.
Replacing a key that another process is reading at that instant can make that read
fail its integrity check (the sha256 and the bytes are two files); blobs written
once, like artifacts and data partitions, never meet this.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from strata.core.blobs.protocol import (
    BlobData,
    BlobInfo,
    BlobIntegrityError,
    BlobNotFoundError,
    check_key,
    check_prefix,
)
from strata.core.blobs.streams import CHUNK, Digest, chunks_of
from strata.core.reachability import probe

_BOOKKEEPING = ".strata"


class LocalBlobStore:
    """Blobs as files under ``root`` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self._sha_root = self.root / _BOOKKEEPING / "sha256"
        self._tmp = self.root / _BOOKKEEPING / "tmp"

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    async def put(self, key: str, data: BlobData) -> BlobInfo:
        target = self._path(key)
        await asyncio.to_thread(self._tmp.mkdir, parents=True, exist_ok=True)
        file = await asyncio.to_thread(_temporary, self._tmp)
        digest = Digest()
        try:
            with file:
                async for chunk in chunks_of(data):
                    await digest.update(chunk)
                    await asyncio.to_thread(file.write, chunk)
                await asyncio.to_thread(_flush, file)
            await asyncio.to_thread(self._commit, key, Path(file.name), target, digest.hexdigest)
        except BaseException:
            await asyncio.to_thread(Path(file.name).unlink, missing_ok=True)
            raise
        return BlobInfo(key, digest.size, digest.hexdigest)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        expected = await asyncio.to_thread(self._recorded_sha256, key)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BlobNotFoundError(key) from None
        digest = Digest()
        await digest.update(data)
        digest.verify(key, expected)
        return data

    async def open(self, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        path = self._path(key)
        expected = await asyncio.to_thread(self._recorded_sha256, key)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BlobNotFoundError(key) from None
        digest = Digest()
        with file:
            while chunk := await asyncio.to_thread(file.read, chunk_size):
                await digest.update(chunk)
                yield chunk
        digest.verify(key, expected)

    async def stat(self, key: str) -> BlobInfo:
        path = self._path(key)
        if not await asyncio.to_thread(path.is_file):
            raise BlobNotFoundError(key)
        size = (await asyncio.to_thread(path.stat)).st_size
        sha256 = await asyncio.to_thread(self._recorded_sha256, key)
        if sha256 is None:
            raise BlobIntegrityError(key, "no sha256 was recorded when it was written")
        return BlobInfo(key, size, sha256)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(_remove, self._path(key))
        await asyncio.to_thread(_remove, self._sha_root / key)

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return await asyncio.to_thread(self._keys, check_prefix(prefix))

    async def close(self) -> None:
        """Nothing to release; here so both stores are used the same way."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _recorded_sha256(self, key: str) -> str | None:
        try:
            return (self._sha_root / key).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _commit(self, key: str, written: Path, target: Path, sha256: str) -> None:
        """Record the sha256 first, then move the blob into place: a reader never
        finds a blob whose sha256 is missing."""
        sha_file = self._sha_root / key
        with _temporary(self._tmp) as sidecar:
            sidecar.write(sha256.encode() + b"\n")
            _flush(sidecar)
        try:
            sha_file.parent.mkdir(parents=True, exist_ok=True)
            os.replace(sidecar.name, sha_file)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            Path(sidecar.name).unlink(missing_ok=True)
            raise ValueError(
                f"blob key {key!r} clashes with another key: on the local store a key "
                "cannot be both a blob and the folder of other blobs"
            ) from None
        _sync_folder(target.parent)

    def _keys(self, prefix: str) -> builtins.list[str]:
        # Walk only the folder the prefix names, e.g. "runs/7/" or "runs/7/out".
        start = self.root / prefix.rpartition("/")[0]
        keys = []
        for folder, subfolders, files in os.walk(start):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            relative = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix) and not name.startswith("."):
                    keys.append(key)
        return sorted(keys)


def _temporary(folder: Path) -> IO[bytes]:
    return tempfile.NamedTemporaryFile(dir=folder, prefix="put-", delete=False)


def _remove(path: Path) -> None:
    """Delete a file if there is one; a folder in its place holds no blob."""
    with contextlib.suppress(IsADirectoryError, NotADirectoryError):
        path.unlink(missing_ok=True)


def _flush(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


def _sync_folder(folder: Path) -> None:
    """fsync a folder so a rename into it survives a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def ping(root: Path, timeout: float = 5.0) -> None:
    """Write and remove a scratch file under ``root``; UnreachableError if that fails."""

    def write_scratch_file() -> None:
        tmp = Path(root) / _BOOKKEEPING / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=tmp, prefix="ping-"):
            pass

    async def attempt() -> None:
        await asyncio.to_thread(write_scratch_file)

    await probe("Local blob store", str(root), attempt, timeout, (OSError,))
