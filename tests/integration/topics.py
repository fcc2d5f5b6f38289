"""Topics of a test's own on the tests' broker, each with its dead-letter topic."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from aiokafka.admin import NewTopic

from strata.core import kafka
from strata.core.settings import KafkaSettings, load
from strata.core.topics import dead_letter_topic


@contextlib.asynccontextmanager
async def topic_with_dead_letters(
    name: str, partitions: int = 1, dead_letter_configs: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """``name`` and its dead-letter topic (one partition), both deleted afterwards."""
    admin = kafka.admin(load(KafkaSettings))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, partitions, replication_factor=1),
                NewTopic(
                    dead_letter_topic(name),
                    1,
                    replication_factor=1,
                    topic_configs=dict(dead_letter_configs or {}),
                ),
            ]
        )
        yield name
        await admin.delete_topics([name, dead_letter_topic(name)])
    finally:
        await admin.close()
