"""Where events enter the streamer: ``strata.data.arrived``, consumer group "streamer".

Raw events of topic-sourced views do not come through here (they are not Strata
envelopes; :mod:`strata.streamer.streams` reads them). A DataArrived of a dataset
that some current view reads as its source is recorded with its file and checksum
(:mod:`strata.streamer.domain.datasets`), once per event id (the inbox), so a
training set over the view reads it; one that does not fit (not Parquet, no blob
key, no sha256 checksum) is dead-lettered with the reason. Announcements of
datasets no current view reads are skipped (most of them are the streamer's own
landings of topics); a view applied later reads the partitions announced after it.
"""

from __future__ import annotations

import structlog

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.data.v1.data_pb2 import DataArrived
from strata.core.runtime import ServiceContext
from strata.core.topics import DATA_ARRIVED
from strata.streamer.domain.datasets import partition_of
from strata.streamer.store import DatasetStore, ViewStore

log = structlog.stdlib.get_logger(__name__)

GROUP = "streamer"


def register_data_arrivals(context: ServiceContext) -> None:
    """Record the announced partitions of the datasets that views read."""
    views = ViewStore(context.pool, context.schema, context.outbox)
    datasets = DatasetStore(context.pool, context.schema)
    arrivals = context.bus.consumer(DATA_ARRIVED, group=GROUP)

    @arrivals.on(DataArrived)
    async def on_arrived(event: DataArrived, envelope: Envelope) -> None:
        read = {
            stored.spec.source.dataset
            for stored in await views.all_current()
            if stored.spec.source.WhichOneof("kind") == "dataset"
        }
        if event.dataset not in read:
            return
        partition = partition_of(event)
        if await datasets.record(partition, event.row_count, event.size_bytes, envelope.event_id):
            log.info("dataset partition recorded", dataset=event.dataset, partition=event.partition)
