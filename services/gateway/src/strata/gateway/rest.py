"""The Open Inference Protocol v2 over REST (``/v2/...``), KServe's JSON and binary
tensors, and Strata's Predict (``POST /v1/models/{name}/predict``).

A thin edge like the gRPC servicers: it converts the body (:mod:`rest_codec`), calls
the same data plane functions (:func:`api.infer`, :func:`api.model_metadata`, the
:class:`Predictor`'s ``predict``) and converts back. Errors become an HTTP status
and ``{"error": "..."}`` in one place, :func:`_answer_errors`. Bearer tokens are
checked by the runtime's own :class:`Gatekeeper` with the roles the gRPC services
list, each route standing for its gRPC method, so a token works (or not) the same
way on both. The health routes are open, like gRPC health: probes carry no token.

Predict's path is not KServe's v1 ``/v1/models/{name}:predict``: that protocol's body
is ``{"instances": [...]}`` of tensors, which a v1 client would send here in vain;
Predict takes entity keys and request values, so it has a path of its own under
``/v1/models/{name}``, the alias or version in the body as in ``PredictRequest``.

aiohttp's server runs inside the service's event loop as a supervised loop: a
failure to listen shows in the service's health, and it is restarted.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.inference import grpc_service_pb2 as oip
from strata.core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StrataError,
    UnauthenticatedError,
    UnavailableError,
)
from strata.core.rpc.auth import AccessPolicy, Gatekeeper, TokenBook, act_as
from strata.core.runtime.context import ServiceContext
from strata.core.settings import AuthSettings, TlsSettings
from strata.gateway.api import ROLES, SERVER_NAME, SERVER_VERSION, infer, model_metadata
from strata.gateway.models import Served
from strata.gateway.predict import Predictor
from strata.gateway.rest_codec import (
    JSON,
    decode_infer,
    decode_predict,
    encode_infer,
    encode_predict,
)
from strata.gateway.settings import GatewaySettings

log = structlog.stdlib.get_logger(__name__)

SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PREDICTION_SERVICE = gpb.DESCRIPTOR.services_by_name["PredictionService"].full_name
PREDICT = f"/{PREDICTION_SERVICE}/Predict"
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_BODY = 64 * 1024 * 1024
"""Largest request body accepted, in bytes (aiohttp's default, 1 MiB, is small for tensors)."""

_STATUS: tuple[tuple[type[StrataError], int], ...] = (
    (InvalidArgumentError, 400),
    (FailedPreconditionError, 400),
    (UnauthenticatedError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (UnavailableError, 503),
)
"""strata.core.errors -> HTTP status, as strata.core.rpc.status maps them to gRPC codes."""

POLICY = AccessPolicy(
    {
        f"/{service}/{method}": roles
        for service in (SERVICE, PREDICTION_SERVICE)
        for method, roles in ROLES.items()
    }
)
"""Who may call each route: the roles of the gRPC method it stands for (both gRPC
services are registered with ``ROLES``)."""

_OPEN = ""
"""The method name of routes served without a token (health)."""
_UNLISTED = "/-/-"
"""The method of a route missing from the method list: admin only, so it fails closed."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Predict = Callable[[gpb.PredictRequest, float], Awaitable[gpb.PredictResponse]]
""":meth:`Predictor.predict`: a request and the ``time.perf_counter()`` of its arrival."""


def rest_app(served: Served, predict: Predict, gatekeeper: Gatekeeper) -> web.Application:
    """The ``/v2`` routes on ``served`` and Predict's on ``predict``; every route but
    health passes ``gatekeeper``."""

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        # OIP: 200 means ready, a 4xx means not.
        is_ready = served.ready()
        return web.json_response({"ready": is_ready}, status=200 if is_ready else 400)

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    async def metadata(request: web.Request) -> web.Response:
        name, version = _model(request)
        reply = model_metadata(served, name, version)
        return web.json_response(
            {
                "name": reply.name,
                "versions": list(reply.versions),
                "platform": reply.platform,
                "inputs": [_tensor(t) for t in reply.inputs],
                "outputs": [_tensor(t) for t in reply.outputs],
            }
        )

    async def model_ready(request: web.Request) -> web.Response:
        name, version = _model(request)
        model = served.resolve(name, version)  # NotFoundError: 404, a 4xx as OIP wants
        return web.json_response({"name": model.name, "ready": True})

    async def model_infer(request: web.Request) -> web.Response:
        name, version = _model(request)
        body = await request.read()
        message, reply = decode_infer(name, version, body, _header_length(request))
        content, header_length = encode_infer(await infer(served, message), reply)
        if header_length is None:
            return web.Response(body=content, content_type="application/json")
        return web.Response(
            body=content,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(header_length)},
        )

    async def model_predict(request: web.Request) -> web.Response:
        received = time.perf_counter()
        message = decode_predict(request.match_info["name"], await request.read())
        body = encode_predict(await predict(message, received))
        return web.Response(body=body, content_type="application/json")

    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [
        ("GET", "/v2/health/live", live, _OPEN),
        ("GET", "/v2/health/ready", ready, _OPEN),
        ("GET", "/v2", server_metadata, _oip("ServerMetadata")),
        *(("GET", path, metadata, _oip("ModelMetadata")) for path in model_paths),
        *(("GET", f"{path}/ready", model_ready, _oip("ModelReady")) for path in model_paths),
        *(("POST", f"{path}/infer", model_infer, _oip("ModelInfer")) for path in model_paths),
        ("POST", "/v1/models/{name}/predict", model_predict, PREDICT),
    ]
    methods: dict[Handler, str] = {handler: method for _, _, handler, method in routes}
    app = web.Application(
        middlewares=[_answer_errors, _admit(gatekeeper, methods)], client_max_size=MAX_BODY
    )
    for verb, path, handler, _ in routes:
        app.router.add_route(verb, path, handler)
    return app


def gatekeeper_of(auth: AuthSettings) -> Gatekeeper:
    """The gRPC server's gatekeeper for the inference service, for the REST routes."""
    book = TokenBook.from_settings(auth) if auth.enabled else None
    return Gatekeeper(book, POLICY)


def serve_rest(
    served: Served, predictor: Callable[[ServiceContext], Predictor], settings: GatewaySettings
) -> Callable[[ServiceContext], Awaitable[None]]:
    """The background task: serve ``/v2`` and Predict on ``settings.http_port`` until cancelled."""

    async def run(context: ServiceContext) -> None:
        runtime = context.settings
        app = rest_app(served, predictor(context).predict, gatekeeper_of(runtime.auth))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            host = runtime.service.host
            tls = ssl_context(runtime.tls)
            await web.TCPSite(runner, host, settings.http_port, ssl_context=tls).start()
            port = runner.addresses[0][1]
            log.info("http listening", address=f"{host}:{port}", scheme="https" if tls else "http")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    return run


def ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """HTTPS with the gRPC server's certificate (and client CA: mTLS), or None: plain HTTP."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@web.middleware
async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error of every route, as an HTTP status and ``{"error": "..."}``."""
    try:
        return await handler(request)
    except StrataError as exc:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 500:
            log.exception("request failed", path=request.path)
            return _error(500, "internal error", None)
        return _error(status, str(exc), headers)
    except web.HTTPException as exc:  # no such route, body too large, ...
        return _error(exc.status, exc.reason, None)
    except Exception:
        log.exception("request failed", path=request.path)
        return _error(500, "internal error", None)


def _admit(gatekeeper: Gatekeeper, methods: Mapping[Handler, str]) -> Middleware:
    """The middleware admitting a request as its route's gRPC method (``methods``) would be."""

    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        unmatched = request.match_info.http_exception is not None  # answered 404/405 below
        method = _OPEN if unmatched else methods.get(request.match_info.handler, _UNLISTED)
        if method != _OPEN:
            header = request.headers.get("Authorization")
            metadata = [] if header is None else [("authorization", header)]
            act_as(gatekeeper.admit(method, metadata))
        return await handler(request)

    return admit


def _oip(method: str) -> str:
    """The full gRPC name of the inference service's ``method``, as the policy knows it."""
    return f"/{SERVICE}/{method}"


def _error(status: int, message: str, headers: dict[str, str] | None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidArgumentError(HEADER_LENGTH, f"want a byte count, got {raw!r}")
    return int(raw)


def _tensor(spec: oip.ModelMetadataResponse.TensorMetadata) -> JSON:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
