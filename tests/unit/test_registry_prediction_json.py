"""A kept prediction's JSON, written without protobuf's generic printer.

What a reader relies on: the ``jsonb`` the registry stores is what
``json_format.MessageToDict`` would have written for every kind of value a feature or
an output can hold, and ``ListPredictions`` parses it back to the same messages.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import NULL_VALUE
from google.protobuf.timestamp_pb2 import Timestamp

from strata.api.common.v1.refs_pb2 import FeatureViewRef
from strata.api.features.v1 import features_pb2 as fpb
from strata.api.registry.v1 import registry_pb2 as pb
from strata.registry.domain.prediction_json import prediction_json


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _values() -> dict[str, fpb.Value]:
    """One value of every kind the contract has, and the awkward numbers of each."""
    stamp = _stamp(datetime(2026, 12, 2, 8, 30, 1, 250000, tzinfo=UTC))
    return {
        "none": fpb.Value(),
        "null": fpb.Value(null_value=NULL_VALUE),
        "int": fpb.Value(int64_value=-(2**63)),
        "double": fpb.Value(double_value=0.1),
        "whole": fpb.Value(double_value=3.0),
        "nan": fpb.Value(double_value=math.nan),
        "inf": fpb.Value(double_value=-math.inf),
        "text": fpb.Value(string_value='a "quoted" é'),
        "false": fpb.Value(bool_value=False),
        "bytes": fpb.Value(bytes_value=b"\x00\xffstrata"),
        "time": fpb.Value(timestamp_value=stamp),
        "ints": fpb.Value(int64_list_value=fpb.Int64List(values=[1, 2**62])),
        "empty ints": fpb.Value(int64_list_value=fpb.Int64List()),
        "doubles": fpb.Value(double_list_value=fpb.DoubleList(values=[1.5, math.inf])),
        "floats": fpb.Value(
            float_list_value=fpb.FloatList(values=[0.1, 1.1, 1 / 3, 1e-45, 3.4e38, math.nan])
        ),
        "texts": fpb.Value(string_list_value=fpb.StringList(values=["a", ""])),
        "bools": fpb.Value(bool_list_value=fpb.BoolList(values=[True, False])),
    }


def _record() -> pb.PredictionRecord:
    served = _stamp(datetime(2026, 12, 2, 8, 30, 2, tzinfo=UTC))
    event = _stamp(datetime(2026, 12, 2, 8, 0, tzinfo=UTC))
    features = {
        f"drivers:{name}": fpb.FeatureValue(
            value=value, event_time=event, status=fpb.FEATURE_STATUS_PRESENT
        )
        for name, value in _values().items()
    }
    features["drivers:unset"] = fpb.FeatureValue()
    features["drivers:missing"] = fpb.FeatureValue(
        status=fpb.FEATURE_STATUS_NOT_FOUND, event_time=_stamp(datetime(2026, 1, 1, tzinfo=UTC))
    )
    features["drivers:future"] = fpb.FeatureValue(status=7)  # type: ignore[arg-type]
    return pb.PredictionRecord(
        prediction_id="0b7c0c8e-5a43-4f55-9d4e-8a1f8d7a2f10",
        features=features,
        outputs=_values(),
        feature_views=[FeatureViewRef(name="drivers", version=2), FeatureViewRef()],
        served_at=served,
    )


def _printed(record: pb.PredictionRecord) -> dict[str, object]:
    return json_format.MessageToDict(record, preserving_proto_field_name=True)


def test_the_json_is_what_protobufs_printer_writes_for_every_kind() -> None:
    record = _record()
    features, outputs, views = (json.loads(text) for text in prediction_json(record))
    printed = _printed(record)

    # NaN is written as "NaN" by both, so the dicts compare equal as they are.
    assert features == printed["features"]
    assert outputs == printed["outputs"]
    assert views == printed["feature_views"]


def test_what_is_kept_parses_back_to_the_same_record() -> None:
    record = _record()
    features, outputs, views = (json.loads(text) for text in prediction_json(record))

    parsed = json_format.ParseDict(
        {"features": features, "outputs": outputs, "feature_views": views}, pb.PredictionRecord()
    )

    kept = pb.PredictionRecord()
    kept.CopyFrom(record)
    kept.ClearField("prediction_id")
    kept.ClearField("served_at")
    # NaN != NaN: compare the serialized bytes, which keep the same NaN bits.
    assert parsed.SerializeToString(deterministic=True) == kept.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize("number", [0.1, 16777217.0, 1e-38, 2.5e-45, 123456.789])
def test_a_float_is_written_as_the_shortest_text_of_its_float32(number: float) -> None:
    value = fpb.Value(float_list_value=fpb.FloatList(values=[number]))
    record = pb.PredictionRecord(outputs={"y": value})

    _, outputs, _ = prediction_json(record)

    assert json.loads(outputs) == _printed(record)["outputs"]
    assert fpb.FloatList(values=[json.loads(outputs)["y"]["float_list_value"]["values"][0]]) == (
        value.float_list_value
    )
