"""Which handler failures are outages (pause and wait), rejections (dead-letter at
once) or errors (a few retries, then dead-letter)."""

from __future__ import annotations

import asyncpg.exceptions
import pytest
import redis.exceptions
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
)

from strata.core.bus import Failure, classify
from strata.core.envelope import MalformedEventError
from strata.core.errors import (
    DependencyUnavailableError,
    InvalidArgumentError,
    PermanentError,
    UnreachableError,
)

OUTAGES = [
    ConnectionRefusedError(111, "Connect call failed"),
    ConnectionResetError("reset by peer"),
    TimeoutError(),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    asyncpg.exceptions.InterfaceError("connection is closed"),
    asyncpg.exceptions.CannotConnectNowError("the database system is in recovery mode"),
    asyncpg.exceptions.AdminShutdownError("terminating connection"),
    redis.exceptions.ConnectionError("Error 111 connecting"),
    redis.exceptions.TimeoutError("Timeout reading from socket"),
    KafkaConnectionError("no broker"),
    KafkaTimeoutError(),
    NotLeaderForPartitionError(),
    UnreachableError("Postgres", "127.0.0.1:15432", "connection refused"),
    DependencyUnavailableError("model store is down"),
]

REJECTIONS = [
    PermanentError("never"),
    InvalidArgumentError("run_id", "must be a UUID"),
    MalformedEventError("missing field"),
]

ERRORS = [
    ValueError("bad value"),
    KeyError("k"),
    ZeroDivisionError(),
    asyncpg.exceptions.UniqueViolationError("duplicate key"),
    MessageSizeTooLargeError(),
    OSError(2, "No such file or directory"),
]


@pytest.mark.parametrize("error", OUTAGES, ids=repr)
def test_an_unavailable_dependency_is_an_outage(error: Exception) -> None:
    assert classify(error) is Failure.OUTAGE


@pytest.mark.parametrize("error", REJECTIONS, ids=repr)
def test_an_event_that_can_never_pass_is_rejected(error: Exception) -> None:
    assert classify(error) is Failure.REJECTED


@pytest.mark.parametrize("error", ERRORS, ids=repr)
def test_anything_else_is_an_error_worth_a_few_retries(error: Exception) -> None:
    assert classify(error) is Failure.ERROR


def test_an_error_raised_from_an_outage_is_an_outage() -> None:
    """A repository that wraps the driver's error still reports the outage."""
    wrapped = RuntimeError("could not load the run")
    wrapped.__cause__ = asyncpg.exceptions.CannotConnectNowError("starting up")
    assert classify(wrapped) is Failure.OUTAGE


def test_a_rejection_wins_over_its_cause() -> None:
    error = PermanentError("refused")
    error.__cause__ = ConnectionError("down")
    assert classify(error) is Failure.REJECTED


def test_a_cycle_of_causes_ends() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert classify(first) is Failure.ERROR
