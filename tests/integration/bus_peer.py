"""Another process on the bus, for tests/integration/test_bus.py.

Publishes one ``StringValue`` event inside a span of its own and prints that
span's trace id, so the test can check that its consumer, in a different process,
handles the event in the same trace.

Usage: python bus_peer.py TOPIC KEY TEXT
"""

from __future__ import annotations

import asyncio
import sys

from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry import trace

from strata.core.bus import Bus
from strata.core.telemetry import configure_tracing, current_trace_id


async def main(topic: str, key: str, text: str) -> None:
    configure_tracing("bus-peer")
    async with Bus("bus-peer") as bus:
        with trace.get_tracer("bus-peer").start_as_current_span("peer-request"):
            await bus.publish(StringValue(value=text), topic=topic, key=key)
            print(current_trace_id(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
