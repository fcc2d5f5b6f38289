"""The server's edge: every call is admitted (or refused) and its errors mapped, here only.

:class:`EdgeInterceptor` sits in front of every servicer. It asks the
:class:`~strata.core.rpc.auth.Gatekeeper` who the caller is, then runs the real
handler with that principal set and with domain errors turned into statuses by
:func:`~strata.core.rpc.status.abort`. Servicers therefore only convert the
request, call the domain and convert back.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from strata.core.errors import StrataError
from strata.core.rpc.auth import Gatekeeper, Principal, act_as, is_open
from strata.core.rpc.status import abort

log = structlog.stdlib.get_logger(__name__)

Behaviour = Callable[[Any, Any], Any]
"""A handler function: (request or request iterator, context) -> response, stream or awaitable."""


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Admits each call through the gatekeeper and maps its errors; health and reflection pass."""

    def __init__(self, gatekeeper: Gatekeeper) -> None:
        self._gatekeeper = gatekeeper

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if is_open(details.method):
            return handler
        try:
            principal = self._gatekeeper.admit(details.method, details.invocation_metadata or ())
        except StrataError as exc:
            log.info("call refused", method=details.method, reason=str(exc))
            # An unknown method is refused like a known one: callers who may not
            # call learn nothing about which methods exist.
            unknown = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
            return rebuilt(handler or unknown, _refusal(exc))
        if handler is None:
            return None
        return rebuilt(handler, lambda behaviour: _guarded(behaviour, principal, details.method))


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


def _guarded(behaviour: Behaviour, principal: Principal, method: str) -> Behaviour:
    async def call(request: Any, context: Any) -> Any:
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

    return call


def _refusal(error: StrataError) -> Callable[[Behaviour], Behaviour]:
    def wrap(_: Behaviour) -> Behaviour:
        async def refuse(request: Any, context: Any) -> None:
            await abort(context, error)

        return refuse

    return wrap


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
            # An async generator, so interceptors outside the edge (tracing) that
            # iterate a response stream can; the responses go out by context.write.
            await written(request, context)
            return
            yield

        return stream

    return adapt
