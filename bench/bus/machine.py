"""Facts about the machine and the servers a run measured, written beside its numbers."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import asyncpg

from strata.core.settings import REPO_ROOT

KAFKA_LIBS = REPO_ROOT / "deploy" / "local" / "kafka" / "target" / "libs"
"""Where ``make setup`` puts the jars the local stack's broker runs."""
LIBRARIES = ("aiokafka", "asyncpg", "opentelemetry-sdk", "protobuf")


async def facts(pool: asyncpg.Pool) -> dict[str, str]:
    """Cores, CPU, memory, OS, Python, server and library versions, and the checkout."""
    return {
        "cores": str(os.cpu_count()),
        "cpu": _cpuinfo("model name"),
        "memory": _memory(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "kafka": _kafka_version(),
        "postgres": str(await pool.fetchval("SHOW server_version")),
        **{name: version(name) for name in LIBRARIES},
        "commit": _commit(),
        "load at start": load_average(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work shares these cores and the servers."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _cpuinfo(field: str) -> str:
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return "unknown"


def _memory() -> str:
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    return "unknown"


def _kafka_version() -> str:
    jars = sorted(KAFKA_LIBS.glob("kafka_2.13-*.jar"))
    return jars[-1].stem.removeprefix("kafka_2.13-") if jars else "unknown"


def _commit() -> str:
    """The checkout's commit, marked when files differ from it (numbers then belong to both)."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes" if dirty else head


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
