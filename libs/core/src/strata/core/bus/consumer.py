"""Consume events: open each envelope, run the handler of its type, settle every record.

What happens to the records of one partition, in offset order:

1. A record whose ``event-type`` header names a type no handler here takes is
   skipped without decoding it: a topic carries several event types and a group
   handles the ones it cares about. A record without the header is opened first
   and skipped likewise when its type (known to this process or not) has no
   handler here.
2. The envelope is opened. Bytes that are not an envelope, miss a required field
   or carry a payload that does not decode go to the dead-letter topic at once:
   reading them again cannot help.
3. An event whose type has a handler (:meth:`Consumer.on`) runs it in the
   producer's trace (record headers first, the envelope's trace context second),
   inside a CONSUMER span when spans are recorded (:mod:`strata.core.bus.spans`).
4. Consecutive events whose types have the same batch handler
   (:meth:`Consumer.on_batch`) go to it together; see *Batches* below.
5. A handler's failure is treated by its kind (:mod:`strata.core.bus.failures`):
   a :class:`~strata.core.errors.PermanentError` is dead-lettered at once; a
   dependency that is down (an *outage*) raises :class:`Outage` out of
   :meth:`Consumer.process` with nothing from that record on settled, so the
   partition pauses and the record is tried again later, never dead-lettered;
   any other exception is retried with exponential backoff and dead-lettered
   with the last error once the attempts run out.

The Bus processes the partitions of a fetch side by side, so handlers of one
consumer may run concurrently for different partitions (as they would in several
replicas of a service); within a partition they run one at a time, in order.

A record is *settled* once it is handled, skipped or dead-lettered (the dead
letter acknowledged). :meth:`Consumer.process` reports each settled position; the
Bus commits no offset that is not settled (:mod:`strata.core.bus.offsets`). It
raises only on an outage or if a dead-letter write failed; the Bus then pauses
the partition and reads it again from the first record that is not settled, so
nothing is lost and the order of each key holds. Every outcome is counted in
:class:`~strata.core.metrics.Metrics` (``strata_events_total``).

Batches
-------
A batch handler gets ``[(payload, envelope), ...]``: consecutive events of the types
it is registered for (one handler may take several: a task's placed, started and
finished reports), from one partition, in offset order, at most
``BusSettings.max_batch`` of them.
Records of types nobody here handles ride along unseen; any other record (an
event for another handler, a malformed record) ends the batch, so events are
still handled in partition order. Write the handler as one transaction (claim
the event ids with :func:`strata.core.inbox.claim_many`, apply the state change),
so that a failed call leaves nothing behind.

- An outage pauses the partition at the batch's first event, as for one event.
- Any other error retries the whole batch, with the backoff of single events.
- A ``PermanentError``, or an error that outlasts the retries, says that
  something in the batch is wrong but not what. The handler is then called once
  per event, each call a batch of one under the rules of single events, so the
  poison event is dead-lettered alone and the others are handled. This stops
  before the next event once ``halted()`` says so (the partition is revoked or
  the consumer stops), and the rest is left unsettled, to be read again.
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
from strata.core.bus.dead_letters import Cause, Record, dead_letter
from strata.core.bus.failures import Failure, Outage, classify, describe
from strata.core.bus.publisher import HEADER_EVENT_TYPE
from strata.core.bus.spans import processing, processing_batch
from strata.core.envelope import Event, MalformedEventError, UnknownEventTypeError, open_envelope
from strata.core.metrics import Metrics
from strata.core.settings import BusSettings

P = TypeVar("P", bound=Message)

Handler = Callable[[P, Envelope], Awaitable[None]]
"""An event handler: the decoded payload and its envelope (event id, time, producer)."""

BatchHandler = Callable[[Sequence[tuple[P, Envelope]]], Awaitable[None]]
"""A batch handler: consecutive events of its types from one partition, in order."""

Settled = Callable[[Record], None]
"""Told the last record of a stretch whose fate, and every earlier one's, is settled."""

Halted = Callable[[], bool]
"""Asked before each record: True stops the pass (shutdown, partitions revoked)."""

DeadLetters = Callable[[DeadLetter], Awaitable[None]]
"""Writes a dead letter and returns once the broker acknowledged it."""

_log = structlog.get_logger("strata.core.bus")


class _Batch:
    """Events waiting for one batch handler, and the last record the batch covers
    (records of types nobody here handles ride along: they settle with the batch)."""

    def __init__(
        self, record: Record, event: Event, handler: BatchHandler[Message], limit: int
    ) -> None:
        self.handler = handler
        self.events = [(record, event)]
        self.last = record
        self.limit = limit

    def takes(self, handler: BatchHandler[Message] | None) -> bool:
        """Whether an event for ``handler`` (None: no batch handler) joins this batch."""
        return handler is self.handler and len(self.events) < self.limit

    def add(self, record: Record, event: Event) -> None:
        self.events.append((record, event))
        self.last = record


def _nothing(record: Record) -> None:
    """The default :data:`Settled`: nobody keeps offsets."""


def _never() -> bool:
    return False


