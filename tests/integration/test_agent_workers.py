"""A worker's exit code reaches the agent whatever else the agent does with processes,
and an attempt's processes end with it.

The agent starts spare workers in threads while attempts run. A worker that dies
before answering is reported with its exit code (``os._exit(3)`` is code 3), which
only the one process that reaps it learns. What users rely on: that code is the
task's, never a -1 from a reaper elsewhere in the agent. The test holds the other
reaper at its worst moment, deterministically: a spare started in another thread
while the dead worker waits to be reaped (starting a process is where Python's
multiprocessing reaps the children it knows of) is paused right after any reap of
the worker it makes, before it could record the code, while the agent waits for the
worker's end.

An attempt may start processes of its own (a subprocess, a multiprocessing pool).
What users rely on: when the attempt is stopped (its memory limit, its node's
memory pressure, its timeout, a cancellation) those processes are stopped with it,
so the memory the stop was meant to free is freed; and none is left running once
the attempt has answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from strata.agent.domain.limits import Limits
from strata.agent.domain.outcome import Failed, Finished, StopKind, Stopped
from strata.agent.stopping import Stop
from strata.agent.worker import job, run_in_worker, start_worker
from strata.core.task_context import TaskContext

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""


async def test_a_worker_that_exits_is_reported_with_its_code_while_spares_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "crashing.py").write_text("import os\n\ndef crash():\n    os._exit(3)\n")
    (tmp_path / "output").mkdir()
    worker = start_worker()
    context = TaskContext("run", "flow", "crash", 1, "node")
    assert worker.hand(job("crashing:crash", {}, {}, tmp_path / "output", tmp_path, context))
    pid = worker.process.pid
    await _zombie(pid)

    reaped_elsewhere = threading.Event()
    release = threading.Event()
    spares: list[Any] = []
    spare_thread = threading.Thread(target=lambda: spares.append(start_worker()))
    monkeypatch.setattr(
        os, "waitpid", _held_after_reaping(pid, spare_thread, reaped_elsewhere, release)
    )
    spare_thread.start()
    try:
        await asyncio.to_thread(_started_or_reaped, spare_thread, reaped_elsewhere)
        async with asyncio.timeout(BOUND):
            outcome = await run_in_worker(worker, Stop(), Limits(), lambda _: None)
    finally:
        release.set()
        await asyncio.to_thread(spare_thread.join, BOUND)
        for spare in spares:
            await asyncio.to_thread(spare.discard)

    assert isinstance(outcome, Failed), outcome
    assert outcome.exit_code == 3
    assert outcome.message == "the worker process exited with code 3 before answering"


def _held_after_reaping(
    pid: int, held: threading.Thread, reaped: threading.Event, release: threading.Event
) -> Callable[[int, int], tuple[int, int]]:
    """``os.waitpid`` that, in thread ``held``, pauses after reaping ``pid`` until released."""
    real = os.waitpid

    def waitpid(waited: int, options: int) -> tuple[int, int]:
        result = real(waited, options)
        if threading.current_thread() is held and result[0] == pid:
            reaped.set()
            release.wait(BOUND)
        return result

    return waitpid


def _started_or_reaped(spare: threading.Thread, reaped: threading.Event) -> None:
    """Until the spare's start reaped the dead worker (and is held there) or is done."""
    while spare.is_alive() and not reaped.wait(0.05):
        pass


async def _zombie(pid: int) -> None:
    """Until ``pid`` has exited and waits to be reaped."""
    async with asyncio.timeout(BOUND):
        while True:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
            await asyncio.sleep(0.05)


SPAWNING = """
import pathlib
import subprocess
import sys
import time


def spawn(marks, then):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pathlib.Path(marks, "child").write_text(str(child.pid))
    if then == "wait":
        time.sleep(600)
    return {"child": child.pid}
"""


@pytest.mark.parametrize("then", ["wait", "answer"])
async def test_an_attempts_child_processes_end_with_it(tmp_path: Path, then: str) -> None:
    (tmp_path / "spawning.py").write_text(SPAWNING)
    (tmp_path / "output").mkdir()
    worker = start_worker()
    context = TaskContext("run", "flow", "spawn", 1, "node")
    args = {"marks": str(tmp_path), "then": then}
    assert worker.hand(job("spawning:spawn", args, {}, tmp_path / "output", tmp_path, context))
    stop = Stop()
    waiting = asyncio.ensure_future(run_in_worker(worker, stop, Limits(), lambda _: None))
    child = await _child_pid(tmp_path / "child")
    try:
        async with asyncio.timeout(BOUND):
            if then == "wait":
                stop.ask(StopKind.CANCELLED, "the run was cancelled", grace=5.0)
            outcome = await waiting
        assert isinstance(outcome, Stopped if then == "wait" else Finished), outcome
        await _gone(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


AGENT_THAT_DIES = """
import pathlib
import sys
import time

from strata.agent.worker import job, start_worker
from strata.core.task_context import TaskContext

folder = pathlib.Path(sys.argv[1])
worker = start_worker()
args = {"marks": str(folder), "then": "wait"}
context = TaskContext("run", "flow", "spawn", 1, "node")
assert worker.hand(job("spawning:spawn", args, {}, folder / "output", folder, context))
while not (folder / "child").exists():
    time.sleep(0.05)
(folder / "worker").write_text(str(worker.process.pid))
"""


async def test_a_worker_whose_agent_died_ends_with_the_processes_its_attempt_started(
    tmp_path: Path,
) -> None:
    (tmp_path / "spawning.py").write_text(SPAWNING)
    (tmp_path / "output").mkdir()
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_THAT_DIES, str(tmp_path)
    )
    async with asyncio.timeout(BOUND):
        assert await agent.wait() == 0
    worker, child = await _child_pid(tmp_path / "worker"), await _child_pid(tmp_path / "child")
    try:
        await _gone(worker)
        await _gone(child)
    finally:
        for pid in (worker, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _child_pid(path: Path) -> int:
    """The pid the task wrote to ``path``, once it did."""
    async with asyncio.timeout(BOUND):
        while True:
            text = await asyncio.to_thread(_read, path)
            if text:
                return int(text)
            await asyncio.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


async def _gone(pid: int) -> None:
    """Until ``pid`` has exited (a zombie waiting for its reaper counts)."""
    try:
        async with asyncio.timeout(BOUND):
            while True:
                try:
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        return
                except psutil.NoSuchProcess:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"process {pid} outlived the attempt") from None
