"""A gRPC server as every Strata service runs it: auth, error mapping, health, reflection, TLS.

Health starts NOT_SERVING; the process runner (:mod:`strata.core.runtime`) turns it
to SERVING once the service's dependencies answer, and back on shutdown, before
the server stops accepting calls. Each :class:`Service`'s role list is checked
against its protobuf descriptor when it is declared, so a misspelled method name
stops the start instead of leaving the real method silently admin-only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc
import structlog
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection as grpc_reflection

from strata.core.errors import ConfigError
from strata.core.rpc.auth import AccessPolicy, Gatekeeper, TokenBook
from strata.core.rpc.edge import Edge, Layer
from strata.core.settings import DEV_ADMIN_TOKEN, AuthSettings

log = structlog.stdlib.get_logger(__name__)

SERVER_OPTIONS = (
    ("grpc.so_reuseport", 0),  # a port taken by another process is an error, not shared
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class Service:
    """One gRPC service to serve, and who may call it.

    ``name`` is the full protobuf name (``strata.registry.v1.ModelRegistryService``);
    ``add`` is the generated ``add_<Name>Servicer_to_server`` bound to a servicer,
    e.g. ``partial(add_ModelRegistryServiceServicer_to_server, RegistryServicer(store))``.
    ``roles`` maps a method name (``"GetModel"``) or ``"*"`` (every method) to the
    roles that may call it; ``admin`` may call anything. An unknown service or
    method raises :class:`~strata.core.errors.ConfigError` naming both.
    """

    name: str
    add: Callable[[grpc.aio.Server], None]
    roles: Mapping[str, Collection[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_roles(self.name, self.roles)


class RpcServer:
    """A ``grpc.aio`` server with the Strata edge and health; create it in a loop."""

    def __init__(
        self,
        services: Sequence[Service],
        auth: AuthSettings,
        layers: Sequence[Layer] = (),
        *,
        credentials: grpc.ServerCredentials | None = None,
        reflection: bool = False,
    ) -> None:
        """``layers`` wrap every call of ``services`` outside the gate that admits it (e.g.
        tracing and metrics, which must see refusals too); the first is the outermost.

        ``credentials`` (:func:`strata.core.rpc.tls.server_credentials`) serve TLS;
        None serves plain text. ``reflection`` lists every method to any caller, so
        it is off unless asked for (:attr:`ModeSettings.serves_reflection`).
        """
        if not auth.enabled:
            log.warning("auth is disabled: every gRPC caller is admin; local experiments only")
        elif DEV_ADMIN_TOKEN in auth.tokens:
            log.warning(
                "the public local-stack token is accepted as admin; "
                "set STRATA_AUTH_TOKENS anywhere but on a development machine"
            )
        book = TokenBook.from_settings(auth) if auth.enabled else None
        edge = Edge(Gatekeeper(book, access_policy(services)), layers)
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        self._credentials = credentials
        self._names = [service.name for service in services]
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if reflection:
            listed = [*self._names, _HEALTH, grpc_reflection.SERVICE_NAME]
            grpc_reflection.enable_server_reflection(listed, self._server)
        behind_edge = _BehindEdge(self._server, edge)
        for service in services:
            service.add(cast(grpc.aio.Server, behind_edge))
        self._server.add_generic_rpc_handlers((edge.unknown_methods(),))

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 picks a free port), NOT_SERVING; returns the port bound."""
        await self.set_serving(False)
        address = f"{host}:{port}"
        try:
            if self._credentials is None:
                bound: int = self._server.add_insecure_port(address)
            else:
                bound = self._server.add_secure_port(address, self._credentials)
        except RuntimeError as exc:  # grpc says only "Failed to bind"
            raise OSError(
                f"cannot listen on {host}:{port}: in use, or not an address of this host"
            ) from exc
        await self._server.start()
        return bound

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server ("") and each of its services."""
        status = _SERVING if serving else _NOT_SERVING
        for name in ["", *self._names]:
            await self._health.set(name, status)

    async def set_component(self, name: str, serving: bool) -> None:
        """Report one part of the service under its own health name (``name``), leaving
        the server's and its services' health as they are."""
        await self._health.set(name, _SERVING if serving else _NOT_SERVING)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING for good, refuse new calls, give in-flight ones ``grace`` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)


class _BehindEdge:
    """Stands in for the server while a service registers: its handlers go in behind the edge.

    Generated ``add_<Name>Servicer_to_server`` functions register each service twice:
    as a generic handler and as registered method handlers. Only the generic one is
    kept (wrapped): registered handlers would reach the servicer past the edge.
    """

    def __init__(self, server: grpc.aio.Server, edge: Edge) -> None:
        self._server = server
        self._edge = edge

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(self._edge.around(h) for h in handlers))

    def add_registered_method_handlers(self, name: str, handlers: object) -> None:
        """Ignored: the same methods came (and stay) behind the edge as a generic handler."""


def access_policy(services: Sequence[Service]) -> AccessPolicy:
    """The policy of all ``services``: ``/pkg.Service/Method`` (or ``/*``) -> roles."""
    rules: dict[str, Collection[str]] = {}
    for service in services:
        for method, roles in service.roles.items():
            rules[f"/{service.name}/{method}"] = roles
    return AccessPolicy(rules)


def check_roles(service: str, roles: Mapping[str, Collection[str]]) -> None:
    """Every method named in ``roles`` must exist in ``service``'s protobuf descriptor.

    :class:`Service` calls it when declared; a runtime that builds its services late
    calls it earlier, among the other start-up checks, so the refusal is one line.
    """
    try:
        descriptor = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        raise ConfigError(
            f"gRPC service {service!r} is unknown: no generated module declares it "
            "(give the full name, e.g. 'strata.registry.v1.ModelRegistryService')"
        ) from None
    unknown = sorted(set(roles) - {"*"} - set(descriptor.methods_by_name))
    if unknown:
        known = ", ".join(sorted(descriptor.methods_by_name))
        raise ConfigError(
            f"roles of gRPC service {service!r} name methods it does not have: "
            f"{', '.join(unknown)}; its methods are: {known}"
        )
