"""A feature view, declared once as data and checked before any path runs it.

A ``FeatureView`` says which entity it describes (key columns), where its rows
come from (a Kafka topic whose offline copy is the dataset of the same name, a
dataset, or columns supplied with each request), which row-level transforms
derive new columns (``strata.transforms.expressions``), and which features it
offers: a column of the latest row, or an aggregation of a column over a sliding
event-time window. The batch, streaming and request-time executors take nothing
else, so they cannot disagree about what a feature means.

Construction validates everything; an invalid view cannot exist. Each error is an
``InvalidArgumentError`` whose field names the view and the part at fault, e.g.
``feature_view[courier_stats].features[deliveries_7d].window``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

from strata.core.errors import InvalidArgumentError
from strata.transforms.durations import parse_duration
from strata.transforms.expressions import CompiledExpression, ExpressionError, compile_expression
from strata.transforms.types import ColumnType, Scalar

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Column:
    """A named, typed column."""

    name: str
    type: ColumnType


@dataclass(frozen=True)
class TopicSource:
    """Rows are raw events on a Kafka topic; their offline copy is the dataset ``topic``."""

    topic: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class DatasetSource:
    """Rows are the partitions of a dataset (batch path only)."""

    dataset: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class RequestSource:
    """Rows are the values a caller supplies with each request."""

    columns: tuple[Column, ...]


Source = TopicSource | DatasetSource | RequestSource


@dataclass(frozen=True)
class Transform:
    """A derived column: ``name`` is the value of ``expression`` for each row."""

    name: str
    expression: str


class AggregationFunction(enum.Enum):
    """An aggregate over the rows of a window (nulls are ignored, except by COUNT)."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"


@dataclass(frozen=True)
class Aggregation:
    """``function`` over the rows whose event time is in ``(at - window, at]``."""

    function: AggregationFunction
    window: str | timedelta


@dataclass(frozen=True)
class Feature:
    """A feature of a view.

    Without ``aggregation`` it is ``column`` (the feature's own name when None) of
    the entity's latest row. With one, it aggregates ``column`` over a window;
    COUNT needs no column. ``default`` is served when the entity has no row, its
    value expired (TTL), or the value is null.
    """

    name: str
    column: str | None = None
    aggregation: Aggregation | None = None
    default: Scalar = None


@dataclass(frozen=True)
class ResolvedFeature:
    """A feature after validation: its input column, result type and window in microseconds."""

    name: str
    column: str | None
    type: ColumnType
    function: AggregationFunction | None
    window_us: int | None
    default: Scalar


@dataclass(frozen=True)
class FeatureView:
    """One feature view; see the module docstring. Validated on construction."""

    name: str
    entities: tuple[str, ...]
    source: Source
    features: tuple[Feature, ...]
    event_time: str = ""
    transforms: tuple[Transform, ...] = ()
    ttl: str | timedelta | None = None
    allowed_lateness: str | timedelta = "0s"
    description: str = ""
    owner: str = ""
    allowed_groups: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        resolved = _Resolver(self).resolve()
        object.__setattr__(self, "_resolved", resolved)

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def columns(self) -> Mapping[str, ColumnType]:
        """Source columns then transformed columns, with their types."""
        return self._parts.columns

    @property
    def source_columns(self) -> tuple[Column, ...]:
        """The columns each source row carries."""
        return self.source.columns

    @property
    def compiled_transforms(self) -> tuple[tuple[str, CompiledExpression], ...]:
        """The transforms, compiled, in declaration order."""
        return self._parts.transforms

    @property
    def resolved_features(self) -> tuple[ResolvedFeature, ...]:
        """The features with their input columns, types and windows."""
        return self._parts.features

    @property
    def ttl_us(self) -> int | None:
        """How long a value stays valid after its event time, in microseconds; None: forever."""
        return self._parts.ttl_us

    @property
    def lateness_us(self) -> int:
        """How far behind the entity's latest event time an event may arrive and count."""
        return self._parts.lateness_us

    @property
    def max_window_us(self) -> int:
        """The longest window of any aggregation (0 when there is none)."""
        return self._parts.max_window_us

    @property
    def _parts(self) -> _Resolved:
        resolved: _Resolved = self.__dict__["_resolved"]
        return resolved


