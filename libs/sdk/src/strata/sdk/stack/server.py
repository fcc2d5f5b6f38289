"""What every server of the stack shares: its folder, launch, pid file, and the waits.

A server subclass says only what differs (its command, config files, how to ping
and provision it); starting it detached, recognising its processes and waiting
until it answers are the same for all four and live here once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, ClassVar, NamedTuple

from strata.core.errors import UnreachableError
from strata.sdk.stack.processes import all_pids, port_is_free, proc_alive, proc_argv, proc_cwd

LOG_TAIL_LINES = 30
POLL_INTERVAL = 0.25
PING_TIMEOUT = 2.0


class StartError(Exception):
    """A server did not start or did not answer; the message says why in one line."""


class Listener(NamedTuple):
    """A port a server listens on, and the ``STRATA_*`` variable that moves it."""

    host: str
    port: int
    variable: str


class Server:
    """One server of the stack: how to prepare, launch, check, provision and spot it."""

    name: ClassVar[str]
    programs: ClassVar[tuple[str, ...]]
    """How the first word of each of this server's processes starts (its title may change)."""
    main_argument: ClassVar[str | None] = None
    """A word each of its processes has on its command line, for interpreters (java, python)."""
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, home: Path) -> None:
        self.dir = home / self.name
        self.log = self.dir / f"{self.name}.log"
        self.pid_file = self.dir / f"{self.name}.pid"
        self.process: subprocess.Popen[bytes] | None = None

    # What each server defines.
    @property
    def address(self) -> str:
        raise NotImplementedError

    def listeners(self) -> list[Listener]:
        """Each port it listens on, checked before ``up`` starts anything."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Write config files and initialise data on first start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    async def ping(self, seconds: float) -> None:
        """Raise UnreachableError unless the server answers as the services will use it."""
        raise NotImplementedError

    async def ping_bootstrap(self, seconds: float) -> None:
        """Like ping, but passes before provisioning (no role or bucket needed yet)."""
        await self.ping(seconds)

    async def provision(self) -> None:
        """Create what services expect to find (topics, role, bucket); idempotent."""

    async def settle(self, deadline: float) -> None:
        """Wait until the server answers, provision it (also when it already ran), recheck."""
        await answer_within(self, self.ping_bootstrap, deadline)
        await provision_within(self, deadline)
        await answer_within(self, self.ping, deadline)

    def run_as(self) -> str | None:
        """The user the server runs as, when not the caller."""
        return None

    def places(self) -> list[Path]:
        """The folders its processes run in or name on their command line."""
        return [self.dir]

    # Shared behaviour.
    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is a process of this server (matched by command line and folders)."""
        argv = proc_argv(pid)
        if not argv or not Path(argv[0]).name.startswith(self.programs):
            return False  # e.g. `tail -f .stack/kafka/kafka.log` is not the broker
        if self.main_argument and self.main_argument not in argv:
            return False
        cwd = proc_cwd(pid)
        command_line = " ".join(argv)
        return any(
            str(place) in command_line or (cwd is not None and cwd.is_relative_to(place))
            for place in self.places()
        )

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process runs and is ours; else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if proc_alive(pid) and self.owns(pid) else None

    def leftovers(self) -> list[int]:
        """Every running process of this server, with or without a pid file."""
        me = os.getpid()
        return [pid for pid in all_pids() if pid != me and proc_alive(pid) and self.owns(pid)]

    def port_conflicts(self) -> list[str]:
        """One line per port of ours that another process holds, naming what moves it."""
        return [
            f"{self.name}: port {port} on {host} is already in use by a process that is not "
            f"part of this stack; stop it or move {self.name} with {variable}=<port>"
            for host, port, variable in self.listeners()
            if not port_is_free(host, port)
        ]

    def open_log(self) -> IO[bytes]:
        """The server's log for appending, after a line that marks where this start begins."""
        log = self.log.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n==== strata stack starting {self.name} at {stamp} ====\n".encode())
        log.flush()
        return log

    def launch(self) -> int:
        """Start the server detached (own session, output to its log); write its pid file."""
        user = self.run_as()
        with self.open_log() as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        self.pid_file.write_text(f"{self.process.pid}\n")
        return self.process.pid

    def exited(self) -> int | None:
        """The exit status if the process this run launched has ended."""
        return self.process.poll() if self.process else None

    def log_tail(self) -> str:
        """The last lines of the log: why a server failed to start is nearly always there."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            return "(no log)"
        return "\n".join(lines)


async def answer_within(
    server: Server, check: Callable[[float], Awaitable[None]], deadline: float
) -> None:
    """Retry ``check`` until it passes; fail when the process dies or time runs out."""
    while True:
        try:
            await check(PING_TIMEOUT)
            return
        except UnreachableError as unreachable:
            last = unreachable.reason
        status = server.exited()
        if status is not None:
            raise StartError(f"exited with status {status} while starting")
        if time.monotonic() > deadline:
            raise StartError(f"no answer on {server.address} in time (last: {last})")
        await asyncio.sleep(POLL_INTERVAL)


async def provision_within(server: Server, deadline: float) -> None:
    """Provision, retrying while the server settles (a new broker elects itself first)."""
    while True:
        try:
            await server.provision()
            return
        except StartError:
            raise
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StartError(f"provisioning failed: {exc}") from None
        await asyncio.sleep(POLL_INTERVAL)
