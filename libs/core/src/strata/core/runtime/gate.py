"""gRPC services whose servicers exist only once the service's context is built.

A grpc.aio server takes its handlers before it starts, but a servicer needs the
pool and the bus, which exist only after the dependencies answer, and health
must be served before that. So each service is registered as a
:class:`LateService`: until :meth:`LateService.open` hands it the servicer, every
method answers UNAVAILABLE (never a half-built object); afterwards calls go to
the servicer's handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc

from strata.core.runtime.spec import AddServicer

NOT_READY = "the service is starting: its dependencies do not answer yet; retry shortly"


class _Recorder:
    """Stands in for a server to catch what a generated ``add_..._to_server`` registers."""

    def __init__(self) -> None:
        self.name = ""
        self.handlers: Mapping[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the handlers come through :meth:`add_registered_method_handlers`."""

    def add_registered_method_handlers(
        self, name: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.name, self.handlers = name, handlers


class _Placeholder:
    """A servicer whose every method is a placeholder: enough to learn names and kinds."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *_: None


def _record(add: AddServicer, servicer: object) -> _Recorder:
    recorder = _Recorder()
    add(servicer, recorder)
    if not recorder.name:
        raise TypeError(
            f"{getattr(add, '__name__', add)!r} registered no service: "
            "pass a generated add_<Name>Servicer_to_server function"
        )
    return recorder


class LateService(grpc.GenericRpcHandler):  # type: ignore[misc]
    """One gRPC service: UNAVAILABLE until opened, then its servicer's handlers."""

    def __init__(self, add: AddServicer) -> None:
        shape = _record(add, _Placeholder())
        self.name = shape.name
        self._add = add
        self._prefix = f"/{shape.name}/"
        self._waiting = {method: _unavailable(h) for method, h in shape.handlers.items()}
        self._handlers: Mapping[str, grpc.RpcMethodHandler] | None = None

    def open(self, servicer: object) -> None:
        """Serve ``servicer`` from now on."""
        self._handlers = _record(self._add, servicer).handlers

    def close(self) -> None:
        """Back to UNAVAILABLE (shutdown): calls no longer reach a closing context."""
        self._handlers = None

    def add_to(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((self,))

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        if not method.startswith(self._prefix):
            return None
        name = method[len(self._prefix) :]
        handlers = self._handlers if self._handlers is not None else self._waiting
        return handlers.get(name)


def _unavailable(shape: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind and codecs as ``shape`` that answers UNAVAILABLE."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READY)

    codecs = {
        "request_deserializer": shape.request_deserializer,
        "response_serializer": shape.response_serializer,
    }
    if shape.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
    if shape.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    if shape.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
