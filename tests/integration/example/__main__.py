"""A tiny service on the Strata runtime, for the runtime's own tests.

It has each part a real service has: a gRPC servicer (the Open Inference
Protocol's metadata calls, answering which partitions of a dataset it heard of),
an event handler (``DataArrived`` events, recorded in its own Postgres schema) and
a background loop (a heartbeat that fails while the file named by
``EXAMPLE_FAULT_FILE`` exists, or never ends when that file says ``ignore
cancellation``). Everything it uses comes from the context.

Run as ``python -m example <name> <grpc port> <metrics port>`` from this folder's parent.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from typing_extensions import override

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from strata.core.errors import NotFoundError
from strata.core.inbox import claim
from strata.core.runtime import (
    KAFKA,
    POSTGRES,
    REDIS,
    Endpoint,
    Loop,
    ServiceContext,
    ServiceSpec,
    run_service,
)
from strata.core.topics import DATA_ARRIVED


class Catalog(GRPCInferenceServiceServicer):
    """Answers from the partitions table of the service's schema."""

    def __init__(self, context: ServiceContext) -> None:
        self._pool = context.pool
        self._schema = context.schema

    @override
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: object
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=True)

    @override
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: object
    ) -> oip.ModelMetadataResponse:
        rows = await self._pool.fetch(
            f"SELECT partition FROM {self._schema}.partitions WHERE dataset = $1 ORDER BY 1",
            request.name,
        )
        if not rows:
            raise NotFoundError(f"dataset {request.name!r}")
        return oip.ModelMetadataResponse(name=request.name, versions=[r[0] for r in rows])

    @override
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: object
    ) -> oip.ModelInferResponse:
        """``model_name="hang"`` never answers and ignores cancellation: a stuck call.

        ``model_name="slow"`` takes a second, then asks Postgres: a call still in
        flight when the service is told to stop.
        """
        while request.model_name == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue
        if request.model_name == "slow":
            await asyncio.sleep(1.0)
            request.id = str(await self._pool.fetchval("SELECT 'answered after the pause'"))
        return oip.ModelInferResponse(model_name=request.model_name, id=request.id)


def record_arrivals(context: ServiceContext) -> None:
    events = context.bus.consumer(DATA_ARRIVED, group=context.name)

    @events.on(DataArrived)
    async def on_arrived(event: DataArrived, envelope: Envelope) -> None:
        async with context.pool.acquire() as conn, conn.transaction():
            if await claim(conn, context.schema, envelope.event_id, consumer="arrivals"):
                await conn.execute(
                    f"INSERT INTO {context.schema}.partitions VALUES ($1, $2)",
                    event.dataset,
                    event.partition,
                )


async def heartbeat(context: ServiceContext) -> None:
    """Fails while the fault file exists; when it says ``ignore cancellation``, the beat
    instead never ends, even when the service stops (work stuck at shutdown)."""
    fault = Path(os.environ.get("EXAMPLE_FAULT_FILE", "/nonexistent"))
    injected: bool = await asyncio.to_thread(fault.exists)
    if injected and await asyncio.to_thread(fault.read_text) == "ignore cancellation":
        await _beat_forever()
    if injected:
        raise RuntimeError(f"fault injected through {fault}")


async def _beat_forever() -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


def spec(name: str) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        requires=(POSTGRES, KAFKA),
        degrades=(REDIS,),
        migrations="example",
        outbox=True,
        endpoints=(Endpoint(add_GRPCInferenceServiceServicer_to_server, Catalog),),
        handlers=(record_arrivals,),
        loops=(Loop("heartbeat", heartbeat, every=0.2),),
    )


if __name__ == "__main__":
    name, port, metrics_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run_service(spec(name), port=port, metrics_port=metrics_port)
