"""Resumable artifact uploads: parts kept in the blob store until the file is whole.

Each part is written to the blob store before the upload's stored byte count
moves past it, so after an interruption the count (GetUpload) says exactly where
the client resumes. When the last byte is in, the parts are streamed into a
temporary file while hashed, checked against the header's size and SHA-256 and the
safe-format rules (an ONNX model parsed from that file), and only then stored under
the artifact's content address. No step holds the whole file in memory but the ONNX
parse, which protobuf needs; the size limits per kind
(:class:`~strata.registry.domain.limits.SizeLimits`) bound it.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from strata.api.registry.v1 import registry_pb2 as pb
from strata.core.blobs import BlobStore
from strata.core.blobs.streams import Digest
from strata.core.errors import FailedPreconditionError, InvalidArgumentError
from strata.core.runtime import ServiceContext
from strata.registry.domain.formats import OnnxModel, read_onnx_model, refuse_code_formats
from strata.registry.store import Conn, RegistryStore

PART_BYTES = 1024 * 1024
"""Bytes gathered before a part is stored: an interruption loses less than this."""

UPLOAD_TTL = 7 * 24 * 3600.0
"""Seconds an interrupted upload can be resumed after it last stored a part; then it
is removed with its parts, so abandoned uploads do not fill the blob store."""


def part_prefix(header: pb.ArtifactHeader) -> str:
    return f"uploads/{header.model_name}/{header.upload_id}/"


def artifact_key(model_name: str, sha256: str) -> str:
    return f"models/{model_name}/artifacts/{sha256}"


class Upload:
    """One upload call's writer: stores parts and moves the stored count with them."""

    def __init__(
        self,
        header: pb.ArtifactHeader,
        received: int,
        blobs: BlobStore,
        store: RegistryStore,
        db: Conn,
    ) -> None:
        self.header = header
        self.received = received
        self._blobs = blobs
        self._store = store
        self._db = db
        self._buffer = bytearray()

    async def add(self, chunk: bytes) -> None:
        if self.received + len(self._buffer) + len(chunk) > self.header.size_bytes:
            raise InvalidArgumentError(
                "chunk",
                f"more bytes than header.size_bytes ({self.header.size_bytes}) announced",
            )
        self._buffer += chunk
        if len(self._buffer) >= PART_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Store the gathered bytes as the part at the current offset, then count them."""
        if not self._buffer:
            return
        key = f"{part_prefix(self.header)}{self.received:020d}"
        await self._blobs.put(key, bytes(self._buffer))
        after = self.received + len(self._buffer)
        if not await self._store.advance_upload(
            self._db, self.header.upload_id, self.received, after
        ):
            raise FailedPreconditionError(
                f"upload {self.header.upload_id!r} is being written by another call"
            )
        self.received = after
        self._buffer.clear()

    @property
    def complete(self) -> bool:
        return self.received == self.header.size_bytes

    @asynccontextmanager
    async def joined(self) -> AsyncIterator[Path]:
        """The whole file in a temporary file, checked against the header's SHA-256."""
        digest = Digest()
        with tempfile.TemporaryDirectory(prefix="strata-upload-") as folder:
            path = Path(folder) / "artifact"
            with path.open("wb") as out:
                for key in await self._blobs.list(part_prefix(self.header)):
                    async for chunk in self._blobs.open(key):
                        await digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
            if digest.size != self.header.size_bytes or digest.hexdigest != self.header.sha256:
                raise InvalidArgumentError(
                    "header.sha256",
                    f"the {digest.size} bytes received hash to {digest.hexdigest}, "
                    f"not to {self.header.sha256}",
                )
            yield path

    async def discard(self) -> None:
        """Remove the parts (the upload row is the caller's, in its transaction)."""
        for key in await self._blobs.list(part_prefix(self.header)):
            await self._blobs.delete(key)


async def expire_uploads(context: ServiceContext) -> None:
    """One round of the loop removing uploads idle past UPLOAD_TTL, parts first.

    Parts go before the row: a crash in between leaves the row, found again next round.
    """
    store = RegistryStore(context.schema)
    for header in await store.idle_uploads(context.pool, UPLOAD_TTL):
        for key in await context.blobs.list(part_prefix(header)):
            await context.blobs.delete(key)
        await store.end_idle_upload(context.pool, header.upload_id, UPLOAD_TTL)


def inspect(path: Path, header: pb.ArtifactHeader) -> OnnxModel | None:
    """Refuse unsafe content (runs on a worker thread); an ONNX model's summary, else None."""
    if header.kind == pb.ARTIFACT_KIND_ONNX_MODEL:
        return read_onnx_model(path, header.name)
    with path.open("rb") as file:
        refuse_code_formats(file, header.name)
    return None
