"""``up``, ``down`` and ``status`` over the four servers, and the lock between them.

Each command acts on all servers at once (Kafka's JVM start dominates ``up``; the
other three are ready while it starts) and prints one line per server, so a failing
one is named with its address and the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from strata.core.errors import UnreachableError
from strata.core.settings import (
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    StackSettings,
    load,
)
from strata.sdk.stack.kafka import Kafka
from strata.sdk.stack.postgres import Postgres
from strata.sdk.stack.processes import proc_rss, terminate
from strata.sdk.stack.redis import Redis
from strata.sdk.stack.s3 import S3
from strata.sdk.stack.server import PING_TIMEOUT, Server, StartError

STOP_TIMEOUT = 30.0
"""Seconds a server gets to stop after its stop signal before it is killed."""

Command = Literal["up", "down", "status"]


def run(command: Command) -> int:
    """Run one command on the stack the settings name; 0 when every server did its part.

    Raises ConfigError (naming the variable) when a ``STRATA_*`` setting is invalid.
    """
    # aiokafka logs every refused connection while the broker starts; the waits here
    # report failures themselves, in one line each.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    home = stack_home()
    if command == "status":
        return asyncio.run(status())
    with exclusive(home):
        return asyncio.run(up() if command == "up" else down())


def servers() -> list[Server]:
    """The four servers of the stack, placed and configured by the settings."""
    home = stack_home()
    return [
        Kafka(home, load(KafkaSettings)),
        Postgres(home, load(PostgresSettings)),
        Redis(home, load(RedisSettings)),
        S3(home, load(BlobSettings)),
    ]


def stack_home() -> Path:
    """The stack's home as an absolute, resolved path: processes are recognised by it."""
    return load(StackSettings).home.resolve()


def say(server: Server, message: str) -> None:
    """One progress line, in columns: server, address, what happened."""
    print(f"{server.name:<9} {server.address:<22} {message}", flush=True)


async def bring_up(server: Server, seconds: float) -> bool:
    """Start ``server`` unless it runs; return once it answers and is provisioned."""
    began = time.monotonic()
    deadline = began + seconds
    pid = server.running_pid()
    try:
        if pid:
            await server.settle(deadline)
            say(server, f"already running (pid {pid}), answers")
            return True
        say(server, "starting…")
        server.dir.mkdir(parents=True, exist_ok=True)
        await server.prepare()
        pid = server.launch()
        await server.settle(deadline)
    except StartError as failure:
        say(server, f"FAILED on {server.address}: {failure}")
        print(f"---- last lines of {server.log} ----\n{server.log_tail()}\n----", flush=True)
        return False
    say(server, f"ready in {time.monotonic() - began:.1f}s (pid {pid})")
    return True


async def up() -> int:
    """Start what is not running; refuse before starting anything if a port is taken."""
    stack = servers()
    idle = [server for server in stack if server.running_pid() is None]
    conflicts = [line for server in idle for line in server.port_conflicts()]
    if conflicts:
        print("\n".join(conflicts), file=sys.stderr)
        print("nothing was started", file=sys.stderr)
        return 1
    timeout = load(StackSettings).start_timeout
    results = await asyncio.gather(*(bring_up(server, timeout) for server in stack))
    return 0 if all(results) else 1


async def bring_down(server: Server) -> bool:
    """Stop the server gracefully, then any process of it that is left; True if none is."""
    began = time.monotonic()
    pid = server.running_pid()
    if pid:
        await terminate(pid, server.stop_signal, STOP_TIMEOUT)
    strays = server.leftovers()
    await asyncio.gather(*(terminate(stray, signal.SIGTERM, 5.0) for stray in strays))
    server.pid_file.unlink(missing_ok=True)
    remaining = server.leftovers()
    if remaining:
        say(server, f"FAILED to stop pids {remaining}")
        return False
    if pid or strays:
        killed = f", {len(strays)} stray process(es)" if strays else ""
        say(server, f"stopped (pid {pid}{killed}) in {time.monotonic() - began:.1f}s")
    else:
        say(server, "not running")
    return True


async def down() -> int:
    """Stop every server; 1 if a process of the stack is still left."""
    results = await asyncio.gather(*(bring_down(server) for server in servers()))
    return 0 if all(results) else 1


async def answers(server: Server) -> bool:
    """Whether ``server`` answers its ping now (no retry: status reports, it does not wait)."""
    try:
        await server.ping(PING_TIMEOUT)
    except UnreachableError:
        return False
    return True


async def status() -> int:
    """One line per server (up, pid, answers, memory) and the total; 0 only if all are up."""
    stack = servers()
    answered = await asyncio.gather(*(answers(server) for server in stack))
    healthy, total_rss = True, 0
    for server, answer in zip(stack, answered, strict=True):
        pid = server.running_pid()
        rss = sum(proc_rss(process) for process in server.leftovers())
        total_rss += rss
        state = "up" if pid else "down"
        yes_no = "yes" if answer else "no"
        say(server, f"{state:<5} pid {pid or '-':<8} answers {yes_no:<4} rss {rss >> 20} MiB")
        healthy &= bool(pid) and answer
    print(f"{'total':<9} {'':<22} resident memory of every stack process: {total_rss >> 20} MiB")
    return 0 if healthy else 1


@contextlib.contextmanager
def exclusive(home: Path) -> Iterator[None]:
    """Let one ``up`` or ``down`` act on a stack at a time (two test sessions may race)."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another `strata stack` working on {home}…", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
