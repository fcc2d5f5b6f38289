"""Consume events: open each envelope, run the handler of its type, settle every record.

What happens to the records of one partition, in offset order:

1. The envelope is opened. Bytes that are not an envelope, miss a required field,
   carry a type that is none of Strata's contracts or a payload that does not
   decode go to the dead-letter topic at once: reading them again cannot help.
2. An event whose type has a handler (:meth:`Consumer.on`) runs it in the
   producer's trace (record headers first, the envelope's trace context second),
   inside a CONSUMER span when spans are recorded (:mod:`strata.core.bus.spans`).
   A type with no handler in this group is skipped: a topic carries several event
   types and a group handles the ones it cares about.
3. Consecutive events whose type has a batch handler (:meth:`Consumer.on_batch`)
   go to it together; see *Batches* below.
4. A handler that raises :class:`~strata.core.errors.PermanentError` is
   dead-lettered; any other exception is retried with exponential backoff, and
   dead-lettered with the last error once the attempts run out.

The Bus processes the partitions of a fetch side by side, so handlers of one
consumer may run concurrently for different partitions (as they would in several
replicas of a service); within a partition they run one at a time, in order.

A record is *settled* once it is handled, skipped or dead-lettered (the dead
letter acknowledged). :meth:`Consumer.process` reports each settled position; the
Bus commits no offset that is not settled (:mod:`strata.core.bus.offsets`). It
raises only if a dead-letter write failed; the Bus then reads the partition again
from the first record that is not settled, so nothing is lost.

Batches
-------
A batch handler gets ``[(payload, envelope), ...]``: consecutive events of its type
from one partition, in offset order, at most ``BusSettings.max_batch`` of them.
Records of types nobody here handles ride along unseen; any other record (an
event for another handler, a malformed record) ends the batch, so events are
still handled in partition order. Write the handler as one transaction (claim
the event ids with :func:`strata.core.inbox.claim_many`, apply the state change),
so that a failed call leaves nothing behind.

- A transient error retries the whole batch, with the backoff of single events.
- A ``PermanentError``, or a transient error that outlasts the retries, says that
  something in the batch is wrong but not what. The handler is then called once
  per event, each call a batch of one under the rules of single events, so the
  poison event is dead-lettered alone and the others are handled.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, cast

import structlog
from google.protobuf.message import Message
from opentelemetry import trace
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

import strata.api
from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus.dead_letters import Cause, Record, cause_of, dead_letter
from strata.core.bus.publisher import Publisher
from strata.core.bus.spans import processing, processing_batch
from strata.core.envelope import Event, MalformedEventError, open_envelope
from strata.core.errors import PermanentError
from strata.core.settings import BusSettings

P = TypeVar("P", bound=Message)

Handler = Callable[[P, Envelope], Awaitable[None]]
"""An event handler: the decoded payload and its envelope (event id, time, producer)."""

BatchHandler = Callable[[Sequence[tuple[P, Envelope]]], Awaitable[None]]
"""A batch handler: consecutive events of one type from one partition, in order."""

Settled = Callable[[Record], None]
"""Told the last record of a stretch whose fate, and every earlier one's, is settled."""

Halted = Callable[[], bool]
"""Asked before each record: True stops the pass (shutdown, partitions revoked)."""

_log = structlog.get_logger("strata.core.bus")


class _Batch:
    """Events waiting for one batch handler, and the last record the batch covers
    (records of types nobody here handles ride along: they settle with the batch)."""

    def __init__(self, record: Record, event: Event, limit: int) -> None:
        self.type = event.type
        self.events = [(record, event)]
        self.last = record
        self.limit = limit

    @property
    def full(self) -> bool:
        return len(self.events) >= self.limit

    def add(self, record: Record, event: Event) -> None:
        """An event of the batch's type joins it; one of another type only rides along."""
        if event.type == self.type:
            self.events.append((record, event))
        self.last = record


def _nothing(record: Record) -> None:
    """The default :data:`Settled`: nobody keeps offsets."""


def _never() -> bool:
    return False


