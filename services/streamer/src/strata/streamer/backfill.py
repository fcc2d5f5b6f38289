"""Backfilling a view's online values from its offline partitions (``BackfillFeatureView``).

After a loss of the online store, or for a view whose topic no longer holds its
history, the online hashes are rebuilt from what the offline store holds:

1. the partitions: for a topic-sourced view, those landed by every version with
   the current one's source (``domain.backfill``); for a dataset-sourced one, its
   dataset's announced partitions (``domain.datasets``); each file checked against
   its checksum as a training set checks it;
2. the rows within the requested event-time range are folded, in arrival order,
   into the view's ``StreamingExecutor`` (on a worker thread): the same code the
   stream runs, so each entity's hash is byte for byte what the stream would
   have written after those events, in the online layout (its latest values and
   the events its longest window covers, which reads slide to their own time);
3. the hashes are written ``CHUNK`` entities per pipelined round trip, a progress
   report after each; the last write is announced with MaterializationFinished
   (target ONLINE, the entities written, the event-time range of the rows read).

While the view's stream runs, the backfill may write an entity the state of the
landed partitions, which lack the stream's last unlanded events (up to
``streams.FLUSH_SECONDS`` old): that entity's next event writes it whole again.

Why the streaming executor and not the batch one: the online layout stores each
entity's window events, which only the streaming executor keeps; the property
test holds the two paths equal. Why progress as a server stream, not a job like
training sets: a backfill holds no state worth keeping (running it again writes
the same hashes), so a caller that lost it simply runs it again, and an operator
restoring Redis wants to watch it finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from strata.api.common.v1.refs_pb2 import FeatureViewRef
from strata.api.features.v1.features_pb2 import (
    MATERIALIZATION_TARGET_ONLINE,
    MaterializationFinished,
)
from strata.core.runtime import ServiceContext
from strata.streamer import offline
from strata.streamer.domain.backfill import rows_to_fold, same_source
from strata.streamer.domain.datasets import SourcePartition
from strata.streamer.store import (
    CheckpointStore,
    DatasetStore,
    StoredView,
    ViewStore,
    announce,
)
from strata.transforms.definition import DatasetSource, FeatureView
from strata.transforms.online import write_online
from strata.transforms.rows import source_schema
from strata.transforms.spec import view_from_spec
from strata.transforms.streaming import EntityKey, StreamingExecutor

CHUNK = 1000
"""Entities written per pipelined round trip, and between two progress reports."""


@dataclass(frozen=True)
class Progress:
    """Where a backfill stands."""

    partitions: tuple[SourcePartition, ...]
    rows_read: int
    entities_written: int
    entities_total: int
    done: bool


async def backfill(
    context: ServiceContext, stored: StoredView, start: datetime | None, end: datetime | None
) -> AsyncIterator[Progress]:
    """Rebuild ``stored``'s online values from its offline partitions, reporting progress."""
    view = view_from_spec(stored.spec)
    partitions, rows = await _rows(context, stored, view)
    arrival = None if isinstance(view.source, DatasetSource) else _ARRIVAL
    folded = rows_to_fold(rows, view.event_time, arrival, start, end)
    executor = StreamingExecutor(view)
    touched = await asyncio.to_thread(executor.ingest, folded) if folded.num_rows else set()
    entities = list(touched)
    read = tuple(partitions)
    yield Progress(read, folded.num_rows, 0, len(entities), done=not entities)
    for first in range(0, len(entities), CHUNK):
        chunk: Sequence[EntityKey] = entities[first : first + CHUNK]
        await write_online(context.redis, view, {key: executor.online_row(key) for key in chunk})
        written = first + len(chunk)
        if written == len(entities):
            await announce(context.pool, context.outbox, _finished(stored, folded, written))
        yield Progress(read, folded.num_rows, written, len(entities), written == len(entities))


def _finished(stored: StoredView, folded: pa.Table, written: int) -> MaterializationFinished:
    """The announcement of a backfill that wrote ``written`` entities from ``folded``."""
    message = MaterializationFinished(
        feature_view=FeatureViewRef(name=stored.spec.name, version=stored.version),
        target=MATERIALIZATION_TARGET_ONLINE,
        rows_written=written,
    )
    times = folded.column(stored.spec.event_time_column)
    message.start_time.FromDatetime(pc.min(times).as_py())
    message.end_time.FromDatetime(pc.max(times).as_py())
    return message


_ARRIVAL = (offline.KAFKA_PARTITION, offline.ARRIVAL)


async def _rows(
    context: ServiceContext, stored: StoredView, view: FeatureView
) -> tuple[list[SourcePartition], pa.Table]:
    """The view's offline partitions and their rows (checksums checked)."""
    if isinstance(view.source, DatasetSource):
        datasets = DatasetStore(context.pool, context.schema)
        partitions = await datasets.partitions(view.source.dataset)
        return partitions, await offline.read_checked(
            context.blobs, partitions, source_schema(view)
        )
    views = ViewStore(context.pool, context.schema, context.outbox)
    versions = [
        past.version
        for past in await views.history(stored.spec.name)
        if same_source(past.spec, stored.spec)
    ]
    checkpoints = CheckpointStore(context.pool, context.schema, context.outbox)
    landed = await checkpoints.partitions_of_versions(stored.spec.name, versions)
    partitions = [SourcePartition(p.dataset, p.partition, p.uri, p.checksum) for p in landed]
    return partitions, await offline.read_checked(
        context.blobs, partitions, offline.offline_schema(view)
    )
