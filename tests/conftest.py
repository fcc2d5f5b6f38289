"""Settings for the whole test session, applied before any test module loads a setting.

The tests run on a stack of their own: their own home (``.stack-test``) and ports,
apart from the stack developers keep running for ``strata dev`` and the demo, so the
two never share state. Pytest imports this file first and services started by tests
inherit ``os.environ``, so everything the tests start talks to that stack.
``STRATA_TEST_<NAME>_PORT`` moves one of its ports (two checkouts side by side, CI
beside a running stack), e.g. ``STRATA_TEST_KAFKA_PORT=39092``; with
``STRATA_TEST_STACK_HOME`` as well, two test sessions of one checkout run side by
side on two stacks (each session empties the services' schemas when it starts).
"""

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.kube_cluster import kube_cluster
from tests.stack_session import local_stack

# The tests' stack and their Kubernetes control plane, one fixture each for the session.
__all__ = ["kube_cluster", "local_stack"]

TEST_STACK_HOME = Path(__file__).resolve().parent.parent / ".stack-test"
TEST_STACK_PORTS = {
    "STRATA_KAFKA_PORT": 29092,
    "STRATA_KAFKA_CONTROLLER_PORT": 29093,
    "STRATA_POSTGRES_PORT": 25432,
    "STRATA_REDIS_PORT": 26379,
    "STRATA_BLOB_S3_PORT": 29000,
}
"""The test stack's ports: the shared stack's (19092, 15432, …) moved by 10000."""


def override_of(variable: str) -> str:
    """The variable that moves ``variable`` for the tests: STRATA_X -> STRATA_TEST_X."""
    return variable.replace("STRATA_", "STRATA_TEST_", 1)


def port_from(environ: Mapping[str, str], variable: str, default: int) -> str:
    """The port for ``variable``: its ``STRATA_TEST_`` override when set, else ``default``."""
    override = override_of(variable)
    chosen = environ.get(override, str(default))
    if not chosen.isdigit() or not 0 < int(chosen) < 65536:
        raise pytest.UsageError(f"{override}={chosen!r}: expected a port number (1-65535)")
    return chosen


def stack_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables every test and every process it starts runs with."""
    ports = {name: port_from(environ, name, port) for name, port in TEST_STACK_PORTS.items()}
    return {
        "STRATA_STACK_HOME": environ.get(override_of("STRATA_STACK_HOME"), str(TEST_STACK_HOME)),
        **ports,
        # The public dev token and disabled auth are refused outside development mode.
        "STRATA_MODE": "development",
    }


os.environ.update(stack_environment(os.environ))
# A gateway started by a test serves REST on a free port, not on 8080, which the
# machine may use for something else; tests that call REST choose their own port.
os.environ.setdefault("STRATA_GATEWAY_HTTP_PORT", "0")
# gRPC's C core logs connection events (GOAWAY on server shutdown) at INFO to
# stderr, in between pytest's progress dots; errors are still shown.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
