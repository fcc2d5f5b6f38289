"""The streaming path of the service: each topic-sourced view's current version
follows its raw topic and keeps its online values in Redis.

``follow_views`` (a supervised loop) polls the catalog every second and runs one
``ViewStream`` per view, replacing it when a new version is applied (a new
version starts from the topic's beginning, since its windows may differ) and
stopping it when the view is deleted.

A ``ViewStream`` reads its topic with a plain ``strata.core.kafka`` consumer, not
the bus: raw events are JSON (``domain.raw_events``), not Strata envelopes, and
the stream must resume from its own checkpoint. Partitions are assigned, not
subscribed, so one process owns the view. Each batch from ``getmany``:

1. decodes the records; one that does not fit the view's source columns is
   dead-lettered to ``<topic>.dlq`` with the reason, and the stream goes on
   (whoever creates a raw topic creates its ``.dlq`` too, as for every Strata
   topic: the broker does not create topics on demand);
2. folds the rows into the ``StreamingExecutor`` and writes every touched
   entity's online row (its plain features at its latest event time and the
   events its windows cover, which reads slide to their own time) to Redis in
   one pipeline, and keeps the rows for the offline store.

Once the kept rows reach ``FLUSH_ROWS``, or the oldest is ``FLUSH_SECONDS`` old,
the stream lands them (``strata.streamer.offline``: Parquet partitions in the
blob store, one per hour of event time), then saves in one Postgres transaction
the next offsets, the executor's snapshot, the landed partitions and a
DataArrived for each (through the outbox), and commits the offsets to Kafka
(for lag metrics and tools).

A restart resumes from the checkpoint: the state, the offsets and the offline
partitions it saved belong together, so no record is counted twice or lost, on
either path. A crash after the online write or the Parquet upload but before the
checkpoint replays those records over the older state: the online values are
written again, and the partitions are landed again (under the same names, since
they are named by the offsets they start at); a file of the crashed run that is
not overwritten is not in the catalog and is never read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import structlog
from aiokafka import TopicPartition

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.core import kafka
from strata.core.bus import dead_letter
from strata.core.bus.dead_letters import Record
from strata.core.errors import InvalidArgumentError
from strata.core.runtime import ServiceContext
from strata.streamer.domain.raw_events import RawEventError, decode
from strata.streamer.metrics import StreamerMetrics
from strata.streamer.offline import ARRIVAL, KAFKA_PARTITION, events_table, land
from strata.streamer.store import Checkpoint, CheckpointStore, StoredView, ViewStore
from strata.transforms.online import delete_online, write_online
from strata.transforms.spec import view_from_spec
from strata.transforms.streaming import StreamingExecutor
from strata.transforms.types import Scalar

log = structlog.stdlib.get_logger(__name__)

REFRESH = 1.0
"""Seconds between looks at the catalog for new views and versions."""
MAX_TOPIC_WAIT = 30.0
"""Longest pause between asking whether a view's missing topic exists yet."""
MAX_BATCH = 5000
"""Most records folded, written and checkpointed as one batch."""
POLL_MS = 500
"""How long one ``getmany`` waits for records."""
FLUSH_ROWS = 100_000
"""Most consumed events held before they are landed offline and checkpointed."""
FLUSH_SECONDS = 2.0
"""Longest a consumed event waits before it is landed offline and checkpointed."""


def follow_views(metrics: StreamerMetrics) -> Callable[[ServiceContext], Awaitable[None]]:
    """The loop running every view's stream, counting into ``metrics``."""

    async def follow(context: ServiceContext) -> None:
        metrics.attach(context.metrics.registry)
        await _follow_views(context, metrics)

    return follow


