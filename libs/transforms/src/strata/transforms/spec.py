"""Conversion between a ``FeatureView`` and the ``FeatureViewSpec`` of the API.

The spec is how a view travels (the SDK applies it, the streamer stores and
versions it, the gateway loads it); the dataclass is how every path runs it.
``view_from_spec`` validates like the constructor does, and also checks what only
the spec states: each declared type must be the type the view computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration

from strata.api.features.v1 import features_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    DatasetSource,
    Feature,
    FeatureView,
    RequestSource,
    Source,
    TopicSource,
    Transform,
)
from strata.transforms.types import ColumnType, Scalar

_TYPES = {
    ColumnType.INT64: pb.VALUE_TYPE_INT64,
    ColumnType.DOUBLE: pb.VALUE_TYPE_DOUBLE,
    ColumnType.STRING: pb.VALUE_TYPE_STRING,
    ColumnType.BOOL: pb.VALUE_TYPE_BOOL,
    ColumnType.TIMESTAMP: pb.VALUE_TYPE_TIMESTAMP,
}
_FROM_TYPES = {value: key for key, value in _TYPES.items()}
_FUNCTIONS = {
    AggregationFunction.COUNT: pb.AGGREGATION_FUNCTION_COUNT,
    AggregationFunction.SUM: pb.AGGREGATION_FUNCTION_SUM,
    AggregationFunction.MEAN: pb.AGGREGATION_FUNCTION_MEAN,
    AggregationFunction.MIN: pb.AGGREGATION_FUNCTION_MIN,
    AggregationFunction.MAX: pb.AGGREGATION_FUNCTION_MAX,
    AggregationFunction.LAST: pb.AGGREGATION_FUNCTION_LAST,
}
_FROM_FUNCTIONS = {value: key for key, value in _FUNCTIONS.items()}


def view_to_spec(view: FeatureView) -> pb.FeatureViewSpec:
    """The spec of a (valid) view; durations exact to the microsecond."""
    spec = pb.FeatureViewSpec(
        name=view.name,
        description=view.description,
        event_time_column=view.event_time,
        owner=view.owner,
        allowed_groups=list(view.allowed_groups),
        labels=dict(view.labels),
    )
    for key in view.entities:
        spec.entities.add(name=key, type=_TYPES[view.columns[key]])
    columns = [pb.Field(name=c.name, type=_TYPES[c.type]) for c in view.source_columns]
    if isinstance(view.source, TopicSource):
        spec.source.topic = view.source.topic
        spec.source.columns.extend(columns)
    elif isinstance(view.source, DatasetSource):
        spec.source.dataset = view.source.dataset
        spec.source.columns.extend(columns)
    else:
        spec.source.request.columns.extend(columns)
    for transform in view.transforms:
        spec.transforms.add(name=transform.name, expression=transform.expression)
    for feature in view.resolved_features:
        message = spec.features.add(
            name=feature.name,
            type=_TYPES[feature.type],
            column=feature.column or "",
            default_value=value_of(feature.default),
        )
        if feature.function is not None and feature.window_us is not None:
            message.aggregation.function = _FUNCTIONS[feature.function]
            message.aggregation.window.CopyFrom(_duration(feature.window_us))
        if feature.function is None and feature.column == feature.name:
            message.column = ""
    if view.ttl_us is not None:
        spec.ttl.CopyFrom(_duration(view.ttl_us))
    if view.lateness_us:
        spec.allowed_lateness.CopyFrom(_duration(view.lateness_us))
    return spec


def view_from_spec(spec: pb.FeatureViewSpec) -> FeatureView:
    """The view a spec declares; InvalidArgumentError naming the field when it is wrong."""
    where = f"feature_view[{spec.name}]"
    if spec.transform:
        raise InvalidArgumentError(
            f"{where}.transform",
            f"feature view {spec.name!r}: code-bundle transforms are not supported; "
            "declare row-level transforms as expressions in `transforms`",
        )
    features = tuple(_feature(where, message) for message in spec.features)
    view = FeatureView(
        name=spec.name,
        entities=tuple(field.name for field in spec.entities),
        source=_source(where, spec.source),
        features=features,
        event_time=spec.event_time_column,
        transforms=tuple(Transform(t.name, t.expression) for t in spec.transforms),
        ttl=_timedelta(spec.ttl) if spec.HasField("ttl") else None,
        allowed_lateness=(
            _timedelta(spec.allowed_lateness) if spec.HasField("allowed_lateness") else "0s"
        ),
        description=spec.description,
        owner=spec.owner,
        allowed_groups=tuple(spec.allowed_groups),
        labels=dict(spec.labels),
    )
    for field in spec.entities:
        _same_type(f"{where}.entities[{field.name}]", field.type, view.columns[field.name])
    for message, resolved in zip(spec.features, view.resolved_features, strict=True):
        _same_type(f"{where}.features[{message.name}].type", message.type, resolved.type)
    return view


def _source(where: str, source: pb.Source) -> Source:
    kind = source.WhichOneof("kind")
    if kind == "request":
        return RequestSource(_columns(f"{where}.source.request.columns", source.request.columns))
    columns = _columns(f"{where}.source.columns", source.columns)
    if kind == "topic":
        return TopicSource(source.topic, columns)
    if kind == "dataset":
        return DatasetSource(source.dataset, columns)
    raise InvalidArgumentError(f"{where}.source", "set one of topic, dataset or request")


def _columns(where: str, fields: Iterable[pb.Field]) -> tuple[Column, ...]:
    columns = []
    for field in fields:
        columns.append(Column(field.name, _column_type(f"{where}[{field.name}]", field.type)))
    return tuple(columns)


def _column_type(where: str, value: pb.ValueType.ValueType) -> ColumnType:
    kind = _FROM_TYPES.get(value)
    if kind is None:
        supported = ", ".join(pb.ValueType.Name(v) for v in _FROM_TYPES)
        raise InvalidArgumentError(
            where, f"type {pb.ValueType.Name(value)} is not supported (supported: {supported})"
        )
    return kind


def _same_type(where: str, declared: pb.ValueType.ValueType, computed: ColumnType) -> None:
    if _column_type(where, declared) is not computed:
        raise InvalidArgumentError(
            where, f"declared {pb.ValueType.Name(declared)}, but the view computes {computed.value}"
        )


def _feature(where: str, message: pb.Feature) -> Feature:
    aggregation = None
    if message.HasField("aggregation"):
        function = _FROM_FUNCTIONS.get(message.aggregation.function)
        if function is None:
            raise InvalidArgumentError(
                f"{where}.features[{message.name}].aggregation.function",
                "set one of COUNT, SUM, MEAN, MIN, MAX, LAST",
            )
        aggregation = Aggregation(function, _timedelta(message.aggregation.window))
    default = _scalar(f"{where}.features[{message.name}].default_value", message.default_value)
    return Feature(message.name, message.column or None, aggregation, default)


def value_of(value: Scalar) -> pb.Value:
    """The ``Value`` of a Python scalar (None: an unset kind, which means null); the one
    conversion the streamer, the gateway and batch prediction answer with."""
    if value is None:
        return pb.Value()
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int64_value=value)
    if isinstance(value, float):
        return pb.Value(double_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    message = pb.Value()
    message.timestamp_value.FromDatetime(value)
    return message


def _scalar(where: str, value: pb.Value) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "timestamp_value":
        moment: datetime = value.timestamp_value.ToDatetime(tzinfo=UTC)
        return moment
    if kind in ("int64_value", "double_value", "string_value", "bool_value"):
        scalar: Scalar = getattr(value, kind)
        return scalar
    raise InvalidArgumentError(where, f"a default of kind {kind} is not supported")


def _duration(micros: int) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(microseconds=micros))
    return duration


def _timedelta(duration: Duration) -> timedelta:
    value: timedelta = duration.ToTimedelta()
    return value