@dataclass(frozen=True)
class _Resolved:
    columns: Mapping[str, ColumnType]
    transforms: tuple[tuple[str, CompiledExpression], ...]
    features: tuple[ResolvedFeature, ...]
    ttl_us: int | None
    lateness_us: int
    max_window_us: int
    """Kept rather than computed per call: the streaming path asks for it per event."""


_RESULT_TYPES: dict[AggregationFunction, tuple[ColumnType, ...]] = {
    AggregationFunction.SUM: (ColumnType.INT64, ColumnType.DOUBLE),
    AggregationFunction.MEAN: (ColumnType.INT64, ColumnType.DOUBLE),
    AggregationFunction.MIN: (ColumnType.INT64, ColumnType.DOUBLE),
    AggregationFunction.MAX: (ColumnType.INT64, ColumnType.DOUBLE),
}


class _Resolver:
    """Checks a view field by field, raising on the first fault with its path."""

    def __init__(self, view: FeatureView) -> None:
        self._view = view

    def fail(self, path: str, message: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"feature_view[{self._view.name}]{path}", f"feature view {self._view.name!r}: {message}"
        )

    def resolve(self) -> _Resolved:
        view = self._view
        if not _NAME.match(view.name):
            raise InvalidArgumentError(
                "feature_view.name",
                f"{view.name!r} is not a view name: lower-case letters, digits and '_', "
                "starting with a letter, at most 63 characters",
            )
        columns = self._source_columns()
        self._entities(columns)
        request = isinstance(view.source, RequestSource)
        self._event_time(columns, request)
        transforms = self._transforms(columns)
        ttl_us = self._duration(".ttl", view.ttl) if view.ttl is not None else None
        lateness_us = self._duration(".allowed_lateness", view.allowed_lateness, zero=True)
        features = self._features(columns, request, ttl_us)
        longest = max((f.window_us or 0 for f in features), default=0)
        return _Resolved(
            MappingProxyType(columns), transforms, features, ttl_us, lateness_us, longest
        )

    def _source_columns(self) -> dict[str, ColumnType]:
        columns: dict[str, ColumnType] = {}
        for column in self._view.source.columns:
            path = f".source.columns[{column.name}]"
            if not _NAME.match(column.name):
                raise self.fail(path, f"{column.name!r} is not a column name")
            if column.name in columns:
                raise self.fail(path, f"column {column.name!r} is declared twice")
            columns[column.name] = column.type
        if not columns:
            raise self.fail(".source.columns", "the source declares no columns")
        return columns

    def _entities(self, columns: Mapping[str, ColumnType]) -> None:
        if not self._view.entities:
            raise self.fail(".entities", "a view needs at least one entity key column")
        for key in self._view.entities:
            kind = columns.get(key)
            if kind is None:
                raise self.fail(
                    f".entities[{key}]", f"entity key {key!r} is missing from the source"
                )
            if kind not in (ColumnType.INT64, ColumnType.STRING):
                raise self.fail(
                    f".entities[{key}]",
                    f"entity key {key!r} is {kind.value}; expected int64 or string",
                )

    def _event_time(self, columns: Mapping[str, ColumnType], request: bool) -> None:
        name = self._view.event_time
        if request and not name:
            return
        kind = columns.get(name)
        if kind is None:
            raise self.fail(".event_time", f"event time column {name!r} is missing from the source")
        if kind is not ColumnType.TIMESTAMP:
            raise self.fail(
                ".event_time", f"event time column {name!r} is {kind.value}, not timestamp"
            )

    def _transforms(
        self, columns: dict[str, ColumnType]
    ) -> tuple[tuple[str, CompiledExpression], ...]:
        compiled: list[tuple[str, CompiledExpression]] = []
        for transform in self._view.transforms:
            path = f".transforms[{transform.name}]"
            if not _NAME.match(transform.name):
                raise self.fail(path, f"{transform.name!r} is not a column name")
            if transform.name in columns:
                raise self.fail(path, f"column {transform.name!r} exists already")
            try:
                expression = compile_expression(transform.expression, columns)
            except ExpressionError as error:
                raise self.fail(f"{path}.expression", str(error)) from None
            columns[transform.name] = expression.type
            compiled.append((transform.name, expression))
        return tuple(compiled)

    def _duration(self, path: str, value: str | timedelta, zero: bool = False) -> int:
        micros = parse_duration(value, zero)
        if micros is None:
            least = "zero or more" if zero else "a positive whole number of"
            raise self.fail(
                path, f"{value!r} is not a duration ({least} us, ms, s, m, h, d or w, e.g. '7d')"
            )
        return micros

    def _features(
        self, columns: Mapping[str, ColumnType], request: bool, ttl_us: int | None
    ) -> tuple[ResolvedFeature, ...]:
        if not self._view.features:
            raise self.fail(".features", "a view needs at least one feature")
        resolved: list[ResolvedFeature] = []
        for feature in self._view.features:
            path = f".features[{feature.name}]"
            if not _NAME.match(feature.name):
                raise self.fail(path, f"{feature.name!r} is not a feature name")
            if any(r.name == feature.name for r in resolved):
                raise self.fail(path, f"feature {feature.name!r} is declared twice")
            resolved.append(self._feature(feature, path, columns, request, ttl_us))
        return tuple(resolved)

    def _feature(
        self,
        feature: Feature,
        path: str,
        columns: Mapping[str, ColumnType],
        request: bool,
        ttl_us: int | None,
    ) -> ResolvedFeature:
        aggregation = feature.aggregation
        counting = aggregation is not None and aggregation.function is AggregationFunction.COUNT
        column = feature.column if (feature.column or counting) else feature.name
        kind = columns.get(column) if column else None
        if column and kind is None:
            raise self.fail(f"{path}.column", f"unknown column {column!r}")
        if aggregation is None:
            assert kind is not None
            return self._checked(
                path,
                feature,
                ResolvedFeature(feature.name, column, kind, None, None, feature.default),
            )
        if request:
            raise self.fail(
                f"{path}.aggregation", "request-time views have no windows to aggregate"
            )
        window_us = self._duration(f"{path}.window", aggregation.window)
        if ttl_us is not None and ttl_us < window_us:
            raise self.fail(
                ".ttl", f"the TTL is shorter than the window of feature {feature.name!r}"
            )
        function = aggregation.function
        if function is AggregationFunction.COUNT:
            result = ColumnType.INT64
        else:
            assert kind is not None
            allowed = _RESULT_TYPES.get(function)
            if allowed is not None and kind not in allowed:
                raise self.fail(
                    f"{path}.column",
                    f"{function.value} needs an int64 or double column; {column!r} is {kind.value}",
                )
            result = ColumnType.DOUBLE if function is AggregationFunction.MEAN else kind
        return self._checked(
            path,
            feature,
            ResolvedFeature(feature.name, column, result, function, window_us, feature.default),
        )

    def _checked(self, path: str, feature: Feature, resolved: ResolvedFeature) -> ResolvedFeature:
        if not resolved.type.accepts(feature.default):
            raise self.fail(
                f"{path}.default", f"default {feature.default!r} is not a {resolved.type.value}"
            )
        if resolved.type is ColumnType.DOUBLE and isinstance(feature.default, int):
            return ResolvedFeature(
                resolved.name,
                resolved.column,
                resolved.type,
                resolved.function,
                resolved.window_us,
                float(feature.default),
            )
        return resolved
