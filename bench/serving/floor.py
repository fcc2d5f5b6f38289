"""What a Python gRPC call costs here before any work: ``python -m bench.serving.floor``.

The reference for the serving aims: a server in a process of its own answers the
standard health service's ``Check`` (an empty request, a one-field reply), and one
blocking client in this process calls it back to back, as the benchmarks' single
clients do. Three servers, alternating over the rounds so a noisy neighbour hurts
all alike:

- ``threads``: ``grpc.server`` on a thread pool, the handler returns at once;
- ``aio``: ``grpc.aio.server``, the handler returns at once;
- ``aio+redis``: ``grpc.aio.server``, the handler first awaits one Redis ``GET``
  through ``redis.asyncio`` (the local stack's Redis), as ``Predict`` and
  ``GetOnlineFeatures`` awaited their read before they used the multiplexed
  connection;
- ``aio+multiplexed``: the same ``GET`` through
  :class:`~strata.core.redis_multiplexed.MultiplexedConnection`, as they read now.

Prints p50 / p90 / p99 in ms of each round; nothing is written. The Redis server
comes from the local stack's settings (``make stack-up``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.serving.ours import free_port
from strata.core.redis import client as redis_client
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.core.settings import RedisSettings, load

SERVERS = ("threads", "aio", "aio+redis", "aio+multiplexed")
BOUND = 30.0
"""Bound on waiting for a server to answer: a guard against hanging."""


class _Answering(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def Check(  # noqa: N802 (the generated method's name)
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class _AnsweringAsync(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, kind: str) -> None:
        settings = load(RedisSettings)
        self._redis = redis_client(settings) if kind == "aio+redis" else None
        self._multiplexed = MultiplexedConnection(settings) if kind == "aio+multiplexed" else None

    async def Check(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        if self._redis is not None:
            await self._redis.get("bench:floor")
        if self._multiplexed is not None:
            await self._multiplexed.execute(("GET", "bench:floor"))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def serve(kind: str, port: int) -> None:
    """The server process: ``kind`` of :data:`SERVERS` on ``port`` until killed."""
    if kind == "threads":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(_Answering(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def run() -> None:
        server = grpc.aio.server()
        servicer = _AnsweringAsync(kind)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def one_round(kind: str, calls: int, warmup: int) -> list[float]:
    """Seconds of each of ``calls`` sequential calls to a fresh ``kind`` server."""
    port = free_port()
    command = [sys.executable, "-m", "bench.serving.floor", "--serve", kind, str(port)]
    server = subprocess.Popen(command)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=BOUND)
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest()
            took = []
            for _ in range(calls + warmup):
                started = time.perf_counter()
                check(request, timeout=BOUND)
                took.append(time.perf_counter() - started)
            return took[warmup:]
    finally:
        server.terminate()
        server.wait()


def _line(kind: str, took: list[float]) -> str:
    cuts = [statistics.quantiles(took, n=100)[i] * 1e3 for i in (49, 89, 98)]
    return f"{kind}: p50 / p90 / p99 ms " + " / ".join(f"{ms:.3f}" for ms in cuts)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving.floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    for _ in range(args.rounds):
        for kind in SERVERS:
            print(_line(kind, one_round(kind, args.calls, warmup=500)), flush=True)


if __name__ == "__main__":
    main()
