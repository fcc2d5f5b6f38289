"""Channels to Strata services: bearer token, TLS, default deadline, keepalive, safe retries.

The token is attached by an interceptor rather than call credentials, because
grpc only sends call credentials over TLS and the local stack runs in plain text.
Outside development a channel refuses to send the public local-stack token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

import grpc

from strata.core.rpc.auth import client_token
from strata.core.settings import AuthSettings, Mode
from strata.core.telemetry import client_interceptors

DEFAULT_DEADLINE = 10.0
"""Seconds a unary call may take when the caller sets no timeout."""

CLIENT_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.enable_retries", 1),
)

_RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def channel(
    target: str,
    auth: AuthSettings,
    *,
    mode: Mode = "production",
    credentials: grpc.ChannelCredentials | None = None,
    deadline: float = DEFAULT_DEADLINE,
    idempotent: Collection[str] = (),
) -> grpc.aio.Channel:
    """A channel to ``target`` (``host:port``) that sends ``auth.client_token``.

    ``credentials`` (:func:`strata.core.rpc.tls.channel_credentials`) make it TLS;
    None is plain text. Outside ``mode="development"`` an unset client token is a
    :class:`~strata.core.errors.ConfigError` naming ``STRATA_AUTH_CLIENT_TOKEN``.
    Unary calls without a timeout get ``deadline`` seconds; streams get none, since
    they live as long as the conversation does. Calls named in ``idempotent``
    (``pkg.Service`` or ``pkg.Service/Method``) are retried on UNAVAILABLE.
    """
    if deadline <= 0:
        raise ValueError(f"deadline must be positive, got {deadline!r}")
    options = [*CLIENT_OPTIONS, ("grpc.service_config", retry_config(idempotent))]
    defaults = _CallDefaults(f"Bearer {client_token(auth, mode)}", deadline)
    interceptors = [*client_interceptors(), *defaults.interceptors()]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def retry_config(idempotent: Collection[str]) -> str:
    """The service config JSON retrying UNAVAILABLE on the ``idempotent`` methods only."""
    names = []
    for entry in idempotent:
        service, _, method = entry.partition("/")
        names.append({"service": service, "method": method} if method else {"service": service})
    if not names:
        return json.dumps({})
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": _RETRY_POLICY}]})


class _CallDefaults:
    """Adds the authorization metadata to every call, and the default deadline to unary ones."""

    def __init__(self, authorization: str, deadline: float) -> None:
        self._authorization = authorization
        self.deadline = deadline

    def details(self, details: Any, timeout: float | None) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if "authorization" not in metadata:
            metadata["authorization"] = self._authorization
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """One interceptor per call kind: grpc files an interceptor under its first kind only."""
        return [_UnaryUnary(self), _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        timeout = self._defaults.deadline if details.timeout is None else details.timeout
        return await continuation(self._defaults.details(details, timeout), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._defaults.details(details, details.timeout), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._defaults.details(details, details.timeout), requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._defaults.details(details, details.timeout), requests)
