"""The peer's side, run by Prefect's own interpreter (its virtualenv), never the project's.

``python prefect_flows.py`` reads one command a line on stdin (``chain 50``,
``fanout 200``) and answers each with one JSON line: the seconds the flow call took
and, per task, the ``time.time_ns()`` its no-op recorded. The flows run against the
Prefect server that ``PREFECT_API_URL`` names; tasks go to the flow's default task
runner (``ThreadPoolTaskRunner``), as a user's ``.submit()`` does. Kept running
between commands, so imports and the API client are warm, as Strata's services are.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from prefect import flow, task  # type: ignore[import-not-found, unused-ignore]
from prefect.futures import wait  # type: ignore[import-not-found, unused-ignore]


@task  # type: ignore[untyped-decorator]  # prefect is not in this environment
def noop(upstream: int | None = None) -> int:
    """The no-op: the moment its code ran, as Strata's no-op records it."""
    return time.time_ns()


@flow  # type: ignore[untyped-decorator]
def chain(length: int) -> list[int]:
    """``length`` no-ops, each waiting for the one before (its future is the argument)."""
    futures: list[Any] = []
    upstream = None
    for _ in range(length):
        upstream = noop.submit(upstream)
        futures.append(upstream)
    return [f.result() for f in futures]


@flow  # type: ignore[untyped-decorator]
def fanout(width: int) -> list[int]:
    """``width`` independent no-ops submitted at once, then awaited."""
    futures = [noop.submit() for _ in range(width)]
    wait(futures)
    return [f.result() for f in futures]


FLOWS = {"chain": chain, "fanout": fanout}


def main() -> None:
    for line in sys.stdin:
        name, size = line.split()
        started = time.perf_counter()
        ran = FLOWS[name](int(size))
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "ran_ns": ran}), flush=True)


if __name__ == "__main__":
    main()
