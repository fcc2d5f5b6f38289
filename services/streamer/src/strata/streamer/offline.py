"""Parquet in the blob store: the streamer's offline partitions and training sets, written and read.

All Parquet I/O of the service is here. Rows keep the view's source columns in
their declared Arrow types plus where each came from in Kafka (``__partition``,
``__offset``): the offset is the arrival order the batch path's lateness rule
needs (Kafka keeps the order of one key, i.e. one entity), and it makes a row
delivered twice identical to its first copy, which the batch path counts once.

Encoding and decoding run on a worker thread: a large batch would otherwise
stall the event loop that also serves online reads.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from strata.core.blobs import BlobInfo, BlobStore
from strata.streamer.domain.datasets import SourcePartition, check_content
from strata.streamer.domain.offline import LandedPartition, partition_key, partition_name
from strata.transforms.definition import FeatureView
from strata.transforms.rows import source_schema
from strata.transforms.types import Scalar

KAFKA_PARTITION = "__partition"
ARRIVAL = "__offset"
"""Column of the Kafka offset each row was read at; the batch path's arrival order."""


def offline_schema(view: FeatureView) -> pa.Schema:
    """The columns of ``view``'s offline partitions."""
    return (
        source_schema(view)
        .append(pa.field(KAFKA_PARTITION, pa.int32()))
        .append(pa.field(ARRIVAL, pa.int64()))
    )


def events_table(view: FeatureView, rows: Sequence[Mapping[str, Scalar]]) -> pa.Table:
    """Decoded raw events (each with its ``__partition`` and ``__offset``) as one table."""
    return pa.Table.from_pylist(list(rows), schema=offline_schema(view))


async def land(
    blobs: BlobStore,
    view: FeatureView,
    version: int,
    dataset: str,
    events: pa.Table,
    start: Mapping[int, int],
) -> list[LandedPartition]:
    """Write ``events`` as one partition per hour of event time; what was written.

    ``start`` is the offsets the batch begins at, which name its partitions.
    """
    hours = await asyncio.to_thread(_by_hour, events, view.event_time)
    landed = []
    for hour, part in hours:
        partition = partition_name(view.name, version, hour, start)
        key = partition_key(dataset, partition)
        content = await asyncio.to_thread(_encode, part)
        info: BlobInfo = await blobs.put(key, content)
        times = part.column(view.event_time)
        landed.append(
            LandedPartition(
                dataset=dataset,
                partition=partition,
                uri=key,
                row_count=part.num_rows,
                size_bytes=info.size,
                checksum=f"sha256:{info.sha256}",
                start_time=pc.min(times).as_py(),
                end_time=pc.max(times).as_py(),
            )
        )
    return landed


async def read_checked(
    blobs: BlobStore, partitions: Sequence[SourcePartition], schema: pa.Schema
) -> pa.Table:
    """The partitions' files as one table of ``schema`` (empty when there are none), in
    the order given, each file's content checked against its partition's checksum
    first (``PartitionChecksumError``)."""
    contents = await asyncio.gather(*(blobs.get(p.uri) for p in partitions))
    return await asyncio.to_thread(_checked_all, list(partitions), list(contents), schema)


async def read_one(blobs: BlobStore, key: str) -> pa.Table:
    """One Parquet file of the blob store."""
    content = await blobs.get(key)
    return await asyncio.to_thread(decode, content)


async def write(blobs: BlobStore, key: str, table: pa.Table) -> BlobInfo:
    """Store ``table`` as a Parquet file under ``key``."""
    content = await asyncio.to_thread(_encode, table)
    return await blobs.put(key, content)


def decode(content: bytes) -> pa.Table:
    """A Parquet file's table; ``pa.ArrowInvalid`` when the bytes are not Parquet."""
    return pq.read_table(io.BytesIO(content))


def _decode_all(contents: list[bytes], schema: pa.Schema) -> pa.Table:
    tables = [decode(content).select(schema.names).cast(schema) for content in contents]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _checked_all(
    partitions: list[SourcePartition], contents: list[bytes], schema: pa.Schema
) -> pa.Table:
    for partition, content in zip(partitions, contents, strict=True):
        check_content(partition, content)
    return _decode_all(contents, schema)


def _encode(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _by_hour(events: pa.Table, event_time: str) -> list[tuple[datetime, pa.Table]]:
    hours = pc.floor_temporal(events.column(event_time), unit="hour")
    parts = []
    for hour in pc.unique(hours).to_pylist():
        parts.append((hour, events.filter(pc.equal(hours, hour))))
    return sorted(parts, key=lambda part: part[0])