class Consumer:
    """The handlers of one consumer group on one topic, and the fate of every record.

    ``dead_letters`` writes the records given up on; ``producer`` names this
    process in them.
    """

    def __init__(
        self,
        topic: str,
        group: str,
        *,
        dead_letters: DeadLetters,
        producer: str,
        settings: BusSettings,
        metrics: Metrics | None = None,
    ) -> None:
        if not topic:
            raise ValueError("topic must name a Kafka topic, got an empty string")
        if not group:
            raise ValueError("group must name the consumer group, got an empty string")
        _load_contracts()
        self.topic = topic
        self.group = group
        self.producer = producer
        self.metrics = metrics or Metrics()
        self._dead_letters = dead_letters
        self._settings = settings
        self._handlers: dict[str, Handler[Message]] = {}
        self._batch_handlers: dict[str, BatchHandler[Message]] = {}
        events = self.metrics.events
        self._handled = events.labels(topic, group, "handled")
        self._skipped = events.labels(topic, group, "skipped")
        self._dead_lettered = events.labels(topic, group, "dead_lettered")

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

    def handles(self, event_type: str) -> bool:
        """Whether some handler of this group takes events of ``event_type``."""
        return event_type in self._handlers or event_type in self._batch_handlers

    def _unclaimed(self, payload_type: type[Message]) -> str:
        name: str = payload_type.DESCRIPTOR.full_name
        if self.handles(name):
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
        ``halted()`` says so; raises :class:`Outage` when a dependency is down. See
        the module docstring.
        """
        batch: _Batch | None = None
        for record in records:
            if halted():
                return
            opened = self._read(record)
            if opened is None:
                self._skipped.inc()
                if batch is None:
                    settled(record)
                else:
                    batch.last = record
                continue
            handler = self._batch_handlers.get(opened.type) if isinstance(opened, Event) else None
            if batch is not None and isinstance(opened, Event) and batch.takes(handler):
                batch.add(record, opened)
                continue
            if batch is not None:
                if not await self._finish(batch, settled, halted):
                    return
                batch = None
            if isinstance(opened, Event) and handler is not None:
                batch = _Batch(record, opened, handler, self._settings.max_batch)
                continue
            await self._receive(record, opened)
            settled(record)
        if batch is not None:
            await self._finish(batch, settled, halted)

    def _read(self, record: Record) -> Event | MalformedEventError | None:
        """The record's event, why it cannot be read, or None when nobody here takes
        its type (told by the ``event-type`` header when there is one: no decoding)."""
        declared = _declared_type(record)
        if declared is not None and not self.handles(declared):
            return None
        try:
            event = open_envelope(record.value or b"")
        except UnknownEventTypeError:
            return None
        except MalformedEventError as exc:
            return exc
        return event if self.handles(event.type) else None

    async def _receive(self, record: Record, opened: Event | MalformedEventError) -> None:
        """One record on its own: handled or dead-lettered."""
        if isinstance(opened, MalformedEventError):
            with processing(record, None, self.group) as span:
                await self._dead_letter(record, DeadLetter.CAUSE_MALFORMED, opened.reason, 0, span)
            return
        handler = self._handlers[opened.type]
        with processing(record, opened, self.group) as span:
            await self._dispatch(record, opened, handler, span)

    async def _finish(self, batch: _Batch, settled: Settled, halted: Halted) -> bool:
        """Run a batch handler over ``batch`` and settle it up to its last record.

        False when halted during the one-by-one fallback: the rest is left unsettled.
        """
        handler = batch.handler
        events = batch.events
        try:
            with processing_batch(events, self.group):
                await self._attempts(
                    lambda: handler([(e.payload, e.envelope) for _, e in events]),
                    events[0][0],
                    len(events),
                )
        except Exception as exc:
            if classify(exc) is Failure.OUTAGE:
                raise Outage(events[0][0].offset, exc) from exc
            _log.warning(
                "batch handler failed, handling its events one by one",
                events=len(events),
                error=describe(exc),
                **_where(events[0][0]),
            )
            for record, event in events:
                if halted():
                    return False
                with processing(record, event, self.group) as span:
                    await self._dispatch(record, event, _one_by_one(handler), span)
                settled(record)
            if batch.last is events[-1][0]:
                return True
        else:
            self._handled.inc(len(events))
        settled(batch.last)
        return True

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
        except Exception as exc:
            failure = classify(exc)
            if failure is Failure.OUTAGE:
                raise Outage(record.offset, exc) from exc
            if failure is Failure.REJECTED:
                cause, reason = DeadLetter.CAUSE_REJECTED, describe(exc)
            else:
                cause = DeadLetter.CAUSE_RETRIES_EXHAUSTED
                reason = f"{describe(exc)} (still failing after {attempts} attempts)"
            await self._dead_letter(record, cause, reason, attempts, span)
        else:
            self._handled.inc()

    async def _attempts(
        self, call: Callable[[], Awaitable[None]], record: Record, events: int = 1
    ) -> None:
        """Run ``call``, the handler of ``record`` (and ``events - 1`` after it); if it
        fails with an error worth retrying here, retry it the way :meth:`_retrying`
        says. Rejections and outages are raised at once, for the caller to treat.

        The first attempt runs outside tenacity, which costs about 80 µs per call
        even when nothing fails: more than the rest of the Bus's work on an event.
        When it fails, tenacity takes over and replays that failure as its own
        attempt 1, so attempt counts, waits and retry logs are tenacity's, unchanged.
        """
        try:
            await call()
            return
        except Exception as exc:
            if not _retried_here(exc):
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
                error=describe(error),
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
            retry=retry_if_exception(_retried_here),
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
            consumer=self.producer,
        )
        await self._dead_letters(letter)
        self._dead_lettered.inc()
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


def _declared_type(record: Record) -> str | None:
    """The ``event-type`` header of ``record``, if it has one that reads as text."""
    for name, value in record.headers:
        if name == HEADER_EVENT_TYPE and value:
            try:
                return bytes(value).decode()
            except UnicodeDecodeError:
                return None
    return None


def _retried_here(error: BaseException) -> bool:
    """Worth another attempt in place: neither a rejection nor an outage (which pauses
    the partition instead). Cancellation (a BaseException) is never retried."""
    return isinstance(error, Exception) and classify(error) is Failure.ERROR


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
