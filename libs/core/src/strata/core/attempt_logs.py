"""Where an attempt's output is kept in the blob store: one layout for writer and readers.

``logs/<run id>/<task id>/<attempt>/stdout`` and ``.../stderr``: one prefix per
run, so ``strata workflow logs RUN_ID`` lists a run's output with one call, and
per task and attempt below it, so a retry never overwrites the output of the
attempt before it. The agent writes under :func:`log_key`; the SDK lists
:func:`prefix` and reads each key back with :func:`parse`.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class StreamKey:
    """One stream of one attempt, as its key names it."""

    task_id: str
    attempt: int
    stream: str


def log_key(run_id: str, task_id: str, attempt: int, stream: str) -> str:
    """The blob key of one stream of one attempt."""
    if stream not in STREAMS:
        raise ValueError(f"stream {stream!r} is not one of {STREAMS}")
    return f"logs/{run_id}/{task_id}/{attempt}/{stream}"


def prefix(run_id: str, task_id: str | None = None) -> str:
    """The blob key prefix of a run's output, or of one of its tasks'."""
    return f"logs/{run_id}/{task_id}/" if task_id else f"logs/{run_id}/"


def parse(key: str, run_id: str) -> StreamKey | None:
    """The stream ``key`` names in run ``run_id``; None for a key of any other shape."""
    parts = key.split("/")
    if len(parts) != 5 or parts[:2] != ["logs", run_id] or parts[4] not in STREAMS:
        return None
    if not parts[3].isdigit():
        return None
    return StreamKey(parts[2], int(parts[3]), parts[4])
