"""Strata ``Predict``: entity keys and request values in, one prediction per row out.

For the version a request names, the features of its bindings are read from the
online store in-process, in ONE Redis round trip for every row and every view
(:func:`strata.transforms.online.read_online_views`); request-source views are
computed from the row's values by their own transforms
(:func:`strata.transforms.request.request_features`); the input tensors are
assembled in binding order (:mod:`strata.transforms.featurize`, shared with batch
prediction, so a row meets the model as the same tensor in both) and run through the
same data plane as ModelInfer (:meth:`Served.run`). Each row's prediction, with the
features as served, goes to the prediction log after the answer is built (by way of
the shadow challenger, :mod:`strata.gateway.shadows`, when one is loaded); the
request never waits for Kafka nor for the challenger.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from google.protobuf.duration_pb2 import Duration

from strata.api.common.v1.refs_pb2 import FeatureViewRef
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.core.errors import FailedPreconditionError, InvalidArgumentError
from strata.core.redis_multiplexed import Meanwhile, MultiplexedConnection
from strata.gateway.models import CHAMPION, LoadedModel, Served
from strata.gateway.prediction_log import PredictionLog
from strata.gateway.shadows import CHALLENGER, Shadows
from strata.gateway.values import feature_value, put_output
from strata.transforms.featurize import Array, FeaturePlan, Featurized, entity_keys, featurize
from strata.transforms.online import OnlineRead, read_online_views


class Predictor:
    """Answers Predict from ``served``, features read over ``features``, logged to ``log``."""

    def __init__(
        self,
        served: Served,
        features: MultiplexedConnection,
        log: PredictionLog,
        shadows: Shadows,
    ) -> None:
        self._served = served
        self._features = features
        self._log = log
        self._shadows = shadows
        self._in_flight = 0
        """Predict calls being answered: one alone may spend the CPU warming its model."""

    async def predict(self, request: gpb.PredictRequest, received: float) -> gpb.PredictResponse:
        """One Predict; ``received`` is the ``time.perf_counter()`` of its arrival."""
        alias, model = self._resolve(request)
        if not request.rows:
            raise InvalidArgumentError("rows", "expected at least one row to predict")
        rows = list(request.rows)
        response = gpb.PredictResponse(
            model_name=model.name, model_version=model.version, alias=alias
        )
        prepare = partial(self._prepare, response, model, len(rows))
        self._in_flight += 1
        try:
            plan, featurized, outputs = await self._answer(model, rows, prepare)
        finally:
            self._in_flight -= 1
        predictions = response.predictions
        for index, prediction in enumerate(predictions):
            for name, array in outputs.items():
                put_output(prediction.outputs[name], array[index])
        elapsed = time.perf_counter() - received
        asyncio.get_running_loop().call_soon(
            self._log_answers, request, model, alias, plan, featurized, predictions, elapsed
        )
        return response

    def _prepare(self, response: gpb.PredictResponse, model: LoadedModel, rows: int) -> None:
        """What a call does while its features are on their way: its predictions, with their
        ids, and, when it is the only call in flight, the model warmed (:meth:`Served.warm`;
        with others in flight the CPU has better things to do)."""
        for prediction_id in prediction_ids(rows):
            response.predictions.add(prediction_id=prediction_id)
        if self._in_flight == 1:
            self._served.warm(model)

    def _log_answers(
        self,
        request: gpb.PredictRequest,
        model: LoadedModel,
        alias: str,
        plan: FeaturePlan,
        featurized: Featurized,
        predictions: Sequence[gpb.Prediction],
        elapsed: float,
    ) -> None:
        """Hand the call's records to the log (or to the challenger first). Called by the
        loop once the answer is on its way, so building them never delays it; so is all
        that only the log needs (its latency, its time), even its shared part."""
        served_at = datetime.now(UTC)
        latency = Duration()
        latency.FromNanoseconds(int(elapsed * 1e9))
        context = _Context(request, model, alias, plan, featurized, latency)
        rows = request.rows
        records = [context.logged(rows[i], p, i) for i, p in enumerate(predictions)]
        challenger = self._challenger(model, alias)
        if challenger is None:
            self._log.record(records, served_at)
        else:
            self._shadows.offer(challenger, list(rows), records, served_at)

    async def shadow(self, model: LoadedModel, rows: Sequence[gpb.PredictRow]) -> dict[str, Array]:
        """What ``model`` answers for ``rows``, as Predict computes it (for a challenger)."""
        _, _, outputs = await self._answer(model, rows)
        return outputs

    async def _answer(
        self,
        model: LoadedModel,
        rows: Sequence[gpb.PredictRow],
        meanwhile: Meanwhile | None = None,
    ) -> tuple[FeaturePlan, Featurized, dict[str, Array]]:
        plan = model.features
        if plan is None:
            raise FailedPreconditionError(
                f"version {model.version} of model {model.name!r} has no feature bindings; "
                "send it tensors with ModelInfer"
            )
        featurized = await self._featurize(plan, rows, meanwhile)
        return plan, featurized, await self._served.run(model, featurized.feeds)

    def _challenger(self, model: LoadedModel, alias: str) -> LoadedModel | None:
        """The challenger to shadow a call with: a call through an alias other than the
        challenger itself, when one is loaded (a pinned version is never shadowed)."""
        if not alias or alias == CHALLENGER:
            return None
        challenger = self._served.current(model.name, CHALLENGER)
        if challenger is None or challenger.version == model.version:
            return None
        return challenger

    def _resolve(self, request: gpb.PredictRequest) -> tuple[str, LoadedModel]:
        selector = request.WhichOneof("selector")
        if selector == "version":
            return "", self._served.by_version(request.model_name, request.version)
        alias = request.alias if selector == "alias" else CHAMPION
        return alias, self._served.by_alias(request.model_name, alias)

    async def _featurize(
        self, plan: FeaturePlan, rows: Sequence[gpb.PredictRow], meanwhile: Meanwhile | None
    ) -> Featurized:
        keys = entity_keys(plan, rows)
        online_views = plan.online_views
        reads = [OnlineRead(plan.selections[name], keys[name]) for name in online_views]
        now = datetime.now(UTC)
        values = await read_online_views(self._features, reads, now, meanwhile)
        return featurize(plan, rows, dict(zip(online_views, values, strict=True)))


def prediction_ids(count: int) -> list[str]:
    """``count`` new random (version 4) UUIDs as text, the ids of a call's predictions.

    What ``str(uuid.uuid4())`` gives, formatted straight from the random bytes: with the
    CPU's caches cold, as they are on a Predict's path, a ``uuid.UUID`` object built to
    be formatted cost 17 to 20 µs per id, this 6 to 14 µs (bench/README.md).
    """
    return [_random_uuid(os.urandom(16).hex()) for _ in range(count)]


def _random_uuid(text: str) -> str:
    """32 random hex digits as a version 4 UUID of the RFC 4122 variant."""
    variant = "89ab"[int(text[16], 16) & 3]
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{variant}{text[17:20]}-{text[20:]}"


def entity_key(row: gpb.PredictRow) -> str:
    """The canonical entity key of the log: ``column=value`` sorted by column, joined by ``,``."""
    parts = []
    for column in sorted(row.entity_keys):
        value = row.entity_keys[column]
        kind = value.WhichOneof("kind")
        shown = "" if kind in (None, "null_value") else getattr(value, kind)
        if kind == "timestamp_value":
            shown = value.timestamp_value.ToJsonString()
        parts.append(f"{column}={shown}")
    return ",".join(parts)


@dataclass(frozen=True)
class _Context:
    """What every row of one Predict shares in its log record."""

    request: gpb.PredictRequest
    model: LoadedModel
    alias: str
    plan: FeaturePlan
    featurized: Featurized
    latency: Duration

    def logged(
        self, row: gpb.PredictRow, prediction: gpb.Prediction, index: int
    ) -> gpb.PredictionLogged:
        return gpb.PredictionLogged(
            prediction_id=prediction.prediction_id,
            request_id=self.request.request_id,
            entity_key=entity_key(row),
            model_name=self.model.name,
            model_version=self.model.version,
            alias=self.alias,
            features={
                ref: feature_value(value.value, value.event_time, value.status)
                for ref, value in self.featurized.served[index].items()
            },
            feature_views=[
                FeatureViewRef(name=name, version=use.version)
                for name, use in self.plan.views.items()
            ],
            outputs=prediction.outputs,
            latency=self.latency,
        )
