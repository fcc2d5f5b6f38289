"""End-to-end stories: every service a story needs runs as a real process on the tests' stack.

The stack is :mod:`tests.stack_session`'s; the integration tests' helpers
(``service_processes.py``: start a service, wait until it serves) are shared, so
their folder is put on ``sys.path`` as the integration conftest does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.stack_session import LocalStack

INTEGRATION = Path(__file__).resolve().parent.parent / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))


@pytest.fixture(scope="session", autouse=True)
def _stack_is_up(local_stack: LocalStack) -> LocalStack:
    return local_stack
