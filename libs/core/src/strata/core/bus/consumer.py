"""Consume events: open the envelope, run the handler of its type, then let it be committed.

What happens to one record, in order:

1. The envelope is opened. Bytes that are not an envelope, miss a required field
   or carry a type that is none of Strata's contracts go to the dead-letter topic
   at once: reading them again cannot help.
2. The handler registered for the payload's type runs inside a CONSUMER span that
   continues the producer's trace (record headers first, the envelope's trace
   context second). A type with no handler in this group is skipped: a topic
   carries several event types and a group handles the ones it cares about.
3. A handler that raises :class:`~strata.core.errors.PermanentError` is
   dead-lettered; any other exception is retried with exponential backoff, and
   dead-lettered with the last error once the attempts run out.

:meth:`Consumer.receive` returns once the record is handled or its dead letter is
acknowledged, which is when the offset may be committed. It raises only if the
dead-letter write failed; the record is then read again, so nothing is lost.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TypeVar, cast

import structlog
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.context import Context
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
from strata.core.envelope import Event, MalformedEventError, open_envelope
from strata.core.errors import PermanentError
from strata.core.settings import BusSettings
from strata.core.telemetry import context_from_carrier, extract_context, has_trace_context

P = TypeVar("P", bound=Message)

Handler = Callable[[P, Envelope], Awaitable[None]]
"""An event handler: the decoded payload and its envelope (event id, time, producer)."""

_tracer = trace.get_tracer("strata.core.bus")
_log = structlog.get_logger("strata.core.bus")


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

    def on(self, payload_type: type[P]) -> Callable[[Handler[P]], Handler[P]]:
        """Decorator form of :meth:`handle`."""

        def register(handler: Handler[P]) -> Handler[P]:
            self.handle(payload_type, handler)
            return handler

        return register

    def handle(self, payload_type: type[P], handler: Handler[P]) -> None:
        """Run ``handler`` for every event whose payload is a ``payload_type``."""
        name = payload_type.DESCRIPTOR.full_name
        if name in self._handlers:
            raise ValueError(
                f"payload_type: {name} already has a handler in group {self.group!r} "
                f"on topic {self.topic!r}"
            )
        self._handlers[name] = cast(Handler[Message], handler)

    async def receive(self, record: Record) -> None:
        """Handle ``record`` or dead-letter it; see the module docstring."""
        event: Event | None = None
        failure: MalformedEventError | None = None
        try:
            event = open_envelope(record.value or b"")
        except MalformedEventError as exc:
            failure = exc
        with self._process_span(record, event) as span:
            if event is not None:
                await self._dispatch(record, event, span)
            elif failure is not None:
                await self._dead_letter(record, cause_of(failure), failure.reason, 0, span)

    async def _dispatch(self, record: Record, event: Event, span: trace.Span) -> None:
        handler = self._handlers.get(event.type)
        if handler is None:
            _log.debug("no handler for event type", type=event.type, **_where(record))
            return
        attempts = 0
        try:
            async for attempt in self._retrying(record):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    await handler(event.payload, event.envelope)
        except (PermanentError, MalformedEventError) as exc:
            await self._dead_letter(
                record, DeadLetter.CAUSE_REJECTED, _describe(exc), attempts, span
            )
        except Exception as exc:
            reason = f"{_describe(exc)} (still failing after {attempts} attempts)"
            cause = DeadLetter.CAUSE_RETRIES_EXHAUSTED
            await self._dead_letter(record, cause, reason, attempts, span)

    def _retrying(self, record: Record) -> AsyncRetrying:
        settings = self._settings

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            _log.warning(
                "event handler failed, retrying",
                attempt=state.attempt_number,
                wait_s=round(wait, 3),
                error=_describe(error),
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

    def _process_span(
        self, record: Record, event: Event | None
    ) -> AbstractContextManager[trace.Span]:
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": self.group,
        }
        if event is not None:
            attributes["messaging.message.id"] = event.event_id
        return _tracer.start_as_current_span(
            f"process {record.topic}",
            context=_producer_context(record, event),
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        )


def _producer_context(record: Record, event: Event | None) -> Context:
    """The producer's trace: from the headers, else from the envelope, else a new one."""
    context = extract_context(record.headers)
    if not has_trace_context(context) and event is not None:
        context = context_from_carrier(event.envelope.trace_context)
    return context


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
