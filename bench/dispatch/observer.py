"""Every event of the dispatch path, read off Kafka with the times it carries.

One consumer, in no group, reads ``strata.tasks.requested``, ``strata.tasks.events``
and ``strata.runs.events`` from their ends as of the start, as a watcher would. Each
record keeps three times: the envelope's ``occurred_at`` (when the producer's
transaction or report made it), the record's Kafka timestamp (when a producer or
outbox relay sent it; milliseconds) and when this process received it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf import json_format

from strata.api.provisioner.v1 import provisioner_pb2 as ppb
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.core.envelope import MalformedEventError, open_envelope
from strata.core.settings import KafkaSettings
from strata.core.topics import RUNS_EVENTS, TASKS_EVENTS, TASKS_REQUESTED

TOPICS = (TASKS_REQUESTED, TASKS_EVENTS, RUNS_EVENTS)
ENDED = frozenset({spb.RUN_STATE_SUCCEEDED, spb.RUN_STATE_FAILED, spb.RUN_STATE_CANCELLED})


@dataclass(frozen=True)
class Seen:
    """One event of one run, with its times in nanoseconds since the epoch."""

    kind: str
    """The payload's message name: ``TaskFinished``, ``TaskStateChanged``, …"""
    run_id: str
    task_id: str
    """Empty for a run's own events."""
    state: int
    """The new state of a ``TaskStateChanged`` or ``RunStateChanged``; else 0."""
    occurred_ns: int
    record_ns: int
    received_ns: int
    ran_ns: int = 0
    """The no-op's own clock reading, from a ``TaskFinished``'s outputs."""


class Observer:
    """The events seen so far, by run; a waiter per run for its end."""

    def __init__(self) -> None:
        self._runs: dict[str, list[Seen]] = defaultdict(list)
        self._ended: dict[str, asyncio.Future[Seen]] = {}

    def events(self, run_id: str) -> list[Seen]:
        return list(self._runs[run_id])

    async def ended(self, run_id: str) -> Seen:
        """The run's ``RunStateChanged`` into SUCCEEDED, FAILED or CANCELLED."""
        return await self._waiter(run_id)

    def _waiter(self, run_id: str) -> asyncio.Future[Seen]:
        if run_id not in self._ended:
            self._ended[run_id] = asyncio.get_running_loop().create_future()
        return self._ended[run_id]

    def add(self, seen: Seen) -> None:
        self._runs[seen.run_id].append(seen)
        if seen.kind == "RunStateChanged" and seen.state in ENDED:
            waiter = self._waiter(seen.run_id)
            if not waiter.done():
                waiter.set_result(seen)


@contextlib.asynccontextmanager
async def observing(settings: KafkaSettings) -> AsyncIterator[Observer]:
    """An :class:`Observer` fed from the topics' ends as of now, for the block."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_min_bytes=1,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    observer = Observer()
    try:
        partitions = [TopicPartition(t.name, p) for t in TOPICS for p in range(t.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the end offsets before anything is triggered
            await consumer.position(partition)
        reader = asyncio.create_task(_read(consumer, observer))
        try:
            yield observer
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, observer: Observer) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        received = time.time_ns()
        for records in batches.values():
            for record in records:
                seen = _seen(record.value, record.timestamp, received)
                if seen is not None:
                    observer.add(seen)


def _seen(data: bytes | None, timestamp_ms: int, received_ns: int) -> Seen | None:
    if data is None:
        return None
    try:
        event = open_envelope(data)
    except MalformedEventError:  # not one of the dispatch path's events: not measured
        return None
    payload, occurred = event.payload, event.envelope.occurred_at.ToNanoseconds()
    times = {
        "occurred_ns": occurred,
        "record_ns": timestamp_ms * 1_000_000,
        "received_ns": received_ns,
    }
    kind = type(payload).__name__
    if isinstance(payload, spb.RunStateChanged):
        return Seen(kind, payload.run_id, "", payload.state, **times)
    if isinstance(payload, spb.TaskStateChanged):
        ref = payload.attempt
        return Seen(kind, ref.run_id, ref.task_id, payload.state, **times)
    if isinstance(payload, ppb.TaskFinished):
        outputs = json_format.MessageToDict(payload.outputs)
        ran = int(outputs.get("ran_ns", 0))
        return Seen(kind, payload.attempt.run_id, payload.attempt.task_id, 0, ran_ns=ran, **times)
    attempt = getattr(payload, "attempt", None)
    if attempt is None:
        return None
    return Seen(kind, attempt.run_id, attempt.task_id, 0, **times)
