"""Feature views declared the way Feast and Tecton users write them.

An ``Entity`` names the join keys, a ``Topic``/``Dataset``/``Request`` source
carries a schema of ``Field``, ``transforms`` derive columns by expression,
``Latest`` serves a column of the entity's latest row and ``Aggregate`` a column
over a sliding window. The SDK adds only the spelling: each ``FeatureView``
compiles at once to ``strata.transforms.FeatureView`` (which validates it, with
errors naming the view and field) and travels as that view's
``FeatureViewSpec``, so the streamer, the batch path and the gateway run exactly
the definition written here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from strata.api.features.v1 import features_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.transforms import definition as td
from strata.transforms.durations import format_duration, parse_duration
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType, Scalar

Int64 = ColumnType.INT64
Float64 = ColumnType.DOUBLE
String = ColumnType.STRING
Bool = ColumnType.BOOL
Timestamp = ColumnType.TIMESTAMP


@dataclass(frozen=True)
class Entity:
    """What a view describes, identified by its ``join_keys`` (default: ``name``)."""

    name: str
    join_keys: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The source columns identifying one entity."""
        return self.join_keys or (self.name,)


@dataclass(frozen=True)
class Field:
    """A column of a source's schema."""

    name: str
    dtype: ColumnType


@dataclass(frozen=True)
class Topic:
    """Raw events on a Kafka topic; its offline copy is the dataset of the same name."""

    topic: str
    schema: Sequence[Field]


@dataclass(frozen=True)
class Dataset:
    """Partitions of a dataset announced by DataArrived (batch path only)."""

    name: str
    schema: Sequence[Field]


@dataclass(frozen=True)
class Request:
    """Columns a caller supplies with each request (request-time features)."""

    schema: Sequence[Field]


@dataclass(frozen=True)
class Latest:
    """Feature ``name``: ``column`` (default ``name``) of the entity's latest row."""

    name: str
    column: str | None = None
    default: Scalar = None


@dataclass(frozen=True)
class Aggregate:
    """``function`` of ``column`` over rows in the last ``window`` (Tecton's Aggregation).

    ``function`` is count, sum, mean, min, max or last; count needs no column.
    ``name`` defaults to ``<column>_<function>_<window>``, e.g. ``minutes_sum_7d``
    (a ``timedelta`` window spelled shortest: ``timedelta(hours=2)`` is ``2h``).
    """

    function: str
    window: str | timedelta
    column: str | None = None
    name: str | None = None
    default: Scalar = None


class FeatureView:
    """A feature view; compiled and validated when constructed.

    ``InvalidArgumentError`` names the view and field at fault, e.g. an entity key
    missing from the source, an unknown column, a window that is not a duration.
    """

    def __init__(
        self,
        name: str,
        *,
        entities: Sequence[Entity],
        source: Topic | Dataset | Request,
        features: Sequence[Latest | Aggregate],
        event_time: str = "",
        transforms: Mapping[str, str] | None = None,
        ttl: str | timedelta | None = None,
        allowed_lateness: str | timedelta = "0s",
        description: str = "",
        owner: str = "",
        allowed_groups: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.definition = td.FeatureView(
            name=name,
            entities=tuple(key for entity in entities for key in entity.keys),
            source=_source(source),
            features=tuple(_feature(name, feature) for feature in features),
            event_time=event_time,
            transforms=tuple(td.Transform(k, v) for k, v in (transforms or {}).items()),
            ttl=ttl,
            allowed_lateness=allowed_lateness,
            description=description,
            owner=owner,
            allowed_groups=tuple(allowed_groups),
            labels=dict(labels or {}),
        )

    @property
    def name(self) -> str:
        """The view's name."""
        return self.definition.name

    def to_spec(self) -> pb.FeatureViewSpec:
        """The ``FeatureViewSpec`` the streamer applies."""
        return view_to_spec(self.definition)

    def __repr__(self) -> str:
        return f"FeatureView({self.name!r})"


def _source(source: Topic | Dataset | Request) -> td.Source:
    columns = tuple(td.Column(field.name, field.dtype) for field in source.schema)
    if isinstance(source, Topic):
        return td.TopicSource(source.topic, columns)
    if isinstance(source, Dataset):
        return td.DatasetSource(source.name, columns)
    return td.RequestSource(columns)


def _feature(view: str, feature: Latest | Aggregate) -> td.Feature:
    if isinstance(feature, Latest):
        return td.Feature(feature.name, feature.column, None, feature.default)
    try:
        function = td.AggregationFunction(feature.function.lower())
    except ValueError:
        label = feature.name or feature.column or feature.function
        raise InvalidArgumentError(
            f"feature_view[{view}].features[{label}].function",
            f"feature view {view!r}: {feature.function!r} is not one of "
            + ", ".join(f.value for f in td.AggregationFunction),
        ) from None
    name = feature.name or _default_name(feature, function)
    return td.Feature(
        name, feature.column, td.Aggregation(function, feature.window), feature.default
    )


def _default_name(feature: Aggregate, function: td.AggregationFunction) -> str:
    micros = parse_duration(feature.window)
    if micros is None:
        window = None  # no name part: the view then names the window at fault
    elif isinstance(feature.window, str):
        window = feature.window.strip()
    else:
        window = format_duration(micros)
    return "_".join(part for part in (feature.column, function.value, window) if part)
