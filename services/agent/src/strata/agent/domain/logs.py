"""Where an attempt's output is kept in the blob store.

``logs/<run id>/<task id>/<attempt>/stdout`` and ``.../stderr``: one prefix per
run, so ``strata workflow logs RUN_ID`` lists a run's output with one call, and
per task and attempt below it, so a retry never overwrites the output of the
attempt before it. ``strata.sdk.workflows.logs`` reads the same layout.
"""

from __future__ import annotations

STREAMS = ("stdout", "stderr")


def log_key(run_id: str, task_id: str, attempt: int, stream: str) -> str:
    """The blob key of one stream of one attempt."""
    if stream not in STREAMS:
        raise ValueError(f"stream {stream!r} is not one of {STREAMS}")
    return f"logs/{run_id}/{task_id}/{attempt}/{stream}"
