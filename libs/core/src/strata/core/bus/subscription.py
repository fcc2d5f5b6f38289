"""One member of a consumer group on one topic: fetch, hand over, commit behind the work.

Each fetch takes every record the reader has buffered, split by partition (the
broker's fetch limits bound it, 1 MiB a partition by default); the partitions are
processed side by side, the records of each strictly in order
(:meth:`Consumer.process`). Taking all partitions at once is what lets their
handlers overlap: aiokafka hands out one partition at a time when asked for fewer.
Offsets are committed in the background once enough records settled or enough
time passed (:mod:`strata.core.bus.offsets`), and always before partitions are
given up: on a rebalance, processing stops after the record in hand and the
settled offsets are committed before the partitions go to another member; on
:meth:`Subscription.stop` likewise before the group is left.

A partition whose handler found a dependency down (an
:class:`~strata.core.bus.failures.Outage`), or whose dead letter could not be
written, is *paused*: its position goes back to the first unsettled record and
aiokafka stops fetching it, with a backoff that doubles up to
``BusSettings.retry_backoff_max``; then it is fetched and tried again, for as long
as it takes. The other partitions flow on meanwhile, the reader keeps polling (so
the group does not evict it), and stopping or a rebalance never waits for the
dependency. One warning says a partition paused, one line that it resumed, and
``strata_consumer_paused`` is 1 while any partition of the consumer is paused.
After each fetch, ``strata_consumer_lag`` is set from the broker's high watermark.

Why aiokafka directly and not a FastStream subscriber: FastStream wraps every
record in its message object, middleware stack and dependency injection (four
hops to a worker thread per record here), commits after every record and cannot
commit behind the work; its batch subscriber also sleeps a whole batch timeout
after each empty fetch, which the dispatch path cannot afford. Measured on this
machine, that frame cost about a millisecond per event. So the Bus reads with
aiokafka, configured like every Strata consumer (:func:`strata.core.kafka.consumer`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from strata.core import kafka
from strata.core.bus.consumer import Consumer
from strata.core.bus.dead_letters import Record
from strata.core.bus.failures import Outage, describe
from strata.core.bus.offsets import Offsets
from strata.core.metrics import Metrics
from strata.core.settings import BusSettings, KafkaSettings

IDLE_WAIT_MS = 1_000
"""Longest wait for records when no commit is pending; a record ends it at once."""
COMMIT_POLL_MS = 10
"""Shortest wait for records while a commit is due."""

T = TypeVar("T")

_log = structlog.get_logger("strata.core.bus")


@dataclass
class _Pause:
    """A paused partition: when to fetch it again, and the wait after the next failure."""

    until: float
    backoff: float


class Subscription(ConsumerRebalanceListener):  # type: ignore[misc]
    """Reads ``consumer.topic`` as a member of ``consumer.group`` while started."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        kafka: KafkaSettings,
        settings: BusSettings,
        client_id: str,
        metrics: Metrics | None = None,
    ) -> None:
        self._consumer = consumer
        self._kafka = kafka
        self._settings = settings
        self._client_id = client_id
        self._offsets = Offsets(
            every=settings.commit_every, interval=settings.commit_interval_ms / 1000
        )
        self._reader: AIOKafkaConsumer | None = None
        self._loop: asyncio.Task[None] | None = None
        self._committing: asyncio.Task[None] | None = None
        self._round = asyncio.Lock()
        """Held while fetched records are processed; a rebalance waits for it."""
        self._generation = 0
        """Bumped when partitions are revoked: records fetched before are stale."""
        self._waiting = False
        """Awaiting records or a pause, with nothing in hand."""
        self._troubled = False
        """Something failed in the last round: pause before the next fetch."""
        self._stopping = False
        self._step = ""
        """What :meth:`stop` is doing, for the warning when it is cut short."""
        self._revoking = False
        self._paused: dict[TopicPartition, _Pause] = {}
        metrics = metrics or consumer.metrics
        self._paused_gauge = metrics.consumer_paused.labels(consumer.topic, consumer.group)
        self._lag_metric = metrics.consumer_lag
        self._lag: dict[TopicPartition, Gauge] = {}
        """The lag gauge of each partition, looked up once (``labels()`` costs µs)."""

    async def start(self) -> None:
        """Join the group and start reading in the background."""
        reader = kafka.consumer(
            self._kafka,
            group_id=self._consumer.group,
            client_id=self._client_id,
            auto_offset_reset=self._settings.auto_offset_reset,
            fetch_max_wait_ms=self._settings.fetch_max_wait_ms,
        )
        reader.subscribe([self._consumer.topic], listener=self)
        await reader.start()
        self._reader = reader
        self._loop = asyncio.create_task(
            self._run(reader), name=f"bus: {self._consumer.topic} in {self._consumer.group}"
        )

    async def stop(self, within: float | None = None) -> None:
        """Finish the record in hand, commit every settled offset, leave the group.

        Within ``within`` seconds when given: each step waits on the broker, and the
        group coordinator holds a member that is joining until every known member
        rejoined or a dead one's session timed out (seconds, or minutes), so a
        process stopping during a join would wait for that. Past ``within`` the rest
        is cut short and logged, naming the step: the broker drops this member at
        its session timeout, and offsets settled but not committed are read again
        by the next member (which the consumers' inbox absorbs).
        """
        self._stopping = True
        self._step = "finishing the records in hand"
        # A task of its own, waited for with a timeout: aiokafka may absorb a
        # cancellation while a join is in flight, and a bound must hold regardless.
        winding = asyncio.create_task(self._wind_down())
        await asyncio.wait([winding], timeout=within)
        if winding.done():
            winding.result()
            return
        _log.warning(
            "consumer stop cut short: left to the broker's session timeout",
            cut_short=self._step,
            within=within,
            **self._where(),
        )
        for task in (winding, self._loop, self._committing):
            if task is not None:
                task.cancel()
        self._loop = self._committing = self._reader = None

    async def _wind_down(self) -> None:
        if self._loop is not None:
            if self._waiting:
                self._loop.cancel()
            await asyncio.wait([self._loop])
            self._loop = None
        if self._reader is not None:
            self._step = "committing the settled offsets"
            async with self._round:
                await self._commit_now(self._reader)
            self._step = "leaving the group"
            await self._reader.stop()
            self._reader = None

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Before a rebalance: stop after the record in hand, commit what settled."""
        if self._reader is None:
            return
        self._revoking = True
        try:
            async with self._round:
                await self._commit_now(self._reader, revoked)
                self._offsets.forget(revoked)
                self._generation += 1
                for tp in revoked:
                    self._paused.pop(tp, None)
                self._paused_gauge.set(1 if self._paused else 0)
        finally:
            self._revoking = False

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Nothing to do: reading resumes from each partition's committed offset."""

    async def _run(self, reader: AIOKafkaConsumer) -> None:
        """Fetch and process until stopped; any failure costs a pause, never the loop."""
        while not self._stopping:
            try:
                self._resume_due(reader)
                fetched = await self._idle(reader.getmany(timeout_ms=self._wait_ms()))
                self._measure_lag(reader, fetched)
                generation = self._generation
                async with self._round:
                    if fetched and generation == self._generation:
                        await self._process(reader, fetched)
                    self._maybe_commit(reader)
            except Exception as exc:
                _log.error("reading events failed, trying again", error=repr(exc), **self._where())
                self._troubled = True
            if self._troubled:
                self._troubled = False
                await self._idle(asyncio.sleep(self._settings.retry_backoff_max))

    async def _idle(self, wait: Awaitable[T]) -> T:
        """Await ``wait`` with nothing in hand: :meth:`stop` may cancel it."""
        self._waiting = True
        try:
            return await wait
        finally:
            self._waiting = False

    async def _process(
        self, reader: AIOKafkaConsumer, fetched: dict[TopicPartition, list[Record]]
    ) -> None:
        """The partitions of one fetch side by side, each in order."""
        passes = [self._partition(reader, tp, records) for tp, records in fetched.items()]
        if len(passes) == 1:
            await passes[0]
        else:
            await asyncio.gather(*passes)

    async def _partition(
        self, reader: AIOKafkaConsumer, tp: TopicPartition, records: list[Record]
    ) -> None:
        """One partition's records of a fetch, in order.

        Whatever is left unsettled (the pass was halted, a dependency is down, or a
        dead letter could not be written) is read again: the position goes back to
        the first such record, so no later commit can pass it. The last two also
        pause the partition (see the module docstring).
        """
        unsettled = records[0].offset

        def settled(record: Record) -> None:
            nonlocal unsettled
            count, unsettled = record.offset + 1 - unsettled, record.offset + 1
            self._offsets.settle(tp, unsettled, count)

        failure: BaseException | None = None
        try:
            await self._consumer.process(records, settled, self._halted)
        except Outage as outage:
            failure = outage.error
        except Exception as exc:
            failure = exc
        if unsettled <= records[-1].offset and tp in reader.assignment():
            reader.seek(tp, unsettled)
        if failure is not None:
            self._pause(reader, tp, unsettled, failure)
        elif tp in self._paused and unsettled > records[-1].offset:
            self._resumed(tp, unsettled)

    def _pause(
        self, reader: AIOKafkaConsumer, tp: TopicPartition, offset: int, error: BaseException
    ) -> None:
        """Stop fetching ``tp`` for a while; the first time, say so once."""
        settings = self._settings
        pause = self._paused.get(tp)
        if pause is None:
            pause = self._paused[tp] = _Pause(0.0, settings.retry_backoff_initial)
            self._paused_gauge.set(1)
            _log.warning(
                "partition paused: a dependency is unavailable or a dead letter could not be "
                "written; retrying the record until it can be settled",
                error=describe(error),
                partition=tp.partition,
                offset=offset,
                **self._where(),
            )
        else:
            pause.backoff = min(pause.backoff * 2, settings.retry_backoff_max)
        pause.until = time.monotonic() + pause.backoff
        if tp in reader.assignment():
            reader.pause(tp)

    def _resumed(self, tp: TopicPartition, offset: int) -> None:
        del self._paused[tp]
        self._paused_gauge.set(1 if self._paused else 0)
        _log.info("partition resumed", partition=tp.partition, offset=offset, **self._where())

    def _resume_due(self, reader: AIOKafkaConsumer) -> None:
        """Fetch again the paused partitions whose wait is over."""
        if not self._paused:
            return
        now = time.monotonic()
        paused = reader.paused()
        due = [tp for tp, p in self._paused.items() if p.until <= now and tp in paused]
        if due:
            reader.resume(*due)

    def _measure_lag(
        self, reader: AIOKafkaConsumer, fetched: dict[TopicPartition, list[Record]]
    ) -> None:
        """Records past the fetched ones on each partition, from the fetch's high watermark."""
        for tp, records in fetched.items():
            highwater = reader.highwater(tp)
            if highwater is not None and records:
                gauge = self._lag.get(tp)
                if gauge is None:
                    labels = (tp.topic, self._consumer.group, str(tp.partition))
                    gauge = self._lag[tp] = self._lag_metric.labels(*labels)
                gauge.set(max(0, highwater - records[-1].offset - 1))

    def _halted(self) -> bool:
        return self._stopping or self._revoking

    def _maybe_commit(self, reader: AIOKafkaConsumer) -> None:
        """Start a background commit if one is due and none is in flight."""
        if self._committing is not None and not self._committing.done():
            return
        if self._offsets.due():
            offsets = self._offsets.take()
            if offsets:
                self._committing = asyncio.create_task(self._commit(reader, offsets))

    async def _commit_now(
        self, reader: AIOKafkaConsumer, partitions: Sequence[TopicPartition] | None = None
    ) -> None:
        """Wait for the commit in flight, then commit what settled since, and wait for it."""
        if self._committing is not None:
            await self._committing
            self._committing = None
        offsets = self._offsets.take(partitions)
        if offsets:
            await self._commit(reader, offsets)

    async def _commit(self, reader: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await reader.commit(offsets)
        except KafkaError as exc:
            # The offsets stay pending; the next commit carries them, and a record
            # that was settled but not committed is at worst read once more.
            self._offsets.failed()
            _log.warning("offset commit failed", error=repr(exc), **self._where())
        else:
            self._offsets.committed(offsets)

    def _wait_ms(self) -> int:
        """Until the next commit falls due, so an idle consumer still commits on time.

        At least :data:`COMMIT_POLL_MS`: a commit that falls due while the last one is
        still in flight must not turn the loop into a spin.
        """
        waits = [self._offsets.wait()]
        if self._paused:
            waits.append(min(p.until for p in self._paused.values()) - time.monotonic())
        due = [w for w in waits if w is not None]
        if not due:
            return IDLE_WAIT_MS
        return min(IDLE_WAIT_MS, max(COMMIT_POLL_MS, int(min(due) * 1000)))

    def _where(self) -> dict[str, str]:
        return {"topic": self._consumer.topic, "group": self._consumer.group}
