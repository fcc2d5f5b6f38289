"""One attempt in a worker process of its own: import the entrypoint, call it, answer.

The worker is started with the ``spawn`` context: a fresh interpreter that shares
nothing with the agent (no inherited event loop, sockets or threads), so a task
that crashes, exits or corrupts its interpreter takes down only its worker; the
agent sees the pipe close and reports the exit code. Usage is measured inside
the worker by ``getrusage`` just before it answers (peak RSS, user + system CPU),
wall time by the agent around the whole process.

This increment imports code from the folders of ``STRATA_AGENT_CODE_PATH``;
fetching content-addressed bundles (sha256 checked) and warm workers come next.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import multiprocessing
import resource
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from strata.agent.domain.entrypoint import Entrypoint, call_arguments
from strata.agent.domain.outcome import Failed, Finished, Outcome, Usage

_SPAWN = multiprocessing.get_context("spawn")


async def run_in_worker(
    entrypoint: str,
    args: Mapping[str, Any],
    upstream_outputs: Mapping[str, Mapping[str, Any]],
    code_path: Sequence[str],
) -> Outcome:
    """Run ``entrypoint`` in a new worker process and wait for its outcome.

    Cancelling the waiting task kills the worker.
    """
    receiving, sending = _SPAWN.Pipe(duplex=False)
    process = _SPAWN.Process(
        target=serve_attempt,
        args=(sending, list(code_path), entrypoint, dict(args), dict(upstream_outputs)),
        name=f"strata-worker {entrypoint}",
    )
    started = time.monotonic()
    process.start()
    sending.close()
    try:
        answer = await asyncio.to_thread(_receive, receiving)
        await asyncio.to_thread(process.join)
    except asyncio.CancelledError:
        process.kill()
        await asyncio.shield(asyncio.to_thread(process.join))
        raise
    finally:
        receiving.close()
    wall = time.monotonic() - started
    if answer is None:
        code = process.exitcode if process.exitcode is not None else -1
        return Failed(
            "WorkerDied",
            f"the worker process exited with code {code} before answering",
            "",
            Usage(0, 0.0, wall),
            exit_code=code,
        )
    return _outcome(answer, wall)


def _receive(connection: Connection) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = connection.recv()
    except EOFError:
        return None
    return answer


def _outcome(answer: dict[str, Any], wall: float) -> Outcome:
    usage = Usage(answer["peak_rss_bytes"], answer["cpu_seconds"], wall)
    if answer["ok"]:
        return Finished(answer["outputs"], usage)
    return Failed(answer["error_type"], answer["message"], answer["traceback"], usage)


def serve_attempt(
    connection: Connection,
    code_path: list[str],
    entrypoint: str,
    args: dict[str, Any],
    upstream_outputs: dict[str, dict[str, Any]],
) -> None:
    """The worker's body (top level, so ``spawn`` can import it): run, answer once, exit."""
    sys.path[:0] = code_path
    try:
        outputs = _call(Entrypoint.parse(entrypoint), args, upstream_outputs)
        answer: dict[str, Any] = {"ok": True, "outputs": outputs}
    except BaseException as exc:  # every failure of user code is reported, exits too
        answer = {
            "ok": False,
            "error_type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
    used = resource.getrusage(resource.RUSAGE_SELF)
    answer["peak_rss_bytes"] = used.ru_maxrss * 1024
    answer["cpu_seconds"] = used.ru_utime + used.ru_stime
    connection.send(answer)
    connection.close()


def _call(
    entrypoint: Entrypoint, args: dict[str, Any], upstream_outputs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    module = importlib.import_module(entrypoint.module)
    function: Any = module
    for part in entrypoint.function.split("."):
        if not hasattr(function, part):
            raise LookupError(
                f"entrypoint {entrypoint} not found: {entrypoint.module} has no "
                f"{entrypoint.function!r}"
            )
        function = getattr(function, part)
    if not callable(function):
        raise TypeError(f"entrypoint {entrypoint} is not callable")
    result = function(**call_arguments(inspect.signature(function), args, upstream_outputs))
    return _json_object(entrypoint, {} if result is None else result)


def _json_object(entrypoint: Entrypoint, result: object) -> dict[str, Any]:
    """The outputs as a JSON object, or a TypeError naming the entrypoint and what it returned."""
    if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
        raise TypeError(
            f"entrypoint {entrypoint} returned {type(result).__name__}; "
            "expected a dict with str keys (its outputs) or None"
        )
    try:
        outputs: dict[str, Any] = json.loads(json.dumps(result))
    except (TypeError, ValueError) as exc:
        problem = f"entrypoint {entrypoint} returned outputs that are not JSON: {exc}"
        raise TypeError(problem) from exc
    return outputs
