"""Where served predictions enter the registry, and how long they stay.

``strata.predictions`` (consumer group "registry"): the gateway's prediction log
comes in batches; each batch is kept in one transaction that also claims the
prediction ids (the events' ids) in the inbox, so a record Kafka or the gateway
delivers twice is kept once. The time a prediction was served is its log event's
time.

Why the registry: a prediction's lineage starts at the model version that answered,
and the registry holds that version, its artifacts and its lineage; keeping the
record beside them answers ``GetPredictionLineage`` from one schema, and a skew
report reads the same records through ``ListPredictions``. The gateway keeps nothing
durable (its hot path must not wait on Postgres), so it cannot be the home.

Retention: a supervised loop deletes predictions served longer ago than
``STRATA_REGISTRY_PREDICTIONS_RETENTION`` (30 days by default), every half
retention and at least once a minute; without it the table grows with every
request served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.gateway.v1.gateway_pb2 import PredictionLogged
from strata.core.inbox import claim_events
from strata.core.runtime import ServiceContext
from strata.core.topics import PREDICTIONS
from strata.registry.domain.predictions import record_of
from strata.registry.store import RegistryStore

log = structlog.stdlib.get_logger(__name__)

GROUP = "registry"
INBOX = "predictions"
PRUNE_EVERY_MAX = 60.0
"""Longest pause between two prunings, in seconds."""


def register_predictions(context: ServiceContext) -> None:
    """Keep the predictions of ``strata.predictions`` in the registry's schema."""
    store = RegistryStore(context.schema)

    async def on_predictions(batch: Sequence[tuple[PredictionLogged, Envelope]]) -> None:
        async with context.pool.acquire() as conn, conn.transaction():
            fresh = await claim_events(conn, context.schema, INBOX, batch)
            await store.insert_predictions(
                conn, [record_of(logged, envelope.occurred_at) for logged, envelope in fresh]
            )

    context.bus.consumer(PREDICTIONS, group=GROUP).handle_batch(PredictionLogged, on_predictions)


def prune_predictions(
    retention: timedelta,
) -> Callable[[ServiceContext], Coroutine[Any, Any, None]]:
    """The pruning loop: delete predictions served more than ``retention`` ago."""

    async def run(context: ServiceContext) -> None:
        store = RegistryStore(context.schema)
        while True:
            pruned = await store.prune_predictions(context.pool, datetime.now(UTC) - retention)
            if pruned:
                log.info("predictions pruned", predictions=pruned, retention=str(retention))
            await asyncio.sleep(min(retention.total_seconds() / 2, PRUNE_EVERY_MAX))

    return run
