"""Predict over REST: the JSON body to ``PredictRequest`` and back, and the route's
admission and errors, on aiohttp's in-process test server with a recording predictor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.core.errors import InvalidArgumentError, NotFoundError
from strata.core.rpc.auth import Gatekeeper, Principal, TokenBook
from strata.gateway.models import Served
from strata.gateway.rest import POLICY, rest_app
from strata.gateway.rest_codec import decode_predict, encode_predict

Client = TestClient[web.Request, web.Application]


def _body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_a_body_becomes_the_predict_request_with_json_scalars_as_their_value_kinds() -> None:
    body = _body(
        {
            "alias": "challenger",
            "request_id": "r-7",
            "rows": [
                {
                    "entity_keys": {"courier_id": 42, "city": "Lyon"},
                    "features": {
                        "meters": 2500.5,
                        "rush": True,
                        "note": None,
                        "at": {"timestamp_value": "2026-01-02T03:04:05Z"},
                        "emb": {"double_list_value": {"values": [0.5, 1.0]}},
                    },
                },
                {"entity_keys": {"courier_id": 7}},
            ],
        }
    )
    request = decode_predict("eta", body)
    assert (request.model_name, request.alias, request.request_id) == ("eta", "challenger", "r-7")
    first, second = request.rows
    assert first.entity_keys["courier_id"] == fpb.Value(int64_value=42)
    assert first.entity_keys["city"] == fpb.Value(string_value="Lyon")
    assert first.features["meters"] == fpb.Value(double_value=2500.5)
    assert first.features["rush"] == fpb.Value(bool_value=True)
    assert first.features["note"].WhichOneof("kind") is None
    assert first.features["at"].timestamp_value.ToJsonString() == "2026-01-02T03:04:05Z"
    assert list(first.features["emb"].double_list_value.values) == [0.5, 1.0]
    assert dict(second.entity_keys) == {"courier_id": fpb.Value(int64_value=7)}
    assert not second.features


def test_a_version_pins_and_no_selector_means_the_champion() -> None:
    pinned = decode_predict("eta", _body({"version": 3, "rows": [{}]}))
    assert (pinned.WhichOneof("selector"), pinned.version) == ("version", 3)
    assert decode_predict("eta", _body({"rows": [{}]})).WhichOneof("selector") is None


@pytest.mark.parametrize(
    ("document", "field", "expected"),
    [
        ({"rows": []}, "rows", "non-empty list"),
        ({"rows": {"courier_id": 1}}, "rows", "non-empty list"),
        ({"alias": "a", "version": 1, "rows": [{}]}, "version", "not both"),
        ({"version": "2", "rows": [{}]}, "version", "version number"),
        ({"version": True, "rows": [{}]}, "version", "version number"),
        ({"alais": "canary", "rows": [{}]}, "alais", "unknown key"),
        ({"rows": [{"entity_key": {}}]}, "rows[0].entity_key", "unknown key"),
        ({"rows": [1]}, "rows[0]", "JSON object"),
        ({"rows": [{"features": [1, 2]}]}, "rows[0].features", "JSON object"),
        ({"rows": [{}, {"entity_keys": {"id": [1, 2]}}]}, "rows[1].entity_keys[id]", "list"),
        ({"rows": [{"entity_keys": {"id": 2**64}}]}, "rows[0].entity_keys[id]", "64-bit"),
        ({"rows": [{"features": {"x": {"wat": 1}}}]}, "rows[0].features[x]", "Value object"),
    ],
)
def test_a_malformed_body_is_refused_naming_the_field(
    document: object, field: str, expected: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        decode_predict("eta", _body(document))
    assert caught.value.field == field
    assert expected in caught.value.message


def test_not_json_is_refused_naming_the_body() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        decode_predict("eta", b"rows=1")
    assert caught.value.field == "body"


def test_the_answer_has_the_responses_fields_and_plain_values() -> None:
    response = gpb.PredictResponse(
        model_name="eta",
        model_version=2,
        alias="champion",
        predictions=[
            gpb.Prediction(
                prediction_id="p1",
                outputs={
                    "variable": fpb.Value(float_list_value=fpb.FloatList(values=[0.5])),
                    "label": fpb.Value(int64_value=3),
                },
            )
        ],
    )
    assert json.loads(encode_predict(response)) == {
        "model_name": "eta",
        "model_version": 2,
        "alias": "champion",
        "predictions": [{"prediction_id": "p1", "outputs": {"variable": [0.5], "label": 3}}],
    }


class Recorder:
    """A stand-in for :meth:`Predictor.predict`: remembers requests, answers one row each."""

    def __init__(self) -> None:
        self.requests: list[gpb.PredictRequest] = []

    async def predict(self, request: gpb.PredictRequest, received: float) -> gpb.PredictResponse:
        if request.model_name == "gone":
            raise NotFoundError("model 'gone'")
        self.requests.append(request)
        return gpb.PredictResponse(
            model_name=request.model_name,
            model_version=1,
            predictions=[
                gpb.Prediction(prediction_id="p", outputs={"y": fpb.Value(int64_value=1)})
            ],
        )


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Client, Recorder]]:
    book = TokenBook(
        {
            "t-app": Principal("app", frozenset({"predictor"})),
            "t-dash": Principal("dashboard", frozenset({"viewer"})),
        }
    )
    recording = Recorder()
    app = rest_app(Served({}), recording.predict, Gatekeeper(book, POLICY))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, recording


APP = {"Authorization": "Bearer t-app"}
ROW = {"rows": [{"entity_keys": {"courier_id": 1}}]}


async def test_the_route_hands_the_decoded_request_to_the_predictor(
    recorder: tuple[Client, Recorder],
) -> None:
    client, recording = recorder
    reply = await client.post("/v1/models/eta/predict", json=ROW, headers=APP)
    assert reply.status == 200
    assert (await reply.json())["predictions"] == [{"prediction_id": "p", "outputs": {"y": 1}}]
    (request,) = recording.requests
    assert request.model_name == "eta"
    assert request.rows[0].entity_keys["courier_id"].int64_value == 1


async def test_predict_needs_the_predictor_role_as_over_grpc(
    recorder: tuple[Client, Recorder],
) -> None:
    client, recording = recorder
    anonymous = await client.post("/v1/models/eta/predict", json=ROW)
    assert anonymous.status == 401
    viewer = await client.post(
        "/v1/models/eta/predict", json=ROW, headers={"Authorization": "Bearer t-dash"}
    )
    assert viewer.status == 403
    assert "PredictionService/Predict" in (await viewer.json())["error"]
    assert recording.requests == []


async def test_errors_map_to_400_naming_the_field_and_404_naming_the_model(
    recorder: tuple[Client, Recorder],
) -> None:
    client, _ = recorder
    bad = await client.post("/v1/models/eta/predict", json={"rows": []}, headers=APP)
    assert bad.status == 400
    assert "rows" in (await bad.json())["error"]
    gone = await client.post("/v1/models/gone/predict", json=ROW, headers=APP)
    assert gone.status == 404
    assert "'gone'" in (await gone.json())["error"]
