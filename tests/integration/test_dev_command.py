"""``strata dev`` as a developer runs it: every service up, and nothing left after it.

Each test runs the real command in a process of its own, reads its output as a
terminal would show it, and checks the processes it named are gone afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conftest import STRATA
from service_processes import free_port

from strata.sdk.dev import SERVICES

BOUND = 240.0
"""Guard against a hang: a cold stack start plus six services on a loaded machine."""

SERVING = re.compile(r"^(\w+) serving on \S+ \(pid (\d+)\)$")


@dataclass
class Dev:
    """A running ``strata dev`` and what it said so far."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    async def until(self, text: str) -> None:
        """Read output until a line containing ``text``; fail with the output if it ends."""
        assert self.process.stdout is not None
        async with asyncio.timeout(BOUND):
            async for raw in self.process.stdout:
                line = raw.decode().rstrip()
                self.lines.append(line)
                if match := SERVING.match(line):
                    self.pids[match[1]] = int(match[2])
                if text in line:
                    return
        raise AssertionError(f"strata dev ended before {text!r}:\n" + "\n".join(self.lines))

    async def finish(self) -> int:
        """The exit code, once the rest of the output is read."""
        assert self.process.stdout is not None
        async with asyncio.timeout(BOUND):
            rest = await self.process.stdout.read()
            self.lines.extend(rest.decode().splitlines())
            return await self.process.wait()


def _service_ports() -> dict[str, str]:
    """Free gRPC and metrics ports for the six services, so ``dev`` beside tests is safe."""
    ports = {}
    for name in SERVICES:
        ports[f"STRATA_SERVICE_{name.upper()}_PORT"] = str(free_port())
        ports[f"STRATA_SERVICE_{name.upper()}_METRICS_PORT"] = str(free_port())
    return ports


@asynccontextmanager
async def _dev(folder: Path, **env: str) -> AsyncIterator[Dev]:
    process = await asyncio.create_subprocess_exec(
        STRATA,
        "dev",
        cwd=folder,
        env={**os.environ, **_service_ports(), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield Dev(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stack_status(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRATA, "stack", "status"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


async def test_dev_starts_stack_and_services_and_ctrl_c_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """On a machine with nothing running: the stack comes up, then the six services;
    Ctrl-C stops the services and the servers ``dev`` started."""
    stack = {
        "STRATA_STACK_HOME": str(tmp_path / "stack"),
        "STRATA_KAFKA_PORT": str(free_port()),
        "STRATA_KAFKA_CONTROLLER_PORT": str(free_port()),
        "STRATA_POSTGRES_PORT": str(free_port()),
        "STRATA_REDIS_PORT": str(free_port()),
        "STRATA_BLOB_S3_PORT": str(free_port()),
    }
    try:
        async with _dev(tmp_path, **stack) as dev:
            await dev.until("Strata is up")
            assert sorted(dev.pids) == sorted(SERVICES)
            assert _stack_status(**stack).returncode == 0
            dev.process.send_signal(signal.SIGINT)
            assert await dev.finish() == 0, "\n".join(dev.lines)
        assert not [name for name, pid in dev.pids.items() if _alive(pid)]
        assert _stack_status(**stack).returncode != 0, "the stack dev started is still up"
    finally:
        _stack_down(tmp_path / "stack", **stack)


async def test_a_service_that_dies_ends_dev_naming_it_and_a_running_stack_stays(
    tmp_path: Path,
) -> None:
    async with _dev(tmp_path) as dev:
        await dev.until("Strata is up")
        os.kill(dev.pids["provisioner"], signal.SIGKILL)
        assert await dev.finish() == 1
    assert any("provisioner exited with code -9" in line for line in dev.lines), dev.lines
    assert not [name for name, pid in dev.pids.items() if _alive(pid)]
    assert _stack_status().returncode == 0, "dev stopped a stack it did not start"


def _stack_down(home: Path, **env: str) -> None:
    """Stop the stack (if the test failed midway) and remove its data.

    A stack in a private folder keeps Postgres's data elsewhere; a file says where.
    """
    subprocess.run([STRATA, "stack", "down"], env={**os.environ, **env}, check=False)
    cluster = home / "postgres" / "cluster"
    if cluster.exists():
        shutil.rmtree(cluster.read_text().strip(), ignore_errors=True)
