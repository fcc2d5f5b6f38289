"""Another process on the real broker, for tests/integration/test_clients.py.

Consumes COUNT records of TOPIC as consumer group GROUP with
``strata.core.kafka.consumer``, prints each as a JSON line (key and value in
hex), and commits the offsets only after the lines are written: the same
"commit after the work is durable" order services follow.

Usage: python kafka_peer.py TOPIC GROUP COUNT
"""

from __future__ import annotations

import asyncio
import json
import sys

from strata.core import kafka
from strata.core.settings import KafkaSettings, load

DEADLINE = 60.0
"""Seconds before the peer gives up, so a broken test fails instead of hanging."""


async def consume(topic: str, group: str, count: int) -> None:
    consumer = kafka.consumer(load(KafkaSettings), topic, group_id=group)
    await consumer.start()
    try:
        for _ in range(count):
            record = await consumer.getone()
            line = {"key": (record.key or b"").hex(), "value": record.value.hex()}
            print(json.dumps(line), flush=True)
        await consumer.commit()
    finally:
        await consumer.stop()


async def main(topic: str, group: str, count: int) -> None:
    try:
        async with asyncio.timeout(DEADLINE):
            await consume(topic, group, count)
    except TimeoutError:
        sys.exit(f"kafka_peer: fewer than {count} records on {topic} within {DEADLINE:g} s")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
