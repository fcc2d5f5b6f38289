"""Feast, the peer: installed by the benchmark into a virtualenv of its own, from PyPI.

The virtualenv lives under the stack's home (``$STRATA_STACK_HOME/bench/feast-<version>``),
made once with ``uv venv`` (on the interpreter the benchmark runs on) and
``uv pip install feast[redis]==<version>``, and reused after; the project's own
environment never sees Feast. Its feature repository
(``feature_store.yaml``) uses the file offline store (Parquet, Feast's Dask engine)
and the Redis online store of the same local stack Strata uses.

Two processes run from that virtualenv: ``feast_worker.py`` (training sets and
materialization, one JSON command a line) and ``feast serve`` (Feast's own HTTP
feature server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp

from strata.core.settings import REPO_ROOT, RedisSettings, StackSettings, load

FEAST_VERSION = "0.67.0"
"""The Feast release measured; change it here to measure another."""
REQUIREMENT = f"feast[redis]=={FEAST_VERSION}"
WORKER = Path(__file__).with_name("feast_worker.py")
STARTUP = 120.0
"""Longest wait for ``feast serve`` to answer: a guard against hanging."""


class FeastError(RuntimeError):
    """Feast could not be installed or run; the message says where to look."""


def virtualenv() -> Path:
    """Feast's virtualenv, created and installed on first use; returns its folder."""
    folder = load(StackSettings).home / "bench" / f"feast-{FEAST_VERSION}"
    marker = folder / ".installed"
    if marker.exists():
        return folder
    uv = shutil.which("uv") or str(REPO_ROOT / ".tools" / "uv" / "bin" / "uv")
    print(f"installing {REQUIREMENT} into {folder} ...", file=sys.stderr, flush=True)
    for command in (
        [uv, "venv", "--quiet", "--allow-existing", "--python", sys.executable, str(folder)],
        [uv, "pip", "install", "--quiet", "--python", str(folder / "bin" / "python"), REQUIREMENT],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FeastError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    marker.write_text(REQUIREMENT + "\n")
    return folder


def write_repo(folder: Path, project: str) -> Path:
    """A Feast feature repository in ``folder``: file offline store, Redis online store."""
    redis = load(RedisSettings)
    connection = f"{redis.host}:{redis.port},db={redis.db}"
    if redis.password is not None:
        connection += f",password={redis.password.get_secret_value()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "feature_store.yaml").write_text(
        "\n".join(
            [
                f"project: {project}",
                f"registry: {folder / 'registry.db'}",
                "provider: local",
                "online_store:",
                "  type: redis",
                f'  connection_string: "{connection}"',
                "offline_store:",
                "  type: file",
                "entity_key_serialization_version: 3",
                "",
            ]
        )
    )
    return folder


class FeastWorker:
    """``feast_worker.py`` in Feast's virtualenv: send a command, get its JSON answer."""

    def __init__(self, venv: Path, repo: Path, log: Path) -> None:
        self._log = log
        self._sink: IO[bytes] = log.open("ab")
        self._process = subprocess.Popen(
            [str(venv / "bin" / "python"), str(WORKER), str(repo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._sink,
            text=True,
            cwd=repo,
        )

    def ask(self, op: str, **arguments: str) -> dict[str, Any]:
        """Run one command and return its answer; FeastError with the log's tail on failure."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            stdin.flush()
            line = stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise FeastError(f"the Feast worker stopped during {op!r}:\n{_tail(self._log)}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._sink.close()


@contextlib.asynccontextmanager
async def feature_server(venv: Path, repo: Path, port: int, log: Path) -> AsyncIterator[str]:
    """``feast serve`` on ``port`` (one worker, as by default), until the block ends.

    Gunicorn's worker recycling (``--max-requests``, 1,000 by default) is turned
    off so that no sample times a worker's restart.
    """
    command = [str(venv / "bin" / "feast"), "-c", str(repo), "serve"]
    command += ["-h", "127.0.0.1", "-p", str(port), "--no-access-log", "--max-requests", "0"]
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=sink, stderr=sink, start_new_session=True
        )
    try:
        async with asyncio.timeout(STARTUP), aiohttp.ClientSession() as session:
            while not await _healthy(session, url):
                if process.returncode is not None:
                    raise FeastError(f"feast serve exited:\n{_tail(log)}")
                await asyncio.sleep(0.3)
        yield url
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/health") as reply:
            return reply.status == 200
    except aiohttp.ClientError:
        return False


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return f"(no log at {log})"
