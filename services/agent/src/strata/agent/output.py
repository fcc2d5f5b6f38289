"""Each attempt's stdout and stderr: captured to files on the node, kept in the blob store.

The worker writes both streams (its file descriptors, so output of C code and of
child processes is kept too) to a folder of its own; the agent uploads them under
:func:`strata.core.attempt_logs.log_key` every :data:`UPLOAD_EVERY` seconds while
the attempt runs (so ``strata workflow logs --follow`` shows it live) and once
more when it ends, before the attempt is reported, so the output is there when
the scheduler hears of the end. The blob store is a dependency the agent degrades
without: an upload that fails is logged and tried again, never fails the attempt.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import structlog

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.core.attempt_logs import STREAMS, log_key
from strata.core.blobs import BlobStore

log = structlog.stdlib.get_logger(__name__)

UPLOAD_EVERY = 1.0
"""Seconds between uploads of a running attempt's output."""


class AttemptOutput:
    """The captured output of one attempt: its folder on the node and its blobs."""

    def __init__(self, blobs: BlobStore, ref: TaskAttemptRef) -> None:
        self._blobs = blobs
        self._ref = ref
        self.folder = Path(tempfile.mkdtemp(prefix="strata-attempt-"))
        self._sizes: dict[str, int] = {}

    async def upload_while_running(self) -> None:
        """Upload what is new every :data:`UPLOAD_EVERY` seconds, until cancelled."""
        while True:
            await asyncio.sleep(UPLOAD_EVERY)
            await self.upload()

    async def upload(self) -> None:
        """Upload each stream that grew since the last upload."""
        for stream in STREAMS:
            path = self.folder / stream
            size = path.stat().st_size if path.exists() else 0
            if self._sizes.get(stream) == size:
                continue
            key = log_key(self._ref.run_id, self._ref.task_id, self._ref.attempt, stream)
            try:
                await self._blobs.put(key, path.read_bytes() if size else b"")
            except Exception:
                log.warning("attempt output not uploaded; trying again later", key=key)
                continue
            self._sizes[stream] = size

    async def close(self) -> None:
        """Upload what is left, then remove the folder from the node."""
        await self.upload()
        await asyncio.to_thread(shutil.rmtree, self.folder, ignore_errors=True)
