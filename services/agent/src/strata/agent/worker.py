"""One attempt in a worker process of its own: import the entrypoint, call it, answer.

The worker is a fresh interpreter (``python -c``, the agent's end of a socket pair
handed down as its one inherited descriptor) that shares nothing with the agent
(no inherited event loop, sockets or threads), so a task that crashes, exits or
corrupts its interpreter takes down only its worker; the agent sees the pipe
close and reports the exit code. It is a :class:`subprocess.Popen`, not a
``multiprocessing`` process: multiprocessing reaps every child it knows of from
whichever thread starts the next process (the agent starts spares in threads),
and a reap racing the agent's own wait lost the exit code (reported as -1);
``Popen`` waits under a lock of its own and nothing else in the agent reaps it. A
worker whose agent dies exits too.

A worker leads a process group of its own, and whatever the attempt starts
(subprocesses, a multiprocessing pool) joins it: stopping an attempt (its memory
limit, its node's memory pressure, its timeout, a cancellation) signals the whole
group, and an attempt's processes never outlive it (those left once the worker has
answered are killed), as a container's end kills its processes. Killing the worker
alone would leave its children holding the memory the stop was meant to free.

Usage is measured inside the worker by ``getrusage`` just before it answers (peak
RSS, user + system CPU), wall time by the agent from handing it the attempt to its
end; while it runs, the agent samples it and its children with psutil
(:class:`Watch`) to enforce its limits and report its usage.

A worker is started ahead of its attempt (:func:`start_worker`, kept ready by
:mod:`strata.agent.spares`) without knowing which bundle it will run: it loads
this module and its imports, then waits on its pipe for one :class:`Job`, which
names the folder of the attempt's extracted bundle (:mod:`strata.agent.bundles`);
that folder goes first on ``sys.path`` before the entrypoint is imported, so the
bundle's modules win over anything of the same name. A job without a bundle
imports from the agent's own environment (installed packages, ``PYTHONPATH``).
It runs that one attempt and exits: a worker is never handed a second attempt,
so the isolation, output capture and usage of an attempt are those of a process
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import io
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from strata.agent.domain.entrypoint import Entrypoint, call_arguments
from strata.agent.domain.limits import Limits, breach
from strata.agent.domain.outcome import Failed, Finished, Outcome, Stopped, Usage
from strata.agent.domain.usage import HeldMemory, Sample
from strata.agent.stopping import Stop
from strata.core.task_context import TaskContext

WORKER_MAIN = "import sys; from strata.agent.worker import main; main(sys.argv[1])"
"""What a worker's interpreter runs: :func:`main` on the descriptor of its end of the pipe."""
ORPHAN_CHECK = 0.5
"""Seconds between a worker's looks at whether its agent is still there."""
EXIT_ORPHANED = 70
"""Exit code of a worker whose agent went away."""
READY = "ready"
"""What a worker sends once its imports are done, before it waits for its job."""
GROUP_POLL = 0.05
"""Seconds between looks at whether a stopped worker's children have exited."""
WATCH_INTERVAL = 0.1
"""Seconds between samples of a worker's memory: a task allocating fast can pass its
limit by what it allocates in that time before it is stopped."""


@dataclass(frozen=True)
class Job:
    """One attempt as its worker gets it; its stdout and stderr go to files in ``output``;
    ``bundle`` is the folder its code is imported from ("" for the agent's environment);
    ``environment`` is set before the entrypoint is imported: the attempt's context
    (:mod:`strata.core.task_context`)."""

    entrypoint: str
    args: dict[str, Any]
    upstream_outputs: dict[str, dict[str, Any]]
    output: str
    bundle: str
    environment: dict[str, str]


@dataclass(frozen=True)
class Worker:
    """A started worker process and the agent's end of its pipe (the job goes down, the
    answer comes up)."""

    process: subprocess.Popen[bytes]
    connection: Connection

    def hand(self, job: Job) -> bool:
        """Give the worker its one job; False if it is gone (died while waiting)."""
        if self.process.poll() is not None:
            return False
        try:
            self.connection.send(job)
        except OSError:
            return False
        return True

    def discard(self) -> None:
        """Kill the worker (unused, or gone already) and close its pipe."""
        _kill_group(self.process)
        self.process.wait()
        self.connection.close()


def start_worker() -> Worker:
    """Start a worker that waits for its job (blocks for the start: call it in a thread)."""
    agent_end, worker_end = multiprocessing.Pipe(duplex=True)
    descriptor = worker_end.fileno()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER_MAIN, str(descriptor)],
            stdin=subprocess.DEVNULL,
            pass_fds=(descriptor,),
            start_new_session=True,
        )
    except BaseException:
        agent_end.close()
        raise
    finally:
        worker_end.close()
    return Worker(process, agent_end)


