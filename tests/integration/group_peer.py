"""A member of a consumer group in another process, for tests/integration/test_bus.py.

Joins consumer group GROUP on TOPIC with a session of SESSION_MS, prints
``assigned`` once it holds its partitions and then waits to be killed: a member
SIGKILLed this way stays in the group, as far as the broker knows, until its
session times out, and holds every join of the group until then.

Usage: python group_peer.py TOPIC GROUP
"""

from __future__ import annotations

import asyncio
import sys

from strata.core import kafka
from strata.core.settings import KafkaSettings, load

SESSION_MS = 120_000
"""Longer than any test waits: the dead member holds its group's joins for the whole test."""
DEADLINE = 60.0
"""Seconds before the peer gives up, so a broken test fails instead of hanging."""


async def member(topic: str, group: str) -> None:
    consumer = kafka.consumer(
        load(KafkaSettings),
        topic,
        group_id=group,
        session_timeout_ms=SESSION_MS,
        rebalance_timeout_ms=SESSION_MS,
    )
    await consumer.start()
    async with asyncio.timeout(DEADLINE):
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
    print("assigned", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(member(sys.argv[1], sys.argv[2]))
