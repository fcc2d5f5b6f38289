"""Following the registry: load what each served alias points at, and swap on AliasChanged.

The registry is the only way a model reaches the gateway. At start, and every
``reconcile_interval`` seconds, each served alias is read from the registry; an
``AliasChanged`` event makes the change immediate. A version is downloaded, its
sha256 checked against the registry's, loaded and warmed off the event loop (a
version with feature bindings also gets the plan of its features from the feature
store's catalog, :mod:`strata.gateway.catalog`), and only then swapped in. Anything
that fails (the registry or the feature store unreachable, a file whose sha256 does
not match, a model ONNX Runtime refuses, a binding naming no such feature) is logged
with the reason and the previous version keeps serving.

Each replica reads the events in a consumer group of its own, since every replica
must see every change. The group starts at the earliest offset, not the latest:
with "latest", a change made between the first read of the registry and the
group's first fetch (partition assignment is asynchronous) would be lost until the
next reconcile. Replaying is cheap and harmless instead: events older than the
follower's start (less a margin for clock skew) are skipped without a call, since
the first reconcile, made after that start, read the registry after them; the
rest make the alias be read again, and a version already served is not reloaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import structlog

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.bus import Bus
from strata.core.rpc.client import channel
from strata.core.runtime import ServiceContext
from strata.core.topics import MODELS_EVENTS
from strata.gateway.catalog import FEATURES, CatalogUnavailableError, ViewCatalog
from strata.gateway.models import LoadedModel, Served, load
from strata.gateway.settings import GatewaySettings

log = structlog.stdlib.get_logger(__name__)

REGISTRY = "strata.registry.v1.ModelRegistryService"

CLOCK_SKEW = timedelta(minutes=5)
"""How far the registry's clock may be ahead of ours: replayed events younger than
the follower's start less this are read again, not skipped."""


class IntegrityError(Exception):
    """A downloaded model file is not the one the registry recorded."""


def check_sha256(data: bytes, expected: str) -> None:
    """Raise IntegrityError unless ``data`` hashes to ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(
            f"the file downloaded has sha256 {actual}, the registry recorded {expected}"
        )


def predates(envelope: Envelope, start: datetime) -> bool:
    """Whether the event happened before ``start`` (less :data:`CLOCK_SKEW`): the first
    reconcile, made after ``start``, already saw its change."""
    return envelope.occurred_at.ToDatetime(tzinfo=UTC) < start - CLOCK_SKEW


def consumer_group(host: str | None = None) -> str:
    """A consumer group for this replica alone: every replica must see every change."""
    return f"gateway-{host or socket.gethostname()}-{uuid.uuid4().hex[:12]}"


class Follower:
    """Keeps ``served`` on the versions the registry's aliases point at."""

    def __init__(
        self,
        served: Served,
        registry: ModelRegistryServiceStub,
        start: datetime,
        catalog: ViewCatalog,
    ) -> None:
        self._served = served
        self._registry = registry
        self._catalog = catalog
        self._start = start
        self._lock = asyncio.Lock()
        """One load at a time: an event and a reconcile never swap one alias out of order."""

    async def reconcile(self) -> None:
        """Read every served alias from the registry and load what moved."""
        for name, aliases in self._served.wanted.items():
            for alias in aliases:
                await self._follow(name, alias, pb.GetVersionRequest(model_name=name, alias=alias))

    async def on_alias_changed(self, event: pb.AliasChanged, envelope: Envelope) -> None:
        if event.alias not in self._served.wanted.get(event.model_name, ()):
            return
        if predates(envelope, self._start):
            return
        # The alias is read again rather than trusting event.version: an event older
        # than the last reconcile must not bring back the version (or deletion) it names.
        request = pb.GetVersionRequest(model_name=event.model_name, alias=event.alias)
        await self._follow(event.model_name, event.alias, request)

    async def _follow(self, name: str, alias: str, request: pb.GetVersionRequest) -> None:
        async with self._lock:
            try:
                model = await self._fetch(name, alias, request)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("alias not set: not served", model=name, alias=alias)
                    self._served.drop(name, alias)
                    return
                log.warning(
                    "cannot read the registry; the previous version keeps serving",
                    model=name,
                    alias=alias,
                    code=error.code().name,
                    reason=error.details(),
                )
                return
            except CatalogUnavailableError as error:
                log.warning(
                    "cannot read the feature views; the previous version keeps serving",
                    model=name,
                    alias=alias,
                    reason=str(error),
                )
                return
            except (IntegrityError, ValueError) as error:
                log.error(
                    "refused a version; the previous one keeps serving",
                    model=name,
                    alias=alias,
                    reason=str(error),
                )
                return
            if model is not None:
                self._served.swap(alias, model)
                log.info("serving", model=name, alias=alias, version=model.version)

    async def _fetch(
        self, name: str, alias: str, request: pb.GetVersionRequest
    ) -> LoadedModel | None:
        """The version ``request`` names, loaded and warmed; None if ``alias`` serves it already."""
        version: pb.ModelVersion = (await self._registry.GetVersion(request)).model_version
        current = self._served.current(name, alias)
        if current is not None and current.version == version.version:
            return None
        for loaded in self._served.versions(name):
            if loaded.version == version.version:
                return loaded
        onnx = next((a for a in version.artifacts if a.kind == pb.ARTIFACT_KIND_ONNX_MODEL), None)
        if onnx is None:
            raise ValueError(f"version {version.version} has no ONNX model artifact")
        data = await self._download(name, onnx.sha256)
        check_sha256(data, onnx.sha256)
        model = await asyncio.to_thread(
            load, name, version.version, onnx.sha256, data, threads=self._served.model_threads
        )
        features = await self._catalog.plan(version, model.inputs)
        return dataclasses.replace(model, features=features)

    async def _download(self, name: str, sha256: str) -> bytes:
        parts: list[bytes] = []
        request = pb.DownloadArtifactRequest(model_name=name, sha256=sha256)
        async for part in self._registry.DownloadArtifact(request):
            if part.HasField("chunk"):
                parts.append(part.chunk)
        return b"".join(parts)


def follow_aliases(
    served: Served, settings: GatewaySettings
) -> Callable[[ServiceContext], Awaitable[None]]:
    """The background task: load the aliases, then follow their events and reconcile."""

    async def run(context: ServiceContext) -> None:
        start = datetime.now(UTC)
        runtime = context.settings
        registry = channel(
            settings.registry, runtime.auth, mode=runtime.mode.mode, idempotent=(REGISTRY,)
        )
        bus = Bus(
            context.name,
            kafka=runtime.kafka,
            settings=runtime.bus.model_copy(update={"auto_offset_reset": "earliest"}),
            metrics=context.metrics,
        )
        streamer = channel(
            settings.streamer, runtime.auth, mode=runtime.mode.mode, idempotent=(FEATURES,)
        )
        async with registry, streamer:
            catalog = ViewCatalog(FeatureServiceStub(streamer))
            follower = Follower(served, ModelRegistryServiceStub(registry), start, catalog)
            bus.consumer(MODELS_EVENTS, group=consumer_group()).handle(
                pb.AliasChanged, follower.on_alias_changed
            )
            await follower.reconcile()  # first: a Kafka outage must not delay serving
            async with bus:
                while True:
                    await asyncio.sleep(settings.reconcile_interval)
                    await follower.reconcile()

    return run