def job(
    entrypoint: str,
    args: Mapping[str, Any],
    upstream_outputs: Mapping[str, Mapping[str, Any]],
    output: Path,
    bundle: Path | None,
    context: TaskContext,
) -> Job:
    """The job of one attempt, in plain containers the pipe can carry."""
    return Job(
        entrypoint,
        dict(args),
        {task: dict(outputs) for task, outputs in upstream_outputs.items()},
        str(output),
        str(bundle) if bundle is not None else "",
        context.environment(),
    )


async def run_in_worker(
    worker: Worker,
    stop: Stop,
    limits: Limits,
    sampled: Callable[[Sample], None],
) -> Outcome:
    """Wait for the outcome of the job just handed to ``worker``.

    While it runs, its memory and time are watched against ``limits``; going past
    one asks ``stop``. When ``stop`` is asked first, the worker gets SIGTERM,
    SIGKILL once the stop's grace has passed, and the outcome is :class:`Stopped`.
    Cancelling the waiting task (the agent is stopping) kills the worker at once.
    Each sample of its usage is handed to ``sampled``.
    """
    process, receiving = worker.process, worker.connection
    started = time.monotonic()
    answering = asyncio.ensure_future(asyncio.to_thread(_receive, receiving))
    stopping = asyncio.ensure_future(stop.wait())
    watch = Watch(process.pid, limits, stop, started, sampled)
    watching = asyncio.ensure_future(watch.run())
    try:
        await asyncio.wait({answering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not answering.done():
            await asyncio.to_thread(_terminate, process, stop.grace)
            await answering
            usage = Usage(
                watch.peak_rss_bytes, 0.0, time.monotonic() - started, watch.held.mean_bytes
            )
            return Stopped(stop.kind, stop.message, usage)
        answer = answering.result()
        code = await asyncio.to_thread(process.wait)
        _kill_group(process)
    except asyncio.CancelledError:
        _kill_group(process)
        await asyncio.shield(asyncio.to_thread(process.wait))
        await asyncio.shield(answering)
        raise
    finally:
        stopping.cancel()
        watching.cancel()
        receiving.close()
    wall = time.monotonic() - started
    if answer is None:
        return Failed(
            "WorkerDied",
            f"the worker process exited with code {code} before answering",
            "",
            Usage(0, 0.0, wall, watch.held.mean_bytes),
            exit_code=code,
        )
    return _outcome(answer, wall, watch.held.mean_bytes)


class Watch:
    """Samples a worker's memory (its resident set and its children's) every
    :data:`WATCH_INTERVAL`, keeps the peak and the time-weighted mean, and asks the stop
    once a limit is passed."""

    def __init__(
        self,
        pid: int | None,
        limits: Limits,
        stop: Stop,
        started: float,
        sampled: Callable[[Sample], None],
    ) -> None:
        self._pid = pid
        self._limits = limits
        self._stop = stop
        self._started = started
        self._sampled = sampled
        self.peak_rss_bytes = 0
        self.held = HeldMemory()

    async def run(self) -> None:
        """Until the worker is gone or stopped (or the task is cancelled)."""
        if self._pid is None:
            return
        try:
            worker = psutil.Process(self._pid)
            while not self._stop.asked:
                sample = _sample(worker)
                rss = sample.rss_bytes
                self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
                self.held = self.held.add(sample)
                self._sampled(sample)
                over = breach(self._limits, rss, sample.at - self._started)
                if over is not None:
                    self._stop.ask(over.kind, over.message, over.grace)
                    return
                await asyncio.sleep(WATCH_INTERVAL)
        except psutil.NoSuchProcess:
            return


def _sample(worker: psutil.Process) -> Sample:
    """Resident memory and CPU time of the worker and every process it started (those
    already gone count as nothing)."""
    at = time.monotonic()
    rss = worker.memory_info().rss
    cpu = worker.cpu_times()
    cpu_seconds = cpu.user + cpu.system + cpu.children_user + cpu.children_system
    for child in worker.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            rss += child.memory_info().rss
            times = child.cpu_times()
            cpu_seconds += times.user + times.system
    return Sample(at, int(rss), cpu_seconds)


def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the worker's process group, then SIGKILL to what is left of it once the
    worker and the processes it had started are gone or ``grace`` seconds have passed:
    its children get the same grace as the worker."""
    deadline = time.monotonic() + grace
    started = _descendants(process)
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    while time.monotonic() < deadline and any(_running(child) for child in started):
        time.sleep(GROUP_POLL)
    _kill_group(process)
    process.wait()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the worker and every process still in its group."""
    _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
    """Send ``signal_number`` to the worker's process group (nothing once it is empty).
    The worker leads the group, so its id is the worker's pid while any member lives."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal_number)


def _descendants(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The processes the worker started, and theirs, as they are now."""
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _running(child: psutil.Process) -> bool:
    """Whether ``child`` has not exited yet (one exited, waiting to be reaped, has)."""
    try:
        return child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _receive(connection: Connection) -> dict[str, Any] | None:
    """The worker's answer (past its :data:`READY`, if not taken yet); None if it died."""
    try:
        answer: dict[str, Any] | str = connection.recv()
        if answer == READY:
            answer = connection.recv()
    except (EOFError, OSError):
        return None
    assert isinstance(answer, dict), f"a worker answers with a dict, got {answer!r}"
    return answer


def booted(worker: Worker) -> bool:
    """Wait until ``worker`` says it is ready (blocks: call it in a thread); False if it died."""
    try:
        return bool(worker.connection.recv() == READY)
    except (EOFError, OSError):
        return False


def _outcome(answer: dict[str, Any], wall: float, mean_rss_bytes: int) -> Outcome:
    usage = Usage(answer["peak_rss_bytes"], answer["cpu_seconds"], wall, mean_rss_bytes)
    if answer["ok"]:
        return Finished(answer["outputs"], usage)
    return Failed(answer["error_type"], answer["message"], answer["traceback"], usage)


def main(descriptor: str) -> None:
    """A worker's interpreter: serve one attempt on the pipe end it inherited as ``descriptor``."""
    serve_attempt(Connection(int(descriptor)))


def serve_attempt(connection: Connection) -> None:
    """The worker's body: wait for the job, run it, answer once, exit. A pipe closed
    before any job (the agent stopped) ends it quietly."""
    _exit_with_the_agent()
    try:
        connection.send(READY)
        given: Job = connection.recv()
    except EOFError:
        return
    if given.bundle:
        sys.path.insert(0, given.bundle)
    os.environ.update(given.environment)
    _capture(Path(given.output))
    try:
        outputs = _call(Entrypoint.parse(given.entrypoint), given.args, given.upstream_outputs)
        answer: dict[str, Any] = {"ok": True, "outputs": outputs}
    except BaseException as exc:  # every failure of user code is reported, exits too
        answer = {
            "ok": False,
            "error_type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
        sys.stderr.write(answer["traceback"])
    used = resource.getrusage(resource.RUSAGE_SELF)
    answer["peak_rss_bytes"] = used.ru_maxrss * 1024
    answer["cpu_seconds"] = used.ru_utime + used.ru_stime
    connection.send(answer)
    connection.close()


def _exit_with_the_agent() -> None:
    """Exit once the agent is gone (killed, crashed), killing what the attempt started
    first: the provisioner declares its attempts lost and places them again, so a worker
    or a child of it left running would race the replacement and hold room on the node
    that nobody accounts for. (The worker leads a process group of its own, so a signal
    to the agent's group does not reach it.)"""
    agent = os.getppid()

    def watch() -> None:
        while os.getppid() == agent:
            time.sleep(ORPHAN_CHECK)
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="strata-agent-watch", daemon=True).start()


def _capture(folder: Path) -> None:
    """Send this process's stdout and stderr (the descriptors, so C code and child
    processes are captured too) to files in ``folder``, a line at a time."""
    for descriptor, stream in ((1, "stdout"), (2, "stderr")):
        file = os.open(folder / stream, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(file, descriptor)
        os.close(file)
    for text in (sys.stdout, sys.stderr):
        if isinstance(text, io.TextIOWrapper):
            text.reconfigure(line_buffering=True)


def _call(
    entrypoint: Entrypoint, args: dict[str, Any], upstream_outputs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    module = _module(entrypoint)
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


def _module(entrypoint: Entrypoint) -> ModuleType:
    """The entrypoint's module; a LookupError naming the entrypoint when no such module
    exists (an import failing inside the module is the module's own error, kept as it is)."""
    try:
        return importlib.import_module(entrypoint.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != entrypoint.module and not entrypoint.module.startswith(f"{missing}."):
            raise
        raise LookupError(
            f"entrypoint {entrypoint} not found: there is no module {missing!r}"
        ) from None


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
