"""The shadow challenger: what the ``challenger`` alias would have answered, logged beside
the champion's answer and never returned.

A Predict through an alias (not a pinned version) of a model whose ``challenger``
is loaded hands its rows and its log records to :meth:`Shadows.offer` and answers;
the challenger's features are read and its model run later, by a background task,
through the same featurization and data plane as any Predict. Its outputs (or the
error it raised) are attached to each record as a ``ShadowPrediction``, and only
then do the records go to the prediction log. The queue of waiting shadows is
bounded: when it is full, the shadow is dropped (counted and logged) and the
records are logged at once without it, so a slow challenger never holds up the
champion's answers nor its log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from google.protobuf.duration_pb2 import Duration

from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.core.runtime import ServiceContext
from strata.gateway.metrics import GatewayMetrics
from strata.gateway.models import LoadedModel
from strata.gateway.prediction_log import PredictionLog
from strata.gateway.values import output_value
from strata.transforms.featurize import Array

log = structlog.stdlib.get_logger(__name__)

CHALLENGER = "challenger"

Answer = Callable[[LoadedModel, Sequence[gpb.PredictRow]], Awaitable[dict[str, Array]]]
"""Features and model run for rows, as Predict does them: the challenger's outputs."""


@dataclass(frozen=True)
class _Shadow:
    challenger: LoadedModel
    rows: Sequence[gpb.PredictRow]
    records: Sequence[gpb.PredictionLogged]
    served_at: datetime


class Shadows:
    """The bounded queue of shadow predictions and the task that runs them."""

    def __init__(self, capacity: int, log: PredictionLog, metrics: GatewayMetrics) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._queue: asyncio.Queue[_Shadow] = asyncio.Queue(capacity)
        self._log = log
        self._metrics = metrics
        self._warned = 0.0

    def offer(
        self,
        challenger: LoadedModel,
        rows: Sequence[gpb.PredictRow],
        records: Sequence[gpb.PredictionLogged],
        served_at: datetime,
    ) -> None:
        """Shadow ``rows`` with ``challenger`` later; never blocks. When the queue is full
        the shadow is dropped and ``records`` (served at ``served_at``) go to the log
        without it."""
        try:
            self._queue.put_nowait(_Shadow(challenger, rows, records, served_at))
        except asyncio.QueueFull:
            self._metrics.shadows.labels("dropped").inc(len(records))
            now = time.monotonic()
            if now - self._warned >= 5.0:
                self._warned = now
                log.warning("shadow queue full; challenger answers dropped", model=challenger.name)
            self._log.record(records, served_at)

    def worker(self, answer: Answer) -> Callable[[ServiceContext], Awaitable[None]]:
        """The background task: run each shadow with ``answer``, attach it, log the records."""

        async def run(context: ServiceContext) -> None:
            self._metrics.attach(context.metrics.registry)
            try:
                while True:
                    shadow = await self._queue.get()
                    try:
                        await self._run(shadow, answer)
                    finally:
                        self._log.record(shadow.records, shadow.served_at)
            finally:
                while not self._queue.empty():  # shutting down: log them without shadows
                    left = self._queue.get_nowait()
                    self._log.record(left.records, left.served_at)

        return run

    async def _run(self, shadow: _Shadow, answer: Answer) -> None:
        challenger = shadow.challenger
        started = time.perf_counter()
        try:
            outputs = await answer(challenger, shadow.rows)
        except Exception as error:
            failed = gpb.ShadowPrediction(
                alias=CHALLENGER, model_version=challenger.version, error=str(error)
            )
            for record in shadow.records:
                record.shadows.append(failed)
            self._metrics.shadows.labels("failed").inc(len(shadow.records))
            return
        latency = Duration()
        latency.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
        for index, record in enumerate(shadow.records):
            record.shadows.append(
                gpb.ShadowPrediction(
                    alias=CHALLENGER,
                    model_version=challenger.version,
                    outputs={name: output_value(out[index]) for name, out in outputs.items()},
                    latency=latency,
                )
            )
        self._metrics.shadows.labels("answered").inc(len(shadow.records))
