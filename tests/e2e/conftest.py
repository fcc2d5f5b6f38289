"""End-to-end stories: every service a story needs runs as a real process on the tests' stack.

The stack is :mod:`tests.stack_session`'s; the integration tests' helpers
(``service_processes.py``: start a service, wait until it serves) are shared, so
their folder is put on ``sys.path`` as the integration conftest does.

The workflow stories share a platform per module (:func:`cluster`: a provisioner
and one small agent, :mod:`tests.e2e.workflow_cluster`) and a scheduler per module;
a story that kills or reconfigures a service starts its own.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.stack_session import LocalStack

INTEGRATION = Path(__file__).resolve().parent.parent / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))

from service_processes import ServiceProcess, running  # noqa: E402  (on the path just above)

from tests.e2e.workflow_cluster import Platform, platform  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _stack_is_up(local_stack: LocalStack) -> LocalStack:
    return local_stack


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    """A provisioner and one small agent; the module's workflow files go in its project folder."""
    folder = tmp_path_factory.mktemp("platform")
    code = tmp_path_factory.mktemp("code")
    async with platform(folder, code) as started:
        yield started


@pytest.fixture(scope="module")
async def scheduler(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """The module's scheduler, on the real clock."""
    async with running("scheduler", tmp_path_factory.mktemp("scheduler")) as service:
        yield service