async def _follow_views(context: ServiceContext, metrics: StreamerMetrics) -> None:
    """Run a stream for the current version of every topic-sourced view, until cancelled.

    One view's trouble stays its own: a stored spec that no longer compiles is
    logged once and skipped, and a stream that fails is logged and started again
    from its checkpoint at the next look, while the others go on.
    """
    views = ViewStore(context.pool, context.schema, context.outbox)
    running: dict[str, tuple[int, asyncio.Task[None]]] = {}
    unusable: set[tuple[str, int]] = set()
    try:
        while True:
            catalog = await views.all_current()
            await _stop_deleted(context, running, {stored.spec.name for stored in catalog})
            for stored in catalog:
                name, version = stored.spec.name, stored.version
                if stored.spec.source.WhichOneof("kind") != "topic" or (name, version) in unusable:
                    continue
                current = running.get(name)
                if current is not None and current[0] == version and not current[1].done():
                    continue
                if current is not None:
                    _end(name, current[1])
                try:
                    stream = ViewStream(context, stored, metrics)
                except InvalidArgumentError as error:
                    log.error(
                        "view cannot be streamed", view=name, version=version, error=str(error)
                    )
                    unusable.add((name, version))
                    continue
                running[name] = (version, asyncio.create_task(stream.run()))
            await asyncio.sleep(REFRESH)
    finally:
        tasks = [task for _, task in running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stop_deleted(
    context: ServiceContext,
    running: dict[str, tuple[int, asyncio.Task[None]]],
    catalog: set[str],
) -> None:
    """Stop the streams of views deleted from the catalog, then remove their online values.

    ``DeleteFeatureView`` removed the hashes already; removing them again once
    the stream has stopped clears what its last batch wrote meanwhile.
    """
    for name in [name for name in running if name not in catalog]:
        _, task = running.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        removed = await delete_online(context.redis, name)
        log.info("view deleted, its stream stopped", view=name, online_keys_removed=removed)


def _end(name: str, task: asyncio.Task[None]) -> None:
    """Stop a replaced stream, or log why a stream ended."""
    if not task.done():
        task.cancel()
    elif not task.cancelled() and (error := task.exception()) is not None:
        log.error("stream failed, restarting it", view=name, exc_info=error)


@dataclass
class _Unlanded:
    """What the stream consumed since its last checkpoint: rows still to land offline."""

    start: dict[int, int]
    """Offsets the batch begins at (the last checkpoint's); they name its partitions."""
    rows: list[dict[str, Scalar]] = field(default_factory=list)
    since: float | None = None
    """``time.monotonic()`` when the first record after the checkpoint was consumed."""

    def due(self, now: float) -> bool:
        if self.since is None:
            return False
        return len(self.rows) >= FLUSH_ROWS or now - self.since >= FLUSH_SECONDS


class ViewStream:
    """One view version following its topic, from its checkpoint on."""

    def __init__(
        self, context: ServiceContext, stored: StoredView, metrics: StreamerMetrics
    ) -> None:
        self._context = context
        self._metrics = metrics
        self._checkpoints = CheckpointStore(context.pool, context.schema, context.outbox)
        self._view = view_from_spec(stored.spec)
        self._version = stored.version
        self._topic = stored.spec.source.topic
        self._group = f"strata.streamer.{self._view.name}.v{self._version}"

    async def run(self) -> None:
        name = self._view.name
        checkpoint = await self._checkpoints.load(name, self._version)
        if checkpoint is None:
            executor, offsets = StreamingExecutor(self._view), {}
        else:
            executor = StreamingExecutor.restore(self._view, checkpoint.state)
            offsets = dict(checkpoint.offsets)
        partitions = await self._partitions()
        consumer = kafka.consumer(self._context.settings.kafka, group_id=self._group)
        await consumer.start()
        try:
            consumer.assign(partitions)
            for partition in partitions:
                if partition.partition in offsets:
                    consumer.seek(partition, offsets[partition.partition])
                else:
                    await consumer.seek_to_beginning(partition)
            log.info("stream started", view=name, version=self._version, resumed=offsets)
            unlanded = _Unlanded(dict(offsets))
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_BATCH)
                if batches:
                    await self._apply(executor, offsets, batches, unlanded)
                if unlanded.due(time.monotonic()):
                    await self._land(executor, offsets, unlanded)
                    await consumer.commit(
                        {TopicPartition(self._topic, p): o for p, o in offsets.items()}
                    )
                    unlanded = _Unlanded(dict(offsets))
        finally:
            await consumer.stop()

    async def _partitions(self) -> list[TopicPartition]:
        """The topic's partitions, once the topic exists (asked of the broker, backing off)."""
        pause = REFRESH
        while True:
            admin = kafka.admin(self._context.settings.kafka)
            await admin.start()
            try:
                (described,) = await admin.describe_topics([self._topic])
            finally:
                await admin.close()
            found = sorted(p["partition"] for p in described["partitions"])
            if described["error_code"] == 0 and found:
                return [TopicPartition(self._topic, p) for p in found]
            if pause == REFRESH:
                log.warning("waiting for the topic", view=self._view.name, topic=self._topic)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_TOPIC_WAIT)

    async def _apply(
        self,
        executor: StreamingExecutor,
        offsets: dict[int, int],
        batches: Mapping[TopicPartition, Sequence[Record]],
        unlanded: _Unlanded,
    ) -> None:
        """Fold a batch into the window state and the online store; keep its rows to land."""
        rows: list[dict[str, Scalar]] = []
        name = self._view.name
        for partition, records in batches.items():
            self._metrics.consumed.labels(name).inc(len(records))
            for record in records:
                try:
                    row = decode(self._view, record.value)
                except RawEventError as error:
                    await self._dead_letter(record, str(error))
                    continue
                rows.append(row)
                unlanded.rows.append(
                    {**row, KAFKA_PARTITION: record.partition, ARRIVAL: record.offset}
                )
            offsets[partition.partition] = records[-1].offset + 1
        if unlanded.since is None:
            unlanded.since = time.monotonic()
        before = replace(executor.counts)
        touched = executor.ingest(rows) if rows else set()
        self._metrics.count_ingest(name, before, executor.counts)
        values = {key: executor.online_row(key) for key in touched}
        await write_online(self._context.redis, self._view, values)

    async def _land(
        self, executor: StreamingExecutor, offsets: dict[int, int], unlanded: _Unlanded
    ) -> None:
        """Land the kept rows offline, then checkpoint state, offsets and partitions together."""
        landed = []
        if unlanded.rows:
            landed = await land(
                self._context.blobs,
                self._view,
                self._version,
                self._topic,
                events_table(self._view, unlanded.rows),
                unlanded.start,
            )
        checkpoint = Checkpoint(dict(offsets), executor.snapshot())
        await self._checkpoints.save(self._view.name, self._version, checkpoint, landed)
        self._metrics.partitions_landed.labels(self._view.name).inc(len(landed))

    async def _dead_letter(self, record: Record, reason: str) -> None:
        letter = dead_letter(
            record,
            cause=DeadLetter.CAUSE_REJECTED,
            reason=f"feature view {self._view.name!r} version {self._version}: {reason}",
            attempts=1,
            group=self._group,
            consumer=self._context.name,
        )
        await self._context.bus.publisher.publish_dead_letter(letter)
        self._metrics.dead_lettered.labels(self._view.name).inc()
        log.warning(
            "raw event dead-lettered",
            view=self._view.name,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
        )
