"""A producer process that commits a state change with its event, then never relays.

Usage: ``python outbox_peer.py SCHEMA TOPIC DATASET``. In one transaction it
stores a partition of the dataset and enqueues a ``StringValue(DATASET)`` event
keyed by the dataset name, commits, prints ``committed <event id>``, and blocks until killed:
the test SIGKILLs it between commit and publish.
"""

from __future__ import annotations

import asyncio
import sys

from google.protobuf.wrappers_pb2 import StringValue

from strata.core.envelope import seal
from strata.core.outbox import Outbox
from strata.core.postgres import create_pool
from strata.core.settings import PostgresSettings, load


async def main(schema: str, topic: str, dataset: str) -> None:
    pool = await create_pool(load(PostgresSettings))
    envelope = seal(StringValue(value=dataset), key=dataset, producer="outbox-peer")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f'INSERT INTO "{schema}".partitions (dataset, partition) VALUES ($1, $2)',
            dataset,
            "date=2026-12-01",
        )
        await Outbox(schema, "outbox-peer").enqueue(conn, topic, envelope)
    print(f"committed {envelope.event_id}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
