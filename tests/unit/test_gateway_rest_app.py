"""The REST routes on a data plane with nothing loaded yet: readiness and errors as OIP wants.

aiohttp's test server on loopback, in process; no model, no registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.core.rpc.auth import Gatekeeper, Principal, TokenBook
from strata.gateway.models import Served
from strata.gateway.rest import POLICY, rest_app


async def _no_predict(request: gpb.PredictRequest, received: float) -> gpb.PredictResponse:
    raise AssertionError("these tests do not predict")


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    served = Served({"eta": ["champion"]})  # configured, but no version loaded yet
    book = TokenBook({"t-app": Principal("app", frozenset({"predictor"}))})
    app = rest_app(served, _no_predict, Gatekeeper(book, POLICY))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_a_server_without_its_models_loaded_is_live_but_not_ready(
    client: TestClient[web.Request, web.Application],
) -> None:
    live = await client.get("/v2/health/live")
    assert (live.status, await live.json()) == (200, {"live": True})
    ready = await client.get("/v2/health/ready")
    assert (ready.status, await ready.json()) == (400, {"ready": False})


async def test_a_model_not_loaded_yet_is_not_found_naming_its_alias(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get("/v2/models/eta/ready", headers={"Authorization": "Bearer t-app"})
    assert reply.status == 404
    assert "'champion'" in (await reply.json())["error"]


async def test_a_malformed_authorization_header_is_refused_with_401(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get("/v2/models/eta", headers={"Authorization": "Basic abc"})
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert "Bearer <token>" in (await reply.json())["error"]
