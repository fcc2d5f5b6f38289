"""``strata workflow logs RUN_ID [TASK] [--follow]``: what each attempt printed.

Agents keep every attempt's stdout and stderr in the blob store, under
``logs/<run id>/<task id>/<attempt>/<stdout|stderr>`` (the layout is
:mod:`strata.core.attempt_logs`; ``strata.agent.output`` writes them, while the
attempt runs and when it ends). The command reads them
there directly with the user's ``STRATA_BLOB_*`` settings, as ``strata features
training-set`` reads its results: the output outlives the agent that wrote it
and needs no service to be up, and no RPC would do more than copy the same bytes.
With ``--follow`` it looks again every second and prints what is new, like
``tail -f``, until interrupted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.console import Console

from strata.core.attempt_logs import STREAMS, parse, prefix
from strata.core.blobs import BlobStore, open_blob_store
from strata.core.errors import StrataError
from strata.core.settings import BlobSettings, load
from strata.sdk.client import CommandError

FOLLOW_EVERY = 1.0
"""Seconds between looks for new output with ``--follow``."""


@dataclass(frozen=True)
class LogStream:
    """One stream of one attempt, as kept in the blob store."""

    task_id: str
    attempt: int
    stream: str
    key: str

    @property
    def title(self) -> str:
        return f"==> {self.task_id} attempt {self.attempt} {self.stream} <=="


def streams_of(keys: list[str], run_id: str) -> list[LogStream]:
    """The log streams among ``keys`` of run ``run_id``, by task, attempt, stdout first;
    keys of any other shape are not output and are left out."""
    found = []
    for key in keys:
        named = parse(key, run_id)
        if named is not None:
            found.append(LogStream(named.task_id, named.attempt, named.stream, key))
    return sorted(found, key=lambda s: (s.task_id, s.attempt, STREAMS.index(s.stream)))


async def show(run_id: str, task_id: str | None, *, follow: bool, out: Console) -> None:
    """Print the output of run ``run_id`` (of ``task_id`` only, when given); with
    ``follow``, keep printing what is new until interrupted."""
    if not run_id.strip():
        raise CommandError("RUN_ID is empty: name the run (strata workflow status shows it)")
    settings = load(BlobSettings)
    printed: dict[str, int] = {}
    last: LogStream | None = None
    try:
        async with open_blob_store(settings) as blobs:
            while True:
                streams = streams_of(await blobs.list(prefix(run_id, task_id)), run_id)
                if not streams and not follow:
                    what = f"task {task_id!r} of run {run_id}" if task_id else f"run {run_id}"
                    where = _where(settings)
                    raise CommandError(f"no output of {what} in the blob store ({where})")
                for stream in streams:
                    new = await _new_bytes(blobs, stream, printed)
                    if not new:
                        continue
                    if stream != last:
                        out.print(stream.title, markup=False, highlight=False)
                        last = stream
                    text = new.decode("utf-8", errors="replace")
                    out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
                if not follow:
                    return
                await asyncio.sleep(FOLLOW_EVERY)
    except (StrataError, OSError) as error:
        raise CommandError(f"the blob store ({_where(settings)}): {error}") from None


async def _new_bytes(blobs: BlobStore, stream: LogStream, printed: dict[str, int]) -> bytes:
    """What ``stream`` holds beyond what was printed of it, and note it printed."""
    data = await blobs.get(stream.key)
    seen = printed.get(stream.key, 0)
    printed[stream.key] = max(seen, len(data))
    return data[seen:]


def _where(settings: BlobSettings) -> str:
    if settings.backend == "s3":
        return f"s3://{settings.bucket} at {settings.endpoint_url}"
    return str(settings.root)
