"""The peer: MLServer with its scikit-learn runtime, in a virtualenv of its own.

The benchmark installs MLServer from PyPI with pip into a virtualenv under the
user's cache folder (``~/.cache/strata/bench/mlserver-<version>``), never into the
project's; a later run reuses it while the pinned requirements are the same. The
peer's scikit-learn is pinned to the project's, since a joblib file is only read
back by the scikit-learn that wrote it.

The model reaches MLServer the way its scikit-learn runtime takes models: a joblib
file in a model folder of a temporary directory. That pickle is the peer's format,
written here for the peer and read only by MLServer's process in its own
virtualenv; Strata serves the same model from ONNX and never unpickles anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]

from bench.serving.client import Target, until_ready

MLSERVER = "1.7.1"
MODEL = "gbr"
INPUT = "input-0"
REQUIREMENTS = (
    f"mlserver=={MLSERVER}",
    f"mlserver-sklearn=={MLSERVER}",
    f"scikit-learn=={version('scikit-learn')}",
    "uvloop==0.21.0",
)
"""MLServer 1.7.1's workers die at start with uvloop 0.22 and later ("There is no current
event loop", SeldonIO/MLServer#2286), so uvloop stays at the last release they run with."""
STOP_BOUND = 20.0
"""Seconds MLServer gets to stop after SIGTERM before its process group is killed."""


def cache_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "strata" / "bench" / f"mlserver-{MLSERVER}"


def install() -> Path:
    """The peer's virtualenv, made (or remade, when its requirements changed) with pip.

    Returns the ``mlserver`` executable. Blocking: a minute or two the first time.
    """
    folder = cache_folder()
    stamp = folder / "requirements.txt"
    executable = folder / "bin" / "mlserver"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if executable.exists() and stamp.exists() and stamp.read_text() == wanted:
        return executable
    print(f"installing {', '.join(REQUIREMENTS)} into {folder} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    subprocess.run(
        [
            str(folder / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *list(REQUIREMENTS),
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return executable


def model_folder(root: Path, model: Any, grpc_port: int, http_port: int, metrics_port: int) -> Path:
    """MLServer's settings and a model folder holding ``model`` as its runtime expects."""
    (root / MODEL).mkdir(parents=True)
    joblib.dump(model, root / MODEL / "model.joblib")
    settings = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "debug": False,
    }
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    (root / MODEL / "model-settings.json").write_text(json.dumps(model_settings))
    return root


@asynccontextmanager
async def mlserver(
    executable: Path, root: Path, target: Target, log: Path
) -> AsyncIterator[Target]:
    """``mlserver start root``, ready for the body; its process group stopped after."""
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(executable),
            "start",
            str(root),
            cwd=root,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        ready = asyncio.create_task(until_ready(target))
        exited = asyncio.create_task(process.wait())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            ready.cancel()
            raise RuntimeError(f"MLServer exited with {process.returncode}: see {log}")
        exited.cancel()
        ready.result()
        yield target
    finally:
        _signal_group(process.pid, signal.SIGTERM)
        with suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), STOP_BOUND)
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal MLServer and the workers it started (its own session, so its own group)."""
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


def peer_target(grpc_port: int, metadata: tuple[tuple[str, str], ...]) -> Target:
    """MLServer's model as the shared client addresses it."""
    return Target(
        label="MLServer",
        address=f"127.0.0.1:{grpc_port}",
        model=MODEL,
        input_name=INPUT,
        metadata=metadata,
    )
