"""How a ``strata`` command reaches a service, and says in one line when it cannot.

Every command group (workflow, features, models, nodes) dials a service the same
way — its address from ``STRATA_SERVICE_<NAME>_PORT``, the caller's token, TLS when
configured — and turns a failed call into a :class:`CommandError` whose message
names what to fix: the field a service refused, the thing not found, or the
service that is not reachable. The command line prints it and exits 1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection
from typing import TypeVar

import grpc

from strata.core.errors import StrataError
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.rpc.tls import channel_credentials
from strata.core.settings import AuthSettings, ModeSettings, ServiceSettings, TlsSettings, load

T = TypeVar("T")


class CommandError(Exception):
    """A failure to print as one line; the command exits 1."""


def service_channel(service: str, idempotent: Collection[str] = ()) -> grpc.aio.Channel:
    """A channel to ``service`` (``scheduler``, ``registry``, …) as the settings place it.

    Calls named in ``idempotent`` are retried while the service is unavailable.
    """
    services = load(ServiceSettings)
    target = f"{services.host}:{services.port_of(service)}"
    try:
        return channel(
            target,
            load(AuthSettings),
            mode=load(ModeSettings).mode,
            credentials=channel_credentials(load(TlsSettings)),
            idempotent=idempotent,
        )
    except StrataError as error:
        raise CommandError(str(error)) from None


async def answer(call: Awaitable[T], what: str, service: str, not_found: str = "") -> T:
    """The reply of ``call``, or a CommandError saying in one line what went wrong.

    ``what`` names the object of the call (``workflow 'etl'``); ``not_found`` replaces
    the service's own NOT_FOUND message when the command can say it better.
    """
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        code = error.code()
        violations = field_violations(error)
        if violations:
            fields = "; ".join(f"{field}: {problem}" for field, problem in violations.items())
            raise CommandError(f"{what} refused: {fields}") from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CommandError(f"the {service} is not reachable: {error.details()}") from None
        if code == grpc.StatusCode.NOT_FOUND:
            raise CommandError(not_found or f"{what}: {error.details()}") from None
        raise CommandError(f"{what}: {code.name}: {error.details()}") from None
