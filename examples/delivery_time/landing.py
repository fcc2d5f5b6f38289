"""How orders reach Strata: live events on the topic, and the weekly warehouse export.

The restaurant app publishes each order on the ``orders`` topic as it is placed
(:func:`publish_orders`). Once a week the warehouse exports the finished orders,
with their delivery times, as one Parquet partition in the blob store and
announces it with ``DataArrived`` (:func:`land_week`): that announcement is what
starts the retraining workflow.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka.admin import NewTopic
from project import ORDERS_TOPIC, WEEKLY_DATASET

from strata.api.data.v1.data_pb2 import DataArrived
from strata.core import kafka
from strata.core.blobs import open_blob_store
from strata.core.bus import Bus
from strata.core.settings import BlobSettings, KafkaSettings, load
from strata.core.topics import dead_letter_topic

EVENT_COLUMNS = ("order_id", "restaurant_id", "event_time", "prep_minutes")


def partition_of(number: int) -> str:
    """The weekly dataset's partition for week ``number``."""
    return f"week={number:04d}"


def partition_key(partition: str) -> str:
    """Where the export writes a partition in the blob store."""
    return f"warehouse/{WEEKLY_DATASET}/{partition}/orders.parquet"


async def create_orders_topic(partitions: int = 2) -> None:
    """The orders topic and its dead-letter topic (the broker creates no topic by itself)."""
    admin = kafka.admin(load(KafkaSettings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(ORDERS_TOPIC, partitions, replication_factor=1),
            NewTopic(dead_letter_topic(ORDERS_TOPIC), 1, replication_factor=1),
        ]
        missing = [topic for topic in wanted if topic.name not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


async def publish_orders(orders: pa.Table) -> None:
    """Each order as a JSON event on the orders topic, keyed by restaurant, in time order."""
    producer = kafka.producer(load(KafkaSettings))
    await producer.start()
    try:
        for row in orders.select(list(EVENT_COLUMNS)).to_pylist():
            row["event_time"] = row["event_time"].isoformat()
            key = str(row["restaurant_id"]).encode()
            await producer.send(ORDERS_TOPIC, json.dumps(row).encode(), key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def land_week(orders: pa.Table, number: int, *, checksum: str = "") -> DataArrived:
    """Write week ``number`` as a Parquet partition and announce it; the announcement.

    ``checksum`` replaces the content's own in the announcement (what a broken
    export would send), for showing that the workflow refuses it.
    """
    sink = io.BytesIO()
    pq.write_table(orders, sink)
    content = sink.getvalue()
    partition = partition_of(number)
    key = partition_key(partition)
    async with open_blob_store(load(BlobSettings)) as blobs:
        await blobs.put(key, content)
    arrived = DataArrived(
        dataset=WEEKLY_DATASET,
        partition=partition,
        uri=key,
        row_count=orders.num_rows,
        size_bytes=len(content),
        checksum=checksum or f"sha256:{hashlib.sha256(content).hexdigest()}",
        format="parquet",
    )
    async with Bus("delivery-time-export", kafka=load(KafkaSettings)) as bus:
        await bus.publish(arrived)
    return arrived
