"""Where triggers turn into runs: an arrived partition, a due cron tick, a backfill.

Each run a trigger creates carries a trigger key (:mod:`strata.scheduler.domain.triggers`)
that the runs table holds unique, so whatever is seen twice (a republished
DataArrived, a tick after a restart, a backfill asked again) makes one run. Paused
workflows start nothing from triggers; their cron schedules still move on, so
unpausing does not replay the ticks passed while paused.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from strata.api.common.v1.refs_pb2 import PartitionRef
from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.scheduler.v1.scheduler_pb2 import CronTrigger, RunCause
from strata.core.errors import InvalidArgumentError
from strata.core.inbox import claim
from strata.core.migrations import DbConnection
from strata.core.runtime import ServiceContext
from strata.scheduler.domain.triggers import (
    MAX_BACKFILL_TICKS,
    ArrivedPartition,
    arrival_key,
    backfill_partitions,
    backfill_ticks,
    cron_triggers,
    due_ticks,
    latest_tick,
    tick_key,
    watching,
)
from strata.scheduler.runs import Runs
from strata.scheduler.store import (
    PartitionStore,
    ScheduleStore,
    StoredRun,
    StoredWorkflow,
    WorkflowStore,
)

log = structlog.stdlib.get_logger(__name__)

ARRIVALS_INBOX = "data-arrivals"
"""The inbox name under which DataArrived events are claimed."""


def unwatched_counter(context: ServiceContext) -> Counter:
    """``strata_scheduler_unwatched_arrivals_total``: partitions no workflow watches."""
    return Counter(
        "strata_scheduler_unwatched_arrivals",
        "DataArrived events that matched no data-arrival trigger of an active workflow.",
        registry=context.metrics.registry,
    )


class Triggers:
    """The triggers of one scheduler schema, creating runs through ``runs``."""

    def __init__(
        self, context: ServiceContext, runs: Runs, *, unwatched: Counter | None = None
    ) -> None:
        self._context = context
        self._pool = context.pool
        self._runs = runs
        self._workflows = WorkflowStore(context.pool, context.schema)
        self._schedules = ScheduleStore(context.schema)
        self._partitions = PartitionStore(context.pool, context.schema)
        self._unwatched = unwatched

    async def arrived(self, event: DataArrived, event_id: str) -> int:
        """One run per workflow watching the partition; return how many were created.

        An event without a dataset or partition can never match anything and is
        refused (the bus dead-letters it with this reason).
        """
        if not event.dataset:
            raise InvalidArgumentError("dataset", "is empty: DataArrived must name its dataset")
        if not event.partition:
            raise InvalidArgumentError(
                "partition",
                f"is empty: DataArrived of dataset {event.dataset!r} names no partition",
            )
        watchers = [
            w
            for w in await self._workflows.current()
            if not w.paused and watching(w.spec, event.dataset, event.partition)
        ]
        arrived = ArrivedPartition(
            dataset=event.dataset,
            partition=event.partition,
            uri=event.uri,
            checksum=event.checksum,
            arrived_at=self._runs.now(),
        )
        created = 0
        async with self._pool.acquire() as conn, conn.transaction():
            if not await claim(conn, self._context.schema, event_id, consumer=ARRIVALS_INBOX):
                return 0
            await self._partitions.record(conn, arrived)
            for workflow in watchers:
                _, new = await self._arrival_run(conn, workflow, arrived)
                created += new
        if not watchers:
            if self._unwatched is not None:
                self._unwatched.inc()
            log.info(
                "arrived data no workflow watches",
                dataset=event.dataset,
                partition=event.partition,
            )
        return created

    async def _arrival_run(
        self,
        conn: DbConnection,
        workflow: StoredWorkflow,
        arrived: ArrivedPartition,
        *,
        lane: str = "",
        lane_limit: int | None = None,
    ) -> tuple[StoredRun, bool]:
        """The run of ``workflow`` for one partition's content; True when it is new."""
        return await self._runs.create(
            conn,
            workflow,
            {**_defaults(workflow), **arrived.params},
            RunCause(
                data_arrival=PartitionRef(
                    dataset=arrived.dataset, partition=arrived.partition, checksum=arrived.checksum
                )
            ),
            trigger_key=arrival_key(
                workflow.spec.name, arrived.dataset, arrived.partition, arrived.checksum
            ),
            lane=lane,
            lane_limit=lane_limit,
        )

    async def backfill(
        self,
        workflow: StoredWorkflow,
        start: datetime,
        end: datetime,
        max_concurrent: int,
        dataset: str = "",
    ) -> tuple[list[StoredRun], int]:
        """One run per cron tick of the range (or, with ``dataset``, per partition of it
        that arrived in the range) not run before, in one lane of their own.

        Returns every tick's or partition's run, oldest first, and how many were
        created. The lane is new for each backfill, so its limit counts only its own
        runs.
        """
        lane = f"backfill:{uuid.uuid4()}"
        limit = max_concurrent or workflow.spec.max_active_runs
        if dataset:
            return await self._backfill_partitions(workflow, dataset, start, end, lane, limit)
        ticks = backfill_ticks(workflow.spec, start, end)
        runs: list[StoredRun] = []
        created = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for tick in ticks:
                run, new = await self._runs.create(
                    conn,
                    workflow,
                    _tick_params(workflow, tick),
                    RunCause(cron_tick=_timestamp(tick)),
                    trigger_key=tick_key(workflow.spec.name, tick),
                    lane=lane,
                    lane_limit=limit,
                )
                runs.append(run)
                created += new
        log.info("backfill", workflow=workflow.spec.name, ticks=len(ticks), created=created)
        return runs, created

    async def _backfill_partitions(
        self,
        workflow: StoredWorkflow,
        dataset: str,
        start: datetime,
        end: datetime,
        lane: str,
        limit: int,
    ) -> tuple[list[StoredRun], int]:
        arrived = await self._partitions.arrived_between(
            dataset, start, end, MAX_BACKFILL_TICKS + 1
        )
        partitions = backfill_partitions(workflow.spec, dataset, arrived)
        runs: list[StoredRun] = []
        created = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for partition in partitions:
                run, new = await self._arrival_run(
                    conn, workflow, partition, lane=lane, lane_limit=limit
                )
                runs.append(run)
                created += new
        log.info(
            "backfill", workflow=workflow.spec.name, partitions=len(partitions), created=created
        )
        return runs, created

    async def begin_schedules(self, workflow: StoredWorkflow) -> None:
        """Start the cron schedules of a just-applied workflow at now (see ScheduleStore.begin)."""
        now = self._runs.now()
        for trigger in cron_triggers(workflow.spec):
            await self._schedules.begin(
                self._pool, workflow.spec.name, trigger.expression, trigger.time_zone, now
            )

    async def fire_due(self) -> int:
        """One round of the cron loop: a run per due tick of every schedule; how many.

        The last ticks are read at once and only schedules with a tick due are
        locked and run, so an idle round costs two queries, not two per schedule.
        """
        created = 0
        now = self._runs.now()
        last_ticks = await self._schedules.last_ticks(self._pool)
        for workflow in await self._workflows.current():
            name = workflow.spec.name
            for trigger in cron_triggers(workflow.spec):
                last = last_ticks.get((name, trigger.expression, trigger.time_zone))
                if last is None:  # applied before its schedule was begun
                    await self._schedules.begin(
                        self._pool, name, trigger.expression, trigger.time_zone, now
                    )
                elif due_ticks(trigger, last, now)[0]:
                    created += await self._fire(workflow, trigger, now)
        return created

    async def _fire(self, workflow: StoredWorkflow, trigger: CronTrigger, now: datetime) -> int:
        """Run the due ticks of one schedule and move its last tick, in one transaction."""
        name, expression, time_zone = workflow.spec.name, trigger.expression, trigger.time_zone
        created = 0
        async with self._pool.acquire() as conn, conn.transaction():
            last = await self._schedules.claim(conn, name, expression, time_zone)
            if last is None:
                return 0
            ticks: list[datetime] = []
            if workflow.paused:  # its ticks pass without runs, however many there are
                new_last = latest_tick(trigger, last, now) or last
            else:
                ticks, new_last = due_ticks(trigger, last, now)
            if new_last == last:
                return 0
            for tick in ticks:
                _, new = await self._runs.create(
                    conn,
                    workflow,
                    _tick_params(workflow, tick),
                    RunCause(cron_tick=_timestamp(tick)),
                    trigger_key=tick_key(name, tick),
                )
                created += new
            await self._schedules.advance(conn, name, expression, time_zone, new_last)
        if created:
            log.info("cron ticks ran", workflow=name, runs=created, last_tick=new_last.isoformat())
        return created


def _tick_params(workflow: StoredWorkflow, tick: datetime) -> dict[str, object]:
    return {**_defaults(workflow), "tick": tick.astimezone(UTC).isoformat()}


def _defaults(workflow: StoredWorkflow) -> dict[str, object]:
    return dict(json_format.MessageToDict(workflow.spec.default_params))


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
