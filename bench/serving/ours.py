"""Strata's side: a registry and a gateway as operators run them, and the model logged.

Both run as ``python -m strata.registry`` / ``python -m strata.gateway`` processes
on free ports, on the local stack the settings name, in development mode (the
local stack's public token). The model reaches the gateway the only way Strata
has: ``log_model`` converts it to ONNX and registers it, an alias names it, and the
gateway loads what the alias points at; a promotion reaches it as an
``AliasChanged`` event through Kafka.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.serving.client import BOUND, Target
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.rpc.auth import client_token
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, load
from strata.sdk.models import log_model

CHAMPION = "champion"
DEVELOPMENT = {"STRATA_MODE": "development"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bearer() -> tuple[tuple[str, str], ...]:
    """The ``authorization`` header of the local stack's public token."""
    token = client_token(load(AuthSettings), "development")
    return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def service(name: str, folder: Path, **env: str) -> AsyncIterator[str]:
    """``python -m strata.<name>`` on free ports, SERVING for the body; SIGTERM after."""
    port = free_port()
    log = folder / f"{name}.log"
    environment = {
        **os.environ,
        **DEVELOPMENT,
        f"STRATA_SERVICE_{name.upper()}_PORT": str(port),
        f"STRATA_SERVICE_{name.upper()}_METRICS_PORT": str(free_port()),
        **env,
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"strata.{name}", env=environment, stderr=sink
        )
    address = f"127.0.0.1:{port}"
    try:
        async with asyncio.timeout(BOUND * 2):
            while not await _serving(address):
                if process.returncode is not None:
                    raise RuntimeError(f"strata.{name} exited with {process.returncode}: see {log}")
                await asyncio.sleep(0.2)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as chan:
        try:
            reply = await health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass(frozen=True)
class Logged:
    """The model as the registry holds it: its name, and the ONNX bytes of version 1."""

    name: str
    input_name: str
    onnx: bytes


@asynccontextmanager
async def registry(address: str) -> AsyncIterator[ModelRegistryServiceStub]:
    async with channel(address, load(AuthSettings), mode="development") as chan:
        yield ModelRegistryServiceStub(chan)


async def log_versions(address: str, first: Any, second: Any, sample: Any) -> Logged:
    """Log both versions of a new model through ``log_model``; the first one champion.

    Returns the first version's ONNX file as downloaded from the registry (its
    sha256 checked), the bytes the gateway serves.
    """
    name = f"bench-serving-{uuid.uuid4().hex[:10]}"
    async with registry(address) as stub:
        v1 = await log_model(first, name=name, sample=sample, registry=stub)
        await log_model(second, name=name, sample=sample, registry=stub)
        await stub.SetAlias(pb.SetAliasRequest(model_name=name, alias=CHAMPION, version=1))
        artifact = next(a for a in v1.artifacts if a.kind == pb.ARTIFACT_KIND_ONNX_MODEL)
        chunks = [
            part.chunk
            async for part in stub.DownloadArtifact(
                pb.DownloadArtifactRequest(model_name=name, sha256=artifact.sha256)
            )
            if part.HasField("chunk")
        ]
    onnx = b"".join(chunks)
    if hashlib.sha256(onnx).hexdigest() != artifact.sha256:
        raise RuntimeError(f"the registry's copy of {name} v1 does not match its sha256")
    return Logged(name, v1.signature.inputs[0].name, onnx)


async def log_predict_model(
    address: str, model: Any, sample: Any, view: str, features: Sequence[str]
) -> str:
    """Log ``model`` as the champion of a new model whose input is bound to ``view``'s
    ``features``, in order; returns its name."""
    name = f"bench-predict-{uuid.uuid4().hex[:10]}"
    binding = pb.FeatureBinding(input="X", features=[f"{view}:{f}" for f in features])
    async with registry(address) as stub:
        await log_model(model, name=name, sample=sample, registry=stub, feature_bindings=[binding])
        await stub.SetAlias(pb.SetAliasRequest(model_name=name, alias=CHAMPION, version=1))
    return name


async def promote(address: str, name: str, version: int) -> None:
    async with registry(address) as stub:
        await stub.SetAlias(
            pb.SetAliasRequest(
                model_name=name, alias=CHAMPION, version=version, reason="bench.serving swap"
            )
        )


@asynccontextmanager
async def gateway(
    folder: Path, registry_address: str, logged: Logged, also: str = "", streamer: str = ""
) -> AsyncIterator[Target]:
    """A gateway serving the model's champion (and the champion of model ``also``, whose
    feature views it reads from ``streamer``); yields it as the shared client's target."""
    served = {logged.name: [CHAMPION], **({also: [CHAMPION]} if also else {})}
    env = {
        "STRATA_GATEWAY_MODELS": json.dumps(served),
        "STRATA_GATEWAY_REGISTRY": registry_address,
        "STRATA_GATEWAY_HTTP_PORT": "0",
        **({"STRATA_GATEWAY_STREAMER": streamer} if streamer else {}),
    }
    async with service("gateway", folder, **env) as address:
        yield Target(
            label="Strata gateway",
            address=address,
            model=logged.name,
            input_name=logged.input_name,
            metadata=bearer(),
        )
