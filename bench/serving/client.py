"""The one client both servers get: Open Inference Protocol v2 ``ModelInfer`` over gRPC.

It is the generated ``inference.GRPCInferenceService`` stub of ``strata.api``, on a
blocking channel for one client's sequential calls and on a ``grpc.aio`` channel
per client for concurrent ones; only the model's name and
input name differ between the servers (each names them in its metadata). Each call
sends one row of 8 float32 values (``fp32_contents``) and carries the same
``authorization`` header to both (MLServer ignores it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
from numpy.typing import NDArray

from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub

BOUND = 30.0
"""Deadline of one call, and bound on waiting for a server: a guard against hanging."""


@dataclass(frozen=True)
class Target:
    """One server under test: its address and the names of the model there."""

    label: str
    address: str
    model: str
    input_name: str
    metadata: tuple[tuple[str, str], ...]

    def request(self, row: NDArray[np.float32]) -> oip.ModelInferRequest:
        """A ModelInfer of one row."""
        return oip.ModelInferRequest(
            model_name=self.model,
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name=self.input_name,
                    datatype="FP32",
                    shape=[1, len(row)],
                    contents=oip.InferTensorContents(fp32_contents=row.tolist()),
                )
            ],
        )


@asynccontextmanager
async def stub(target: Target) -> AsyncIterator[GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(target.address) as chan:
        yield GRPCInferenceServiceStub(chan)


def first_output(reply: oip.ModelInferResponse) -> list[float]:
    """The first output's values, whatever numeric type the server chose."""
    contents = reply.outputs[0].contents
    values = contents.fp32_contents or contents.fp64_contents
    if values:
        return list(values)
    raw = reply.raw_output_contents[0]
    datatype = reply.outputs[0].datatype
    array = np.frombuffer(raw, dtype=np.float32 if datatype == "FP32" else np.float64)
    return [float(value) for value in array]


async def answers(target: Target, rows: NDArray[np.float32]) -> list[float]:
    """The server's prediction for each of ``rows``, one call each."""
    async with stub(target) as server:
        replies = [
            await server.ModelInfer(target.request(row), metadata=target.metadata, timeout=BOUND)
            for row in rows
        ]
    return [first_output(reply)[0] for reply in replies]


async def until_ready(target: Target) -> None:
    """Wait until the server says the model is ready (bounded)."""
    async with asyncio.timeout(BOUND), stub(target) as server:
        while True:
            try:
                reply = await server.ModelReady(
                    oip.ModelReadyRequest(name=target.model),
                    metadata=target.metadata,
                    timeout=2.0,
                )
                if reply.ready:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)


async def sequential(
    target: Target, rows: NDArray[np.float32], samples: int, warmup: int
) -> list[float]:
    """Seconds of each of ``samples`` calls made one after another by one client.

    The client is the stub on a blocking channel, as an application calls it from a
    request thread: a ``grpc.aio`` client adds about 0.1 ms of its own to every call
    here, which would hide the servers' difference in their latency.
    """
    requests = [target.request(rows[i % len(rows)]) for i in range(samples + warmup)]
    took = await asyncio.to_thread(_one_by_one, target, requests)
    return took[warmup:]


def _one_by_one(target: Target, requests: list[oip.ModelInferRequest]) -> list[float]:
    took = []
    with grpc.insecure_channel(target.address) as channel:
        infer = GRPCInferenceServiceStub(channel).ModelInfer
        for request in requests:
            started = time.perf_counter()
            infer(request, metadata=target.metadata, timeout=BOUND)
            took.append(time.perf_counter() - started)
    return took


@dataclass
class Calls:
    """What concurrent clients saw: every call's start, duration and answer."""

    started: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    """(start, status and details) of each failed call."""

    @property
    def count(self) -> int:
        return len(self.seconds) + len(self.failures)


async def concurrently(
    target: Target, rows: NDArray[np.float32], clients: int, stop: asyncio.Event, calls: Calls
) -> None:
    """``clients`` clients, each with its own channel, calling back to back until ``stop``;
    what they see goes into ``calls`` as it happens."""
    requests = [target.request(row) for row in rows]

    async def client(offset: int) -> None:
        async with stub(target) as server:
            i = offset
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    reply = await server.ModelInfer(
                        requests[i % len(requests)], metadata=target.metadata, timeout=BOUND
                    )
                except grpc.aio.AioRpcError as error:
                    calls.failures.append((started, f"{error.code().name}: {error.details()}"))
                else:
                    calls.seconds.append(time.perf_counter() - started)
                    calls.started.append(started)
                    calls.versions.append(reply.model_version)
                i += clients

    await asyncio.gather(*(client(n) for n in range(clients)))


@dataclass(frozen=True)
class Round:
    """One throughput round: calls answered, seconds taken, and this process's CPU seconds
    (the clients' own cost, which shares the machine with the server)."""

    answered: int
    seconds: float
    client_cpu: float


async def for_seconds(
    target: Target, rows: NDArray[np.float32], clients: int, seconds: float, warmup: float
) -> Round:
    """Calls answered by ``clients`` back-to-back clients in ``seconds``, after ``warmup`` s."""
    stop, calls = asyncio.Event(), Calls()
    work = asyncio.create_task(concurrently(target, rows, clients, stop, calls))
    await asyncio.sleep(warmup)
    before, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    stop.set()
    await work
    ended, used = time.perf_counter(), time.process_time() - cpu
    if calls.failures:
        raise RuntimeError(
            f"{target.label}: {len(calls.failures)} calls failed under load, "
            f"the first: {calls.failures[0][1]}"
        )
    answered = sum(1 for start in calls.started if start >= before)
    return Round(answered, ended - before, used)
