"""The registry keeps the prediction log: a real registry consuming the real ``strata.predictions``.

What a team relies on: every prediction the gateway logs is kept once, however
often Kafka delivers it, with its features, outputs, views and served time;
``ListPredictions`` pages a model's predictions in served order within a time
range; predictions older than the retention are pruned; and a prediction id the
registry does not hold is NOT_FOUND with a message saying it may still be on its
way, a malformed one INVALID_ARGUMENT naming the field.

The records are produced as the gateway produces them (``strata.gateway
.prediction_log``): sealed with the prediction id as event id, keyed by entity.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from aiokafka import TopicPartition
from google.protobuf.timestamp_pb2 import Timestamp
from service_processes import running

from strata.api.common.v1.refs_pb2 import FeatureViewRef
from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1.gateway_pb2 import PredictionLogged
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core import kafka
from strata.core.bus.publisher import event_headers
from strata.core.envelope import seal
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.settings import AuthSettings, KafkaSettings, load
from strata.core.topics import PREDICTIONS, dead_letter_topic

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for records to arrive: a guard against hanging, not a timing check."""
RETENTION_SECONDS = 30
"""The retention of the registry the pruning test starts (the module's keeps the default)."""


def logged(model: str, courier: int, version: int = 1) -> PredictionLogged:
    """A prediction of ``model`` for ``courier`` as the gateway logs it."""
    return PredictionLogged(
        prediction_id=str(uuid.uuid4()),
        request_id=f"req-{courier}",
        entity_key=f"courier_id={courier}",
        model_name=model,
        model_version=version,
        alias="champion",
        features={
            "couriers:minutes": fpb.FeatureValue(
                value=fpb.Value(double_value=courier * 1.5),
                event_time=_stamp(datetime(2026, 11, 30, 12, tzinfo=UTC)),
                status=fpb.FEATURE_STATUS_PRESENT,
            ),
            "couriers:deliveries": fpb.FeatureValue(
                value=fpb.Value(int64_value=courier), status=fpb.FEATURE_STATUS_NOT_FOUND
            ),
            "hour": fpb.FeatureValue(value=fpb.Value(int64_value=9)),
        },
        feature_views=[FeatureViewRef(name="couriers", version=3)],
        outputs={"variable": fpb.Value(double_value=courier * 2.0)},
    )


async def log(records: Sequence[tuple[PredictionLogged, datetime]], copies: int = 1) -> None:
    """Produce ``records`` (each served at its time) ``copies`` times, as the gateway does."""
    producer = kafka.producer(load(KafkaSettings))
    await producer.start()
    try:
        for _ in range(copies):
            for record, served in records:
                envelope = seal(
                    record,
                    key=record.entity_key,
                    producer="gateway",
                    event_id=record.prediction_id,
                    occurred_at=served,
                )
                await producer.send_and_wait(
                    PREDICTIONS.name,
                    envelope.SerializeToString(),
                    key=record.entity_key.encode(),
                    headers=event_headers(envelope.type, envelope.event_id, {}),
                )
    finally:
        await producer.stop()


async def kept(
    registry: ModelRegistryServiceStub, model: str, count: int
) -> list[pb.PredictionRecord]:
    """The model's predictions, once the registry holds ``count`` of them."""
    async with asyncio.timeout(BOUND):
        while True:
            reply = await registry.ListPredictions(
                pb.ListPredictionsRequest(model_name=model, page_size=1000)
            )
            if len(reply.predictions) >= count:
                return list(reply.predictions)
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ModelRegistryServiceStub]:
    folder: Path = tmp_path_factory.mktemp("registry-predictions")
    async with (
        running("registry", folder) as service,
        channel(service.address, load(AuthSettings), mode="development") as chan,
    ):
        yield ModelRegistryServiceStub(chan)


