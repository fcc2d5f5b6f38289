"""The server's edge: every call is admitted (or refused), observed and its errors mapped.

Each method's handler is wrapped once, the first time a call reaches it, in the
server's *layers* (tracing, metrics: the first given is the outermost) and, inside
them, the gate: it asks the :class:`~strata.core.rpc.auth.Gatekeeper` who the caller
is, runs the real handler with that principal set, and turns domain errors into
statuses with :func:`~strata.core.rpc.status.abort`. Servicers therefore only
convert the request, call the domain and convert back.

Why not ``grpc.aio`` server interceptors: an interceptor is a coroutine run on
every call, and one that wraps the handler rebuilds it on every call; with three of
them (tracing, metrics, the gate) that was about a third of a small call's cost on
the server. Wrapped once, a call pays only for what the layers do.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import structlog

from strata.core.errors import StrataError
from strata.core.rpc.auth import Gatekeeper, act_as, is_open
from strata.core.rpc.status import abort

log = structlog.stdlib.get_logger(__name__)

Behaviour = Callable[[Any, Any], Any]
"""A handler function: (request or request iterator, context) -> response, stream or awaitable."""

Layer = Callable[[str, Behaviour], Behaviour]
"""Wraps the behaviour of one method (``/pkg.Service/Method``) in something every call
does, e.g. a span or a timer; the behaviour it gets and gives is a coroutine function."""


class Edge:
    """What every call of a Strata service passes through: ``layers``, then the gate."""

    def __init__(self, gatekeeper: Gatekeeper, layers: Sequence[Layer] = ()) -> None:
        self._gatekeeper = gatekeeper
        self._layers = tuple(reversed(layers))

    def around(self, handler: grpc.GenericRpcHandler) -> grpc.GenericRpcHandler:
        """``handler``'s methods behind the edge."""
        return _Guarded(handler, self._wrap)

    def unknown_methods(self) -> grpc.GenericRpcHandler:
        """A handler of last resort: a call of a method no service has is admitted like any
        other before it is UNIMPLEMENTED, so callers who may not call learn nothing about
        which methods exist. Health and reflection are left to grpc."""
        return _Unknown(self._wrap)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def wrap(behaviour: Behaviour) -> Behaviour:
            wrapped = _gated(self._gatekeeper, method, behaviour)
            for layer in self._layers:
                wrapped = layer(method, wrapped)
            return wrapped

        return rebuilt(handler, wrap)


class _Guarded(grpc.GenericRpcHandler):  # type: ignore[misc]
    """``inner``'s handlers, each wrapped once and then reused call after call."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler],
    ) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None:
            return None
        # Keyed by identity, the handler kept beside its wrapping so the id is never reused;
        # an inner handler that swaps its handlers (a service opened late) adds a few entries.
        known = self._wrapped.get(id(handler))
        if known is None:
            known = (handler, self._wrap(details.method, handler))
            self._wrapped[id(handler)] = known
        return known[1]


class _Unknown(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self._wrap = wrap

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if is_open(details.method):
            return None
        return self._wrap(details.method, grpc.unary_unary_rpc_method_handler(_unimplemented))


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> None:
    raise NotImplementedError


def rebuilt(handler: Any, wrap: Callable[[Behaviour], Behaviour]) -> Any:
    """A handler of the same kind (unary/stream) and codecs whose behaviour is wrapped.

    ``wrap`` always gets a coroutine function: a response stream is drained into
    ``context.write`` first, so one wrapper fits every kind of call.
    """
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **codecs)
    streaming = _streaming(wrap)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codecs)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codecs)


def _gated(gatekeeper: Gatekeeper, method: str, behaviour: Behaviour) -> Behaviour:
    """Admit the caller, run ``behaviour`` as them, and map what it raises to a status."""

    async def call(request: Any, context: Any) -> Any:
        try:
            principal = gatekeeper.admit(method, context.invocation_metadata() or ())
        except StrataError as exc:
            log.info("call refused", method=method, reason=str(exc))
            await abort(context, exc)
            return None
        act_as(principal)
        try:
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result
        except StrataError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:  # the handler ended the call with its own status
            raise
        except NotImplementedError:  # an rpc the generated base class leaves unimplemented
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
        except Exception:
            log.exception("handler failed", method=method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
        return None

    return call


def _streaming(wrap: Callable[[Behaviour], Behaviour]) -> Callable[[Behaviour], Behaviour]:
    """Adapt ``wrap`` to response streams, which a handler yields or writes with context.write."""

    def adapt(behaviour: Behaviour) -> Behaviour:
        async def drain(request: Any, context: Any) -> None:
            result = behaviour(request, context)
            if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                async for response in result:
                    await context.write(response)
            elif inspect.isawaitable(result):
                await result
            else:  # a plain iterator from a sync servicer
                for response in result:
                    await context.write(response)

        written = wrap(drain)

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            # An async generator, as grpc expects of a response-streaming handler; the
            # responses go out by context.write.
            await written(request, context)
            return
            yield

        return stream

    return adapt
