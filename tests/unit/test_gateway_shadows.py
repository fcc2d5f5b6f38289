"""The shadow challenger's queue: answers and errors attached to the records, what does
not fit dropped and counted with the records logged at once, never a blocked caller."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from onnx import TensorProto, helper

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.core.metrics import Metrics
from strata.core.runtime import ServiceContext
from strata.gateway.metrics import GatewayMetrics
from strata.gateway.models import LoadedModel, load
from strata.gateway.prediction_log import PredictionLog
from strata.gateway.shadows import Shadows
from strata.transforms.featurize import Array

SERVED = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
"""When the champion's answers were served."""


def _challenger() -> LoadedModel:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "same",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    return load("eta", 2, hashlib.sha256(data).hexdigest(), data)


def _records(*ids: str) -> list[gpb.PredictionLogged]:
    return [gpb.PredictionLogged(prediction_id=i, model_name="eta") for i in ids]


def _context() -> ServiceContext:
    return ServiceContext("gateway", cast(Any, None), Metrics())


def _buffered(log: PredictionLog) -> list[gpb.PredictionLogged]:
    return [record for record, _ in log._buffer]


async def _answer(model: LoadedModel, rows: Sequence[gpb.PredictRow]) -> dict[str, Array]:
    if any(not row.entity_keys for row in rows):
        raise ValueError("the challenger cannot read this row")
    return {"y": np.arange(len(rows), dtype=np.float32).reshape(-1, 1)}


async def _until_logged(log: PredictionLog, count: int) -> None:
    async with asyncio.timeout(10):
        while True:
            if len(log._buffer) >= count:
                return
            await asyncio.sleep(0.01)


async def test_the_challengers_answers_and_errors_are_attached_before_logging() -> None:
    metrics = GatewayMetrics()
    log = PredictionLog(capacity=100, batch=10, metrics=metrics)
    shadows = Shadows(capacity=10, log=log, metrics=metrics)
    worker = asyncio.ensure_future(shadows.worker(_answer)(_context()))
    row = gpb.PredictRow(entity_keys={"courier_id": fpb.Value(int64_value=1)})
    try:
        shadows.offer(_challenger(), [row, row], _records("a", "b"), SERVED)
        shadows.offer(_challenger(), [gpb.PredictRow()], _records("c"), SERVED)
        await _until_logged(log, 3)
    finally:
        worker.cancel()
    a, b, c = _buffered(log)
    # logged after the challenger answered, with the time the champion's answer was served
    assert {served for _, served in log._buffer} == {SERVED}
    assert [s.outputs["y"].float_list_value.values[0] for s in (*a.shadows, *b.shadows)] == [0, 1]
    assert (a.shadows[0].alias, a.shadows[0].model_version, a.shadows[0].error) == (
        "challenger",
        2,
        "",
    )
    (failed,) = c.shadows
    assert failed.error == "the challenger cannot read this row"
    assert not failed.outputs


async def test_a_full_queue_drops_the_shadow_and_logs_the_records_at_once() -> None:
    metrics = GatewayMetrics()
    log = PredictionLog(capacity=100, batch=10, metrics=metrics)
    shadows = Shadows(capacity=1, log=log, metrics=metrics)
    shadows.offer(_challenger(), [gpb.PredictRow()], _records("queued"), SERVED)
    shadows.offer(_challenger(), [gpb.PredictRow()] * 2, _records("x", "y"), SERVED)
    assert [r.prediction_id for r in _buffered(log)] == ["x", "y"]
    assert all(not r.shadows for r in _buffered(log))
    assert metrics.shadows.labels("dropped")._value.get() == 2
