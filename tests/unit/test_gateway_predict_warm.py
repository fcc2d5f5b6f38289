"""A Predict alone in the gateway warms its model while its features are read; one among
others does not (the CPU has their work to do)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.gateway.models import LoadedModel
from strata.gateway.predict import Predictor
from strata.transforms.definition import Column, DatasetSource, Feature, FeatureView
from strata.transforms.featurize import TensorSpec, ViewUse, plan
from strata.transforms.types import ColumnType

VIEW = FeatureView(
    name="couriers",
    entities=("courier_id",),
    event_time="event_time",
    source=DatasetSource(
        "couriers",
        (
            Column("courier_id", ColumnType.INT64),
            Column("event_time", ColumnType.TIMESTAMP),
            Column("deliveries", ColumnType.INT64),
        ),
    ),
    features=(Feature("deliveries", default=0),),
)


class _Reads:
    """Features that come back when the test says so; what runs meanwhile, recorded."""

    def __init__(self) -> None:
        self.replies: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def execute(self, *commands: Any, meanwhile: Callable[[], object] | None = None) -> Any:
        if meanwhile is not None:
            meanwhile()
        await self.replies
        return [[None, None] for _ in commands]


class _Served:
    """The model's runs and warm-ups, counted; every row answered 1.0."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.warmed = 0

    def by_alias(self, name: str, alias: str) -> LoadedModel:
        return self.model

    def current(self, name: str, alias: str) -> LoadedModel | None:
        return None

    def warm(self, model: LoadedModel) -> None:
        self.warmed += 1

    async def run(self, model: LoadedModel, feeds: Any) -> Any:
        import numpy as np

        return {"y": np.ones((len(feeds["x"]), 1), dtype=np.float32)}


class _Log:
    def record(self, records: Any, served_at: Any) -> None:
        pass


def _model() -> LoadedModel:
    inputs = (TensorSpec("x", "FP32", (-1, 1)),)
    bound = plan([("x", ["couriers:deliveries"])], inputs, {"couriers": ViewUse(VIEW, 1)})
    return LoadedModel(
        name="eta",
        version=1,
        sha256="",
        inputs=inputs,
        outputs=(TensorSpec("y", "FP32", (-1, 1)),),
        session=None,  # never run: the served stand-in answers
        features=bound,
    )


def _request(courier: int) -> gpb.PredictRequest:
    row = gpb.PredictRow(entity_keys={"courier_id": fpb.Value(int64_value=courier)})
    return gpb.PredictRequest(model_name="eta", rows=[row])


async def test_only_a_call_alone_warms_its_model() -> None:
    """The first call is alone when its features are asked for; two more that come while it
    waits are not; once all are answered, the next call is alone again."""
    reads, served = _Reads(), _Served(_model())
    predictor = Predictor(served, reads, _Log(), None)  # type: ignore[arg-type]
    first = asyncio.ensure_future(predictor.predict(_request(1), 0.0))
    await asyncio.sleep(0)
    assert served.warmed == 1
    others = [asyncio.ensure_future(predictor.predict(_request(n), 0.0)) for n in (2, 3)]
    await asyncio.sleep(0)
    reads.replies.set_result(None)
    replies = await asyncio.gather(first, *others)
    assert served.warmed == 1
    await predictor.predict(_request(4), 0.0)
    assert served.warmed == 2
    for reply in replies:
        (prediction,) = reply.predictions
        assert prediction.prediction_id
        assert list(prediction.outputs["y"].float_list_value.values) == [1.0]
