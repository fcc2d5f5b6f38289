"""Why an event handler failed: the event itself, a bug, or a dependency that is down.

The three call for different treatment, because the dead-letter topic is for
events that fail on their own content:

- :attr:`Failure.REJECTED`: the event can never be processed
  (:class:`~strata.core.errors.PermanentError`, a malformed envelope). It goes to
  the dead-letter topic at once.
- :attr:`Failure.OUTAGE`: a dependency did not answer (Postgres failing over, a
  broker restarting, Redis gone). Any event would fail the same way now, so
  dead-lettering it would turn an outage into lost events and break the order of
  its key. The partition pauses instead and the event is tried again, with
  backoff, until the dependency is back.
- :attr:`Failure.ERROR`: anything else (a bug, a ``ValueError``). It is retried a
  few times, then dead-lettered with the last error.

An exception counts as an outage when it, or an exception it was raised ``from``,
is one of :data:`OUTAGE_ERRORS`, a retriable ``KafkaError``, or
:class:`~strata.core.errors.UnavailableError` (which includes the
:class:`~strata.core.errors.DependencyUnavailableError` a handler raises to say so).
"""

from __future__ import annotations

import enum
import socket

import asyncpg.exceptions
import redis.exceptions
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from strata.core.envelope import MalformedEventError
from strata.core.errors import PermanentError, UnavailableError, UnreachableError

OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,  # includes asyncio's
    socket.gaierror,  # a name that does not resolve while a server moves
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,  # the client's connection is closed or broken
    asyncpg.exceptions.CannotConnectNowError,  # the server is starting or in recovery
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KafkaConnectionError,
    KafkaTimeoutError,
    UnreachableError,
    UnavailableError,
)


class Failure(enum.Enum):
    """How to treat a handler's failure; see the module docstring."""

    REJECTED = "rejected"
    OUTAGE = "outage"
    ERROR = "error"


class Outage(Exception):  # noqa: N818 - it is the outage, not an error of the bus
    """A handler found a dependency down: the partition must pause at ``offset``.

    Raised by :meth:`~strata.core.bus.consumer.Consumer.process` after settling
    every record before ``offset``; nothing at or after it was settled.
    """

    def __init__(self, offset: int, error: BaseException) -> None:
        super().__init__(f"dependency unavailable at offset {offset}: {describe(error)}")
        self.offset = offset
        self.error = error


def classify(error: BaseException) -> Failure:
    """The :class:`Failure` that ``error`` stands for."""
    if isinstance(error, PermanentError | MalformedEventError):
        return Failure.REJECTED
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:  # a cycle of causes must not hang the consumer
        if _is_outage(cause):
            return Failure.OUTAGE
        cause, seen = cause.__cause__, seen + 1
    return Failure.ERROR


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, OUTAGE_ERRORS):
        return True
    return isinstance(error, KafkaError) and bool(error.retriable)


def describe(error: BaseException | None) -> str:
    """``Type: message`` of ``error``, as logs and dead letters give it."""
    if error is None:
        return "unknown error"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