class Consumer:
    """The handlers of one consumer group on one topic, and the fate of every record."""

    def __init__(
        self, topic: str, group: str, *, publisher: Publisher, settings: BusSettings
    ) -> None:
        if not topic:
            raise ValueError("topic must name a Kafka topic, got an empty string")
        if not group:
            raise ValueError("group must name the consumer group, got an empty string")
        _load_contracts()
        self.topic = topic
        self.group = group
        self._publisher = publisher
        self._settings = settings
        self._handlers: dict[str, Handler[Message]] = {}
        self._batch_handlers: dict[str, BatchHandler[Message]] = {}

    def on(self, payload_type: type[P]) -> Callable[[Handler[P]], Handler[P]]:
        """Decorator form of :meth:`handle`."""

        def register(handler: Handler[P]) -> Handler[P]:
            self.handle(payload_type, handler)
            return handler

        return register

    def handle(self, payload_type: type[P], handler: Handler[P]) -> None:
        """Run ``handler`` for every event whose payload is a ``payload_type``."""
        self._handlers[self._unclaimed(payload_type)] = cast(Handler[Message], handler)

    def on_batch(self, payload_type: type[P]) -> Callable[[BatchHandler[P]], BatchHandler[P]]:
        """Decorator form of :meth:`handle_batch`."""

        def register(handler: BatchHandler[P]) -> BatchHandler[P]:
            self.handle_batch(payload_type, handler)
            return handler

        return register

    def handle_batch(self, payload_type: type[P], handler: BatchHandler[P]) -> None:
        """Run ``handler`` for runs of ``payload_type`` events; see *Batches* above."""
        name = self._unclaimed(payload_type)
        self._batch_handlers[name] = cast(BatchHandler[Message], handler)

    def _unclaimed(self, payload_type: type[Message]) -> str:
        name: str = payload_type.DESCRIPTOR.full_name
        if name in self._handlers or name in self._batch_handlers:
            raise ValueError(
                f"payload_type: {name} already has a handler in group {self.group!r} "
                f"on topic {self.topic!r}"
            )
        return name

    async def process(
        self, records: Sequence[Record], settled: Settled = _nothing, halted: Halted = _never
    ) -> None:
        """Handle, skip or dead-letter ``records`` of one partition, in offset order.

        Calls ``settled`` as records settle, and stops before the next record once
        ``halted()`` says so; see the module docstring.
        """
        batch: _Batch | None = None
        for record in records:
            if halted():
                return
            opened = _open(record)
            if batch is not None and isinstance(opened, Event) and self._joins(batch, opened):
                batch.add(record, opened)
                continue
            if batch is not None:
                await self._finish(batch, settled)
                batch = None
            if isinstance(opened, Event) and opened.type in self._batch_handlers:
                batch = _Batch(record, opened, self._settings.max_batch)
                continue
            await self._receive(record, opened)
            settled(record)
        if batch is not None:
            await self._finish(batch, settled)

    def _joins(self, batch: _Batch, event: Event) -> bool:
        """An event of the batch's type, or of a type nobody here handles, joins it
        until it is full."""
        return not batch.full and (
            event.type == batch.type
            or not (event.type in self._handlers or event.type in self._batch_handlers)
        )

    async def _receive(self, record: Record, opened: Event | MalformedEventError) -> None:
        """One record on its own: handled, skipped or dead-lettered."""
        if isinstance(opened, MalformedEventError):
            with processing(record, None, self.group) as span:
                await self._dead_letter(record, cause_of(opened), opened.reason, 0, span)
            return
        handler = self._handlers.get(opened.type)
        if handler is not None:
            with processing(record, opened, self.group) as span:
                await self._dispatch(record, opened, handler, span)

    async def _finish(self, batch: _Batch, settled: Settled) -> None:
        """Run a batch handler over ``batch``, then settle it up to its last record."""
        handler = self._batch_handlers[batch.type]
        events = batch.events
        try:
            with processing_batch(events, self.group):
                await self._attempts(
                    lambda: handler([(e.payload, e.envelope) for _, e in events]),
                    events[0][0],
                    len(events),
                )
        except Exception as exc:
            _log.warning(
                "batch handler failed, handling its events one by one",
                events=len(events),
                error=_describe(exc),
                **_where(events[0][0]),
            )
            for record, event in events:
                with processing(record, event, self.group) as span:
                    await self._dispatch(record, event, _one_by_one(handler), span)
        settled(batch.last)

    async def _dispatch(
        self, record: Record, event: Event, handler: Handler[Message], span: trace.Span
    ) -> None:
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            await handler(event.payload, event.envelope)

        try:
            await self._attempts(attempt, record)
        except (PermanentError, MalformedEventError) as exc:
            await self._dead_letter(
                record, DeadLetter.CAUSE_REJECTED, _describe(exc), attempts, span
            )
        except Exception as exc:
            reason = f"{_describe(exc)} (still failing after {attempts} attempts)"
            cause = DeadLetter.CAUSE_RETRIES_EXHAUSTED
            await self._dead_letter(record, cause, reason, attempts, span)

    async def _attempts(
        self, call: Callable[[], Awaitable[None]], record: Record, events: int = 1
    ) -> None:
        """Run ``call``, the handler of ``record`` (and ``events - 1`` after it); if it
        fails transiently, retry it the way :meth:`_retrying` says.

        The first attempt runs outside tenacity, which costs about 80 µs per call
        even when nothing fails: more than the rest of the Bus's work on an event.
        When it fails, tenacity takes over and replays that failure as its own
        attempt 1, so attempt counts, waits and retry logs are tenacity's, unchanged.
        """
        try:
            await call()
            return
        except Exception as exc:
            if not _is_transient(exc):
                raise
            first: Exception | None = exc

        async def again() -> None:
            nonlocal first
            if first is not None:
                failure, first = first, None
                raise failure
            await call()

        await self._retrying(record, events)(again)

    def _retrying(self, record: Record, events: int) -> AsyncRetrying:
        """How to retry the handler of ``record`` (and ``events - 1`` after it)."""
        settings = self._settings

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            _log.warning(
                "event handler failed, retrying",
                attempt=state.attempt_number,
                wait_s=round(wait, 3),
                error=_describe(error),
                events=events,
                **_where(record),
            )

        return AsyncRetrying(
            stop=stop_after_attempt(settings.retry_attempts),
            wait=wait_exponential_jitter(
                multiplier=settings.retry_backoff_initial,
                max=settings.retry_backoff_max,
                jitter=settings.retry_backoff_initial,
            ),
            retry=retry_if_exception(_is_transient),
            before_sleep=log_retry,
            reraise=True,
        )

    async def _dead_letter(
        self, record: Record, cause: Cause, reason: str, attempts: int, span: trace.Span
    ) -> None:
        letter = dead_letter(
            record,
            cause=cause,
            reason=reason,
            attempts=attempts,
            group=self.group,
            consumer=self._publisher.producer,
        )
        await self._publisher.publish_dead_letter(letter)
        span.set_status(trace.StatusCode.ERROR, reason)
        _log.warning(
            "event dead-lettered",
            cause=DeadLetter.Cause.Name(cause),
            reason=reason,
            attempts=attempts,
            **_where(record),
        )


def _one_by_one(handler: BatchHandler[Message]) -> Handler[Message]:
    """A batch handler called with one event, in the shape of a single-event handler."""

    async def one(payload: Message, envelope: Envelope) -> None:
        await handler([(payload, envelope)])

    return one


def _open(record: Record) -> Event | MalformedEventError:
    try:
        return open_envelope(record.value or b"")
    except MalformedEventError as exc:
        return exc


def _is_transient(error: BaseException) -> bool:
    """Worth another attempt: an ordinary exception that does not say it is permanent.

    Cancellation (a BaseException) is never retried, so shutdown is not delayed.
    """
    return isinstance(error, Exception) and not isinstance(
        error, PermanentError | MalformedEventError
    )


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _where(record: Record) -> dict[str, str | int]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


@functools.cache
def _load_contracts() -> None:
    """Import every generated ``_pb2`` module, so every Strata event type is known.

    Without this, whether an event counts as of an unknown type would depend on
    which modules this process happened to import.
    """
    for module in pkgutil.walk_packages(strata.api.__path__, "strata.api."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)
