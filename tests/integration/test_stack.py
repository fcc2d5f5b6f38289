"""``strata stack`` as developers use it: idempotent ``up``, complete ``down``, clear refusals.

The tests' stack (the one every other integration test uses) is only asked to
come up again. Crashes, ``down`` and a port held by a stranger are tried on a
second, isolated stack: its own home folder and free ports, moved there with the
same ``STRATA_*`` variables a developer would set. That home is a private folder
(``mkdtemp`` makes it 0700, as root's home or a private checkout is), which the
stack must start from without opening it up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.core.settings import PostgresSettings, StackSettings, load
from strata.sdk.stack.postgres import Postgres

pytestmark = pytest.mark.integration

STRATA = Path(sys.executable).with_name("strata")
"""The ``strata`` CLI of the venv that runs the tests (``make`` runs the same script)."""
SERVERS = ("kafka", "postgres", "redis", "s3")
PORT_VARIABLES = (
    "STRATA_KAFKA_PORT",
    "STRATA_KAFKA_CONTROLLER_PORT",
    "STRATA_POSTGRES_PORT",
    "STRATA_REDIS_PORT",
    "STRATA_BLOB_S3_PORT",
)
STRANGER = """
import socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
print("listening", flush=True)
time.sleep(600)
"""


@dataclass(frozen=True)
class IsolatedStack:
    home: Path
    env: dict[str, str]

    def port(self, variable: str) -> int:
        return int(self.env[variable])

    def postgres_cluster(self) -> Path:
        """Where Postgres keeps its data: in the home, or outside when its user cannot enter."""
        return Postgres(self.home, load(PostgresSettings)).cluster


def stack(command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``strata stack <command>`` the way ``make`` does; stdout and stderr together."""
    return subprocess.run(
        [STRATA, "stack", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


def pids(home: Path) -> dict[str, int]:
    return {name: int((home / name / f"{name}.pid").read_text()) for name in SERVERS}


def running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting to be reaped has stopped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes_of(*places: Path) -> list[str]:
    """Every running process that names one of ``places`` on its command line or works in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not running(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if any(str(place) in cmdline or cwd.is_relative_to(place) for place in places):
            found.append(f"{entry.name}: {cmdline}")
    return found


def wait_until_stopped(pid: int) -> None:
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def isolated() -> Iterator[IsolatedStack]:
    """A second stack in a fresh private folder on free ports; stopped and removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="strata-stack-"))
    env = {
        **os.environ,
        "STRATA_STACK_HOME": str(home),
        "STRATA_KAFKA_HEAP": "256m",
        **{variable: str(free_port()) for variable in PORT_VARIABLES},
    }
    isolated = IsolatedStack(home, env)
    yield isolated
    stack("down", env)
    shutil.rmtree(isolated.postgres_cluster(), ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


def test_up_again_leaves_the_running_stack_alone() -> None:
    home = load(StackSettings).home
    before = pids(home)

    again = stack("up")

    assert again.returncode == 0, again.stdout
    assert pids(home) == before
    for name, pid in before.items():
        assert re.search(rf"^{name}\s+\S+\s+already running \(pid {pid}\)", again.stdout, re.M)
    assert "starting" not in again.stdout


def test_port_held_by_a_stranger_stops_up_and_the_stranger_lives(
    isolated: IsolatedStack,
) -> None:
    port = isolated.port("STRATA_REDIS_PORT")
    stranger = subprocess.Popen(
        [sys.executable, "-c", STRANGER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert stranger.stdout is not None
        assert stranger.stdout.readline().strip() == "listening"

        refused = stack("up", isolated.env)

        assert refused.returncode != 0
        assert f"redis: port {port}" in refused.stdout
        assert "STRATA_REDIS_PORT" in refused.stdout
        assert stranger.poll() is None, "up must not stop a process that is not its own"
        assert processes_of(isolated.home, isolated.postgres_cluster()) == [], (
            "nothing may start while a port is taken"
        )
    finally:
        stranger.kill()
        stranger.wait()


def test_up_from_a_private_folder_keeps_it_private(isolated: IsolatedStack) -> None:
    assert isolated.home.stat().st_mode & 0o777 == 0o700

    started = stack("up", isolated.env)

    assert started.returncode == 0, started.stdout
    assert isolated.home.stat().st_mode & 0o777 == 0o700
    assert re.search(r"^postgres\s+\S+\s+(ready in|already running)", started.stdout, re.M)
    status = stack("status", isolated.env)
    assert re.search(r"^postgres\s+\S+\s+up\s+pid \d+\s+answers yes", status.stdout, re.M)


def test_crashed_server_is_started_again_by_the_next_up(isolated: IsolatedStack) -> None:
    first = stack("up", isolated.env)
    assert first.returncode == 0, first.stdout
    before = pids(isolated.home)
    os.kill(before["redis"], signal.SIGKILL)
    wait_until_stopped(before["redis"])

    second = stack("up", isolated.env)

    assert second.returncode == 0, second.stdout
    after = pids(isolated.home)
    assert after["redis"] != before["redis"]
    assert running(after["redis"])
    assert {n: after[n] for n in SERVERS if n != "redis"} == {
        n: before[n] for n in SERVERS if n != "redis"
    }
    assert re.search(r"^redis\s+\S+\s+ready in", second.stdout, re.M)


def test_down_leaves_no_process_of_the_stack(isolated: IsolatedStack) -> None:
    started = stack("up", isolated.env)
    assert started.returncode == 0, started.stdout
    before = pids(isolated.home)

    stopped = stack("down", isolated.env)

    assert stopped.returncode == 0, stopped.stdout
    assert [name for name, pid in before.items() if running(pid)] == []
    assert processes_of(isolated.home, isolated.postgres_cluster()) == []
    status = stack("status", isolated.env)
    assert status.returncode != 0
    assert status.stdout.count(" down ") == len(SERVERS)
