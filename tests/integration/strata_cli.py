"""The ``strata`` command line run as a person types it, from the integration tests.

A fresh interpreter per call (``python -m strata.sdk.cli``), so that what the tests
see is what a shell sees: the exit code, stdout and stderr, with the environment the
caller builds (service ports, token, blob store; ``COLUMNS`` wide enough that rich
does not wrap the lines a test reads).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping

BOUND = 120.0
"""Guard against a hang: a CLI call on a loaded two-core machine."""


async def run_strata(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run ``strata ARGS`` with ``env``; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strata.sdk.cli",
        *args,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