async def test_each_logged_prediction_is_kept_once_with_what_was_served(
    registry: ModelRegistryServiceStub,
) -> None:
    model = f"eta-{uuid.uuid4().hex[:8]}"
    letters_before = await dead_letters()
    served = datetime.now(UTC).replace(microsecond=123000) - timedelta(minutes=1)
    records = [logged(model, courier) for courier in (1, 2, 3)]
    await log([(r, served + timedelta(seconds=i)) for i, r in enumerate(records)], copies=2)
    # One more prediction per entity, so on its partition after the copies: once these
    # are kept, every copy before them was settled (kept, dropped or dead-lettered).
    markers = [logged(model, courier) for courier in (1, 2, 3)]
    await log([(m, served + timedelta(seconds=10 + i)) for i, m in enumerate(markers)])

    found = await kept(registry, model, 6)

    assert [p.prediction_id for p in found] == [r.prediction_id for r in [*records, *markers]]
    assert await dead_letters() == letters_before, "a redelivered prediction was dead-lettered"
    first = found[0]
    assert first.entity_key == "courier_id=1"
    assert first.request_id == "req-1"
    assert (first.model_name, first.model_version, first.alias) == (model, 1, "champion")
    assert dict(first.features) == dict(records[0].features)
    assert dict(first.outputs) == dict(records[0].outputs)
    assert list(first.feature_views) == [FeatureViewRef(name="couriers", version=3)]
    assert first.served_at.ToDatetime(tzinfo=UTC) == served


async def dead_letters() -> int:
    """How many records the dead-letter topic of ``strata.predictions`` holds (0: none yet)."""
    topic = dead_letter_topic(PREDICTIONS.name)
    admin = kafka.admin(load(KafkaSettings))
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"]:
        return 0  # the topic does not exist yet: nothing was ever dead-lettered
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    reader = kafka.consumer(load(KafkaSettings), group_id=f"test-dlq-{uuid.uuid4().hex[:8]}")
    await reader.start()
    try:
        ends = await reader.end_offsets(partitions)
    finally:
        await reader.stop()
    return sum(int(offset) for offset in ends.values())


async def test_predictions_are_paged_in_served_order_within_the_range(
    registry: ModelRegistryServiceStub,
) -> None:
    model = f"eta-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    records = [(logged(model, courier), start + timedelta(seconds=courier)) for courier in range(7)]
    await log(list(reversed(records)))
    await kept(registry, model, len(records))

    pages: list[list[str]] = []
    request = pb.ListPredictionsRequest(
        model_name=model,
        served_after=_stamp(start + timedelta(seconds=1)),
        served_before=_stamp(start + timedelta(seconds=6)),
        page_size=2,
    )
    while True:
        reply = await registry.ListPredictions(request)
        pages.append([p.entity_key for p in reply.predictions])
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token

    assert pages == [
        ["courier_id=1", "courier_id=2"],
        ["courier_id=3", "courier_id=4"],
        ["courier_id=5"],
    ]


async def test_predictions_past_the_retention_are_pruned(
    registry: ModelRegistryServiceStub, tmp_path: Path
) -> None:
    model = f"eta-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old = logged(model, 1)
    fresh = logged(model, 2)
    await log([(old, now - timedelta(minutes=10)), (fresh, now)])
    await kept(registry, model, 2)

    async with (
        running(
            "registry", tmp_path, STRATA_REGISTRY_PREDICTIONS_RETENTION=f"PT{RETENTION_SECONDS}S"
        ),
        asyncio.timeout(BOUND),
    ):
        while True:
            reply = await registry.ListPredictions(pb.ListPredictionsRequest(model_name=model))
            if [p.prediction_id for p in reply.predictions] == [fresh.prediction_id]:
                break
            await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry.GetPredictionLineage(
            pb.GetPredictionLineageRequest(prediction_id=old.prediction_id)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_unknown_prediction_is_not_found_and_may_be_on_its_way(
    registry: ModelRegistryServiceStub,
) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry.GetPredictionLineage(pb.GetPredictionLineageRequest(prediction_id=unknown))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = caught.value.details() or ""
    assert unknown in details
    assert "on its way" in details

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry.GetPredictionLineage(pb.GetPredictionLineageRequest(prediction_id="p-1"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prediction_id" in field_violations(caught.value)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry.ListPredictions(
            pb.ListPredictionsRequest(model_name="eta", page_token="not-a-token")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in field_violations(caught.value)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
