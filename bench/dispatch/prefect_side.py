"""Prefect 3's side: a pinned Prefect in a virtualenv of its own, a local Prefect server
on a SQLite database in a temporary folder, and the same no-op flows.

The virtualenv is made with uv (the project's own tool) outside the checkout and
reused while its version matches; nothing of Prefect enters the project's
environment. The flows run in a client process started from that virtualenv
(:mod:`bench.dispatch.prefect_flows`), kept alive between rounds like Strata's services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

PREFECT = "prefect==3.9.1"
"""The peer, pinned: its figures belong to this version."""
VENV = Path(tempfile.gettempdir()) / "strata-bench-peers" / PREFECT.replace("==", "-")
FLOWS = Path(__file__).with_name("prefect_flows.py")
SERVER_BOUND = 180.0
"""Seconds the Prefect server may take to answer (it migrates its database first)."""
ROUND_BOUND = 300.0


@dataclass(frozen=True)
class PeerRun:
    """One flow call: its seconds, and when each task's code ran (ns, in task order)."""

    seconds: float
    ran_ns: list[int]


def install() -> Path:
    """The virtualenv's python with Prefect installed, installing it on first use."""
    python = VENV / "bin" / "python"
    if python.exists() and _installed(python):
        return python
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to install the peer: run `make setup` first")
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(VENV)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), PREFECT], check=True)
    return python


def _installed(python: Path) -> bool:
    done = subprocess.run(
        [str(python), "-c", "import prefect; print(prefect.__version__)"],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0 and done.stdout.strip() == PREFECT.split("==")[1]


def version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import prefect; print(prefect.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@contextlib.asynccontextmanager
async def server(python: Path, folder: Path) -> AsyncIterator[dict[str, str]]:
    """``prefect server start`` on a free port with its SQLite database in ``folder``;
    yields the environment a client needs (``PREFECT_API_URL`` and the rest)."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(folder),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    log = folder / "prefect-server.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(python.with_name("prefect")),
            *("server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"),
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        async with asyncio.timeout(SERVER_BOUND):
            while not await asyncio.to_thread(_healthy, api):
                if process.returncode is not None:
                    raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.5)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Flows:
    """The client process running the flows, one command at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    async def run(self, flow: str, size: int) -> PeerRun:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None, "the flows process has a stdin pipe"
        assert stdout is not None, "the flows process has a stdout pipe"
        stdin.write(f"{flow} {size}\n".encode())
        await stdin.drain()
        async with asyncio.timeout(ROUND_BOUND):
            line = await stdout.readline()
        if not line:
            raise RuntimeError(f"the Prefect flows process exited running {flow} {size}")
        answer = json.loads(line)
        return PeerRun(seconds=float(answer["seconds"]), ran_ns=[int(n) for n in answer["ran_ns"]])


@contextlib.asynccontextmanager
async def flows(python: Path, env: dict[str, str], folder: Path) -> AsyncIterator[Flows]:
    """The flows process against the server of ``env``; its log goes to ``folder``."""
    with (folder / "prefect-flows.log").open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(FLOWS),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        yield Flows(process)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
