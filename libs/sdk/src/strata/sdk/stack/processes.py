"""What the kernel says about a process, read from ``/proc``, and how one is stopped.

The stack recognises its servers by what they are (command line, working folder),
never by a name alone, so ``down`` can clean up after a crash without touching a
stranger's process; these are the facts that decision is made from.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path


def proc_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def proc_argv(pid: int) -> list[str]:
    """The command line of ``pid`` (empty once it is gone, or for a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0") if raw else []


def proc_cwd(pid: int) -> Path | None:
    """The working folder of ``pid``; None when it is gone or not ours to read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def proc_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def all_pids() -> list[int]:
    """Every pid on the machine: a server's leftovers may have lost their pid file."""
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_socket.bind((host, port))
        except OSError:
            return False
    return True


async def wait_for_exit(pid: int, seconds: float) -> bool:
    """Whether ``pid`` ended within ``seconds`` (polled: it need not be our child)."""
    deadline = time.monotonic() + seconds
    while proc_alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def terminate(pid: int, stop_signal: signal.Signals, grace: float) -> None:
    """Send ``stop_signal``; SIGKILL when ``pid`` still runs after ``grace`` seconds."""
    try:
        os.kill(pid, stop_signal)
    except ProcessLookupError:
        return
    if not await wait_for_exit(pid, grace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        await wait_for_exit(pid, 5.0)
