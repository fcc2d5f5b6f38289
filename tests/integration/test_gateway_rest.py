"""The gateway's REST face of the Open Inference Protocol (``/v2``), and tritonclient on both.

One real ``python -m strata.gateway`` fed by a real registry, as in
test_gateway_service.py (whose helpers start them); the REST port is a free one,
read from the gateway's "http listening" log line. The gateway's tokens are set
here so that a caller without the predictor role exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_processes import free_port
from test_gateway_service import (
    BOUND,
    _model,
    _running_gateway,
    _until_ready,
    registry_address,
)

from strata.api.inference import grpc_service_pb2 as oip
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.rpc.client import channel
from strata.core.settings import DEV_ADMIN_TOKEN, AuthSettings, load

pytestmark = pytest.mark.integration

__all__ = ["registry_address"]  # the module-scoped registry the gateway reads from

PREDICTOR = "rest-test-predictor-token"
VIEWER = "rest-test-viewer-token"
TOKENS = {
    DEV_ADMIN_TOKEN: {"principal": "dev", "roles": ["admin"]},
    PREDICTOR: {"principal": "app", "roles": ["predictor"]},
    VIEWER: {"principal": "dashboard", "roles": ["viewer"]},
}
ROWS = [[1.0, 2.0], [3.0, 4.0]]


@dataclass
class Rest:
    """A running gateway serving ``model`` (y = 2x): its REST root and gRPC client."""

    url: str
    grpc_address: str
    model: str
    oip: Any

    def call(self, verb: str, path: str, token: str | None = PREDICTOR, **options: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(options.pop("headers", {}))
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND))
        return _Call(session, session.request(verb, self.url + path, headers=headers, **options))


class _Call:
    """``async with rest.call(...) as response``: the response, then the session closed."""

    def __init__(self, session: aiohttp.ClientSession, request: Any) -> None:
        self._session = session
        self._request = request

    async def __aenter__(self) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await self._request
        return response

    async def __aexit__(self, *_: object) -> None:
        await self._session.close()


@pytest.fixture(scope="module")
async def rest(
    registry_address: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rest]:
    folder = tmp_path_factory.mktemp("gateway-rest")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STRATA_GATEWAY_HTTP_PORT", "0")
        env.setenv("STRATA_AUTH_TOKENS", json.dumps(TOKENS))
        async with channel(registry_address, load(AuthSettings), mode="development") as chan:
            model = await _model(ModelRegistryServiceStub(chan), 2.0)
        async with _running_gateway(folder, registry_address, {model: ["champion"]}) as gateway:
            await _until_ready(gateway.oip)
            listening = await gateway.until_logged("http listening")
            yield Rest(f"http://{listening['address']}", gateway.address, model, gateway.oip)


def _failed(log: str, task: str) -> bool:
    """Whether the supervisor logged ``task`` failing (and waiting to restart it)."""
    return any(
        "background task failed" in line and f'"task": "{task}"' in line
        for line in log.splitlines()
    )


def _infer_body(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    x = {"name": "x", "shape": [len(rows), 2], "datatype": "FP32", "data": rows}
    return {"inputs": [x], **extra}


async def test_health_and_metadata_answer_over_rest(rest: Rest) -> None:
    async with rest.call("GET", "/v2/health/live", token=None) as live:
        assert (live.status, await live.json()) == (200, {"live": True})
    async with rest.call("GET", "/v2/health/ready", token=None) as ready:
        assert (ready.status, await ready.json()) == (200, {"ready": True})
    async with rest.call("GET", "/v2") as server:
        assert (await server.json())["name"] == "strata-gateway"
    expected = {
        "name": rest.model,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }
    for path in (f"/v2/models/{rest.model}", f"/v2/models/{rest.model}/versions/1"):
        async with rest.call("GET", path) as metadata:
            assert (metadata.status, await metadata.json()) == (200, expected)
    async with rest.call("GET", f"/v2/models/{rest.model}/ready") as model_ready:
        assert (model_ready.status, (await model_ready.json())["ready"]) == (200, True)
    async with rest.call("GET", "/v2/models/no-such-model/ready") as unknown:
        assert unknown.status == 404
        assert "no-such-model" in (await unknown.json())["error"]
    async with rest.call("GET", "/v2/nowhere") as nowhere:
        assert (nowhere.status, await nowhere.json()) == (404, {"error": "Not Found"})


async def test_rest_infer_answers_what_grpc_answers(rest: Rest) -> None:
    by_grpc = await rest.oip.ModelInfer(
        oip.ModelInferRequest(
            model_name=rest.model,
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="x",
                    datatype="FP32",
                    shape=[2, 2],
                    contents=oip.InferTensorContents(fp32_contents=[v for r in ROWS for v in r]),
                )
            ],
        )
    )
    async with rest.call(
        "POST", f"/v2/models/{rest.model}/infer", json=_infer_body(ROWS, id="r-7")
    ) as reply:
        assert reply.status == 200
        answer = await reply.json()
    (y,) = answer["outputs"]
    assert (answer["model_version"], answer["id"]) == (by_grpc.model_version, "r-7")
    assert (y["name"], y["datatype"], y["shape"]) == ("y", "FP32", [2, 2])
    assert y["data"] == list(by_grpc.outputs[0].contents.fp32_contents) == [2.0, 4.0, 6.0, 8.0]


async def test_binary_tensors_go_both_ways(rest: Rest) -> None:
    x = np.asarray(ROWS, np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(x)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    async with rest.call(
        "POST",
        f"/v2/models/{rest.model}/versions/1/infer",
        data=header + x,
        headers={"Inference-Header-Content-Length": str(len(header))},
    ) as reply:
        assert reply.status == 200
        length = int(reply.headers["Inference-Header-Content-Length"])
        body = await reply.read()
    (y,) = json.loads(body[:length])["outputs"]
    assert y["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(body[length:], np.float32).tolist() == [2.0, 4.0, 6.0, 8.0]


async def test_bad_requests_get_a_status_and_an_error_naming_the_culprit(rest: Rest) -> None:
    infer = f"/v2/models/{rest.model}/infer"
    wrong = _infer_body([[1.0, 2.0, 3.0]])
    wrong["inputs"][0]["shape"] = [1, 3]
    async with rest.call("POST", infer, json=wrong) as shape:
        assert shape.status == 400
        error = (await shape.json())["error"]
    assert "'x'" in error
    assert "[1, 3]" in error
    assert "[-1, 2]" in error

    async with rest.call(
        "POST", "/v2/models/no-such-model/infer", json=_infer_body(ROWS)
    ) as unknown:
        assert unknown.status == 404
        assert "no-such-model" in (await unknown.json())["error"]

    async with rest.call("POST", infer, json=_infer_body(ROWS), token=None) as anonymous:
        assert anonymous.status == 401
        assert "bearer token" in (await anonymous.json())["error"]
    async with rest.call("GET", f"/v2/models/{rest.model}", token="nobody-issued-this") as forged:
        assert forged.status == 401
    async with rest.call("POST", infer, json=_infer_body(ROWS), token=VIEWER) as viewer:
        assert viewer.status == 403
        assert "predictor" in (await viewer.json())["error"]


async def test_tritonclient_from_pypi_talks_to_the_gateway_over_grpc_and_rest(rest: Rest) -> None:
    script = Path(__file__).with_name("oip_client.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        rest.grpc_address,
        rest.url.removeprefix("http://"),
        rest.model,
        PREDICTOR,
        json.dumps(ROWS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    answers = json.loads(out)
    for protocol in ("grpc", "http"):
        assert answers[protocol] == {
            "server_live": True,
            "server_ready": True,
            "model_ready": True,
            "metadata": {
                "name": rest.model,
                "inputs": [["x", "FP32", [-1, 2]]],
                "outputs": [["y", "FP32", [-1, 2]]],
            },
            "version": "1",
            "y": [[2.0, 4.0], [6.0, 8.0]],
        }, protocol


async def test_a_rest_port_that_cannot_be_bound_shows_in_health_until_it_can(
    tmp_path: Path,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    http_port, grpc_port = taken.getsockname()[1], free_port()
    log = tmp_path / "gateway.log"
    environment = {
        **os.environ,
        "STRATA_SERVICE_GATEWAY_PORT": str(grpc_port),
        "STRATA_SERVICE_GATEWAY_METRICS_PORT": str(free_port()),
        "STRATA_GATEWAY_HTTP_PORT": str(http_port),
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.gateway", env=environment, stderr=sink
        )
    try:
        async with (
            asyncio.timeout(BOUND),
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as chan,
        ):
            health = health_pb2_grpc.HealthStub(chan)
            while not _failed(log.read_text(), "serve-rest"):
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.2)
            status = (await health.Check(health_pb2.HealthCheckRequest())).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            taken.close()
            while True:
                status = (await health.Check(health_pb2.HealthCheckRequest())).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.2)
        rest = Rest(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", "", None)
        async with rest.call("GET", "/v2/health/live", token=None) as live:
            assert live.status == 200
    finally:
        taken.close()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()
