"""Building point-in-time training sets, as background work of the service.

``MaterializeTrainingSet`` only checks the request and stores a PENDING job;
``build_training_sets`` (a supervised loop, one round every ``every`` seconds)
claims jobs one at a time and builds each:

1. reads the label file (Parquet in the blob store);
2. for each requested view version, reads its offline partitions (those its
   stream landed, for a topic-sourced view; for a dataset-sourced one, the
   partitions of its dataset that DataArrived announced,
   :mod:`strata.streamer.handlers`), each checked against its checksum (a
   mismatch fails the job naming the partition and both checksums), and runs
   the view's batch executor (``strata.transforms.batch``: one DuckDB query
   with an ASOF join, on a worker thread) with the labels as the
   spine, so every value is the one the feature had at the label's time, never a
   later one, with the view's TTL and defaults; the job's progress is stored
   after each view;
3. writes the labels with one column per requested feature as one Parquet file
   and, in one transaction, marks the job SUCCEEDED with the file's sha256 and
   the partitions read, and publishes MaterializationFinished for each view.

A job that fails is FAILED with the reason. A streamer killed mid-job leaves its
job RUNNING under a lease; once the lease passes, a streamer claims it again.
"""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from strata.api.common.v1.refs_pb2 import FeatureViewRef
from strata.api.features.v1.features_pb2 import (
    MATERIALIZATION_TARGET_OFFLINE,
    MaterializationFinished,
)
from strata.core.errors import NotFoundError
from strata.core.runtime import ServiceContext
from strata.streamer import offline
from strata.streamer.domain.datasets import SourcePartition
from strata.streamer.domain.refs import parse_refs
from strata.streamer.domain.training import (
    column_of,
    features_by_view,
    result_key,
    time_column,
)
from strata.streamer.store import (
    CheckpointStore,
    DatasetStore,
    PartitionRead,
    StoredTrainingSet,
    TrainingSetStore,
    ViewStore,
)
from strata.transforms.batch import feature_values
from strata.transforms.definition import DatasetSource
from strata.transforms.rows import source_schema
from strata.transforms.spec import view_from_spec

log = structlog.stdlib.get_logger(__name__)


async def build_training_sets(context: ServiceContext) -> None:
    """Build every job waiting now, one after another."""
    jobs = TrainingSetStore(context.pool, context.schema, context.outbox)
    while (job := await jobs.claim()) is not None:
        try:
            await _build(context, jobs, job)
        except Exception as error:
            log.exception("training set failed", training_set=job.training_set_id)
            await jobs.fail(job.training_set_id, f"{type(error).__name__}: {error}")


async def _build(context: ServiceContext, jobs: TrainingSetStore, job: StoredTrainingSet) -> None:
    views = ViewStore(context.pool, context.schema, context.outbox)
    checkpoints = CheckpointStore(context.pool, context.schema, context.outbox)
    datasets = DatasetStore(context.pool, context.schema)
    request = job.request
    time = time_column(request.event_time_column)
    labels = await offline.read_one(context.blobs, request.labels_uri)
    await jobs.progress(job.training_set_id, 0.0, labels.num_rows)
    refs = parse_refs(list(request.features))
    wanted = features_by_view(refs)
    columns: dict[str, pa.ChunkedArray] = {}
    read: list[PartitionRead] = []
    for done, version in enumerate(job.feature_views, start=1):
        stored = await views.get(version.name, version.version)
        if stored is None:
            raise NotFoundError(
                f"feature view {version.name!r} version {version.version} was deleted"
            )
        view = view_from_spec(stored.spec)
        if isinstance(view.source, DatasetSource):
            partitions = await datasets.partitions(view.source.dataset)
            schema, arrival = source_schema(view), None
        else:
            landed = await checkpoints.partitions(version.name, version.version)
            partitions = [
                SourcePartition(p.dataset, p.partition, p.uri, p.checksum) for p in landed
            ]
            schema, arrival = offline.offline_schema(view), offline.ARRIVAL
        rows = await offline.read_checked(context.blobs, partitions, schema)
        values = await asyncio.to_thread(feature_values, view, rows, labels, time, arrival)
        for feature in wanted[version.name]:
            columns[column_of(version.name, feature)] = values.values.column(feature)
        read += [PartitionRead(p.dataset, p.partition, p.checksum) for p in partitions]
        await jobs.progress(
            job.training_set_id, done / (len(job.feature_views) + 1), labels.num_rows
        )
    result = labels
    for name in (column_of(ref.view, ref.feature) for ref in refs):
        result = result.append_column(name, columns[name])
    key = result_key(job.output_uri)
    info = await offline.write(context.blobs, key, result)
    times = labels.column(time)
    finished = []
    for version in job.feature_views:
        message = MaterializationFinished(
            feature_view=FeatureViewRef(name=version.name, version=version.version),
            target=MATERIALIZATION_TARGET_OFFLINE,
            uri=key,
            rows_written=result.num_rows,
            training_set_id=job.training_set_id,
        )
        if result.num_rows:
            message.start_time.FromDatetime(pc.min(times).as_py())
            message.end_time.FromDatetime(pc.max(times).as_py())
        finished.append(message)
    await jobs.succeed(
        job.training_set_id, result.num_rows, f"sha256:{info.sha256}", read, finished
    )
    log.info(
        "training set built",
        training_set=job.training_set_id,
        rows=result.num_rows,
        partitions=len(read),
    )
