"""From rows to a model's input tensors: the plan of a version's feature bindings.

Pure: no I/O. Shared by the gateway's Predict and by batch prediction
(:mod:`strata.sdk.models.batch`), so that a row scored online and the same row
scored in batch meet the model as the same tensor. A version's ``FeatureBinding``s
say which features, in which order, fill the last dimension of each input tensor.
Each reference is one of

- ``<view>:<feature>`` of a view fed by a topic or a dataset: read by the caller for
  the row's entity (online: :mod:`strata.transforms.online`; in batch, point in
  time: :mod:`strata.transforms.batch`), unless the row supplies it under that
  reference;
- ``<view>:<feature>`` of a request-source view: computed from the columns the row
  supplies by the view's own transforms (:mod:`strata.transforms.request`), the
  same definition the batch and streaming paths run;
- ``request:<column>``: a number the row supplies, fed as it is.

:func:`plan` checks the bindings against the model and the views once, when the
version is loaded, so a row only needs its own values checked. A value of the wrong
kind is refused with :class:`InvalidArgumentError` naming the field and the kind
expected: the online key is the JSON of the entity's values, so ``42`` and ``"42"``
are different entities and a mistyped key must not be silently "not found".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import cached_property

import numpy as np
import numpy.typing as npt

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import FeatureView, RequestSource, ResolvedFeature
from strata.transforms.online import OnlineValue, Selection, select
from strata.transforms.request import request_features
from strata.transforms.streaming import EntityKey
from strata.transforms.types import ColumnType, FeatureStatus, Scalar

Array = npt.NDArray[np.generic]

DTYPES: Mapping[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""OIP datatype -> numpy dtype, for the fixed-size types (BYTES is not served yet)."""

KINDS = {
    ColumnType.INT64: "int64_value",
    ColumnType.DOUBLE: "double_value",
    ColumnType.STRING: "string_value",
    ColumnType.BOOL: "bool_value",
    ColumnType.TIMESTAMP: "timestamp_value",
}
"""The ``Value`` field holding each column type."""

NUMBER = ("int64_value", "double_value", "bool_value")
"""Kinds a number fed straight to a model (``request:<column>``) may arrive as."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: OIP datatype and shape, -1 where any size fits."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def fits(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def example(self) -> Array:
        """Zeros of this tensor's shape (1 where any size fits): a warm-up input."""
        return np.zeros([1 if d < 0 else d for d in self.shape], dtype=DTYPES[self.datatype])


def typed(value: fpb.Value, kinds: tuple[str, ...], field: str, what: str) -> Scalar:
    """The Python value of ``value`` if it is null or one of ``kinds``, else refused."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind not in kinds:
        raise InvalidArgumentError(field, f"{what}: expected {' or '.join(kinds)}, got {kind}")
    if kind == "timestamp_value":
        moment: datetime = value.timestamp_value.ToDatetime(tzinfo=UTC)
        return moment
    result: Scalar = getattr(value, kind)
    return result


REQUEST = "request"
"""The pseudo-view of ``request:<column>``: a value the caller sends, fed as is."""

_FLOATS = ("FP16", "FP32", "FP64")
_NUMERIC_INPUTS = (*_FLOATS, "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32")
_NUMERIC_FEATURES = (ColumnType.INT64, ColumnType.DOUBLE, ColumnType.BOOL)


class Origin(Enum):
    """Where a slot's value comes from."""

    ONLINE = "online"
    REQUEST_VIEW = "request_view"
    REQUEST = "request"


@dataclass(frozen=True)
class Slot:
    """One position of an input's last dimension."""

    ref: str
    view: str
    name: str
    origin: Origin
    type: ColumnType | None
    """The feature's type; None for ``request:<column>`` (any number)."""


@dataclass(frozen=True)
class BoundInput:
    """An input tensor and the features filling it, in order."""

    spec: TensorSpec
    slots: tuple[Slot, ...]


@dataclass(frozen=True)
class ViewUse:
    """A view a version reads, at the version it was read from the catalog."""

    view: FeatureView
    version: int


@dataclass(frozen=True)
class FeaturePlan:
    """How a model version's inputs are filled; see the module docstring.

    What every prediction would otherwise work out again from the bindings (the
    views read, the features of each, where each lands) is worked out on first
    use and kept: a plan lives as long as its model version, and a row scored
    online should cost the plan's walk through the slots and nothing more.
    """

    inputs: tuple[BoundInput, ...]
    views: Mapping[str, ViewUse]

    @cached_property
    def online_views(self) -> tuple[str, ...]:
        """The views read from the online store, in order of first use."""
        return self._views_of(Origin.ONLINE)

    @cached_property
    def request_views(self) -> tuple[str, ...]:
        """The request-source views, in order of first use."""
        return self._views_of(Origin.REQUEST_VIEW)

    def features_of(self, view: str) -> tuple[str, ...]:
        """The features of ``view`` the inputs use, each once."""
        return self._features.get(view, ())

    @cached_property
    def selections(self) -> Mapping[str, Selection]:
        """The online read of each online view (:func:`strata.transforms.online.select`)."""
        return {
            name: select(self.views[name].view, self._features[name]) for name in self.online_views
        }

    @cached_property
    def positions(self) -> Mapping[str, Mapping[str, int]]:
        """Where each feature of a view sits among ``features_of(view)``."""
        return {view: {f: i for i, f in enumerate(found)} for view, found in self._features.items()}

    @cached_property
    def entity_columns(self) -> Mapping[str, tuple[tuple[str, str], ...]]:
        """Each view's key columns with the ``Value`` kind each must arrive as."""
        return {
            name: tuple((column, KINDS[use.view.columns[column]]) for column in use.view.entities)
            for name, use in self.views.items()
        }

    @cached_property
    def _features(self) -> Mapping[str, tuple[str, ...]]:
        found: dict[str, dict[str, None]] = {}
        for bound in self.inputs:
            for slot in bound.slots:
                found.setdefault(slot.view, {})[slot.name] = None
        return {view: tuple(names) for view, names in found.items()}

    def _views_of(self, origin: Origin) -> tuple[str, ...]:
        found = [s.view for b in self.inputs for s in b.slots if s.origin is origin]
        return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class Featurized:
    """What a batch of rows became: the model's feeds, and each row's features as served."""

    feeds: dict[str, Array]
    served: list[dict[str, OnlineValue]]


def bound_views(bindings: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The feature views ``bindings`` (input name, references) name, in order of first use."""
    names = (ref.partition(":")[0] for _, refs in bindings for ref in refs)
    return list(dict.fromkeys(name for name in names if name not in ("", REQUEST)))


def plan(
    bindings: Sequence[tuple[str, Sequence[str]]],
    inputs: Sequence[TensorSpec],
    views: Mapping[str, ViewUse],
) -> FeaturePlan:
    """The plan of ``bindings`` (input name, references) for a model with ``inputs``.

    Raises ValueError naming the binding at fault: a refused version keeps the
    previous one serving.
    """
    by_name = {spec.name: spec for spec in inputs}
    bound: list[BoundInput] = []
    for input_name, refs in bindings:
        spec = by_name.get(input_name)
        if spec is None:
            raise ValueError(
                f"a feature binding names input {input_name!r}, not one of the model's"
            )
        if spec.datatype not in _NUMERIC_INPUTS and spec.datatype != "BOOL":
            raise ValueError(f"input {input_name!r} is {spec.datatype}: features fill numbers")
        if len(spec.shape) != 2 or spec.shape[1] not in (-1, len(refs)):
            raise ValueError(
                f"input {input_name!r} has shape {list(spec.shape)}; its binding fills "
                f"[rows, {len(refs)}]"
            )
        bound.append(BoundInput(spec, tuple(_slot(ref, views) for ref in refs)))
    unbound = sorted(set(by_name) - {b.spec.name for b in bound})
    if unbound:
        raise ValueError(f"inputs {unbound} have no feature binding")
    return FeaturePlan(tuple(bound), dict(views))


def _slot(ref: str, views: Mapping[str, ViewUse]) -> Slot:
    view_name, _, name = ref.partition(":")
    if not view_name or not name:
        raise ValueError(
            f"feature reference {ref!r} is not '<view>:<feature>' or 'request:<column>'"
        )
    if view_name == REQUEST:
        return Slot(ref, view_name, name, Origin.REQUEST, None)
    use = views.get(view_name)
    if use is None:
        raise ValueError(f"feature reference {ref!r}: view {view_name!r} was not loaded")
    feature = _feature(use.view, name)
    if feature is None:
        raise ValueError(f"feature reference {ref!r}: view {view_name!r} has no such feature")
    if feature.type not in _NUMERIC_FEATURES:
        raise ValueError(f"feature {ref!r} is {feature.type.value}: a model input takes numbers")
    if isinstance(use.view.source, RequestSource):
        if feature.function is not None:
            raise ValueError(f"feature {ref!r} aggregates a window, which a request cannot carry")
        return Slot(ref, view_name, name, Origin.REQUEST_VIEW, feature.type)
    return Slot(ref, view_name, name, Origin.ONLINE, feature.type)


def _feature(view: FeatureView, name: str) -> ResolvedFeature | None:
    return next((f for f in view.resolved_features if f.name == name), None)


def entity_keys(plan: FeaturePlan, rows: Sequence[gpb.PredictRow]) -> dict[str, list[EntityKey]]:
    """Each online view's entity key for every row, checked against the view's key types."""
    return {
        name: [_entity_key(plan, name, row, index) for index, row in enumerate(rows)]
        for name in plan.online_views
    }


def _entity_key(plan: FeaturePlan, name: str, row: gpb.PredictRow, index: int) -> EntityKey:
    given = row.entity_keys
    key: list[Scalar] = []
    for column, kind in plan.entity_columns[name]:
        value = given.get(column)
        if value is not None and kind != "timestamp_value" and value.WhichOneof("kind") == kind:
            key.append(getattr(value, kind))  # a key of the expected kind: most calls
        else:
            key.append(_key_value(plan.views[name].view, value, column, kind, index))
    return tuple(key)


def _key_value(
    view: FeatureView, value: fpb.Value | None, column: str, kind: str, index: int
) -> Scalar:
    """A key column's value taken the long way: a timestamp, or refused naming the field."""
    field = f"rows[{index}].entity_keys[{column}]"
    if value is None:
        raise InvalidArgumentError(
            field,
            f"missing: feature view {view.name!r} is keyed by {', '.join(view.entities)} "
            f"(expected {kind})",
        )
    found = typed(value, (kind,), field, f"key of feature view {view.name!r}")
    if found is None:
        raise InvalidArgumentError(field, f"expected {kind}, got null")
    return found


def request_rows(
    plan: FeaturePlan, rows: Sequence[gpb.PredictRow]
) -> dict[str, list[dict[str, Scalar]]]:
    """Each request-source view's source columns for every row, checked against their types:
    its entity key columns from the row's entity keys, the others from its values."""
    found: dict[str, list[dict[str, Scalar]]] = {}
    for name in plan.request_views:
        view = plan.views[name].view
        keys = set(view.entities)
        found[name] = []
        for index, row in enumerate(rows):
            key = dict(zip(view.entities, _entity_key(plan, name, row, index), strict=True))
            found[name].append(
                {
                    column.name: key[column.name]
                    if column.name in keys
                    else _supplied(row, index, column.name, (KINDS[column.type],))
                    for column in view.source_columns
                }
            )
    return found


def _supplied(row: gpb.PredictRow, index: int, column: str, kinds: tuple[str, ...]) -> Scalar:
    field = f"rows[{index}].features[{column}]"
    if column not in row.features:
        raise InvalidArgumentError(
            field, f"missing: a request value (expected {' or '.join(kinds)})"
        )
    return typed(row.features[column], kinds, field, "request value")


def featurize(
    plan: FeaturePlan,
    rows: Sequence[gpb.PredictRow],
    stored: Mapping[str, Sequence[Sequence[OnlineValue]]],
) -> Featurized:
    """The input tensors of ``rows``, given the stored features the caller read for them.

    ``stored[view][row]`` holds the values of ``plan.features_of(view)`` in order, for
    every view of ``plan.online_views`` (read online by Predict, point in time by batch
    prediction); request-time features are computed here from the rows' values.
    """
    computed = (
        {
            name: request_features(plan.views[name].view, values)
            for name, values in request_rows(plan, rows).items()
        }
        if plan.request_views
        else {}
    )
    return assemble(plan, rows, stored, computed)


def assemble(
    plan: FeaturePlan,
    rows: Sequence[gpb.PredictRow],
    online: Mapping[str, Sequence[Sequence[OnlineValue]]],
    computed: Mapping[str, Sequence[Mapping[str, Scalar]]],
) -> Featurized:
    """The input tensors in binding order, and the features each row was served.

    ``online[view][row]`` holds the values of ``plan.features_of(view)`` in order;
    ``computed[view][row]`` the request-time features by name. A row's value under
    a feature's own reference replaces the stored one.
    """
    positions = plan.positions
    served: list[dict[str, OnlineValue]] = [{} for _ in rows]
    feeds: dict[str, Array] = {}
    for bound in plan.inputs:
        matrix: list[list[float]] = []
        for index, row in enumerate(rows):
            values: list[float] = []
            for slot in bound.slots:
                value = _served(slot, row, index, online, computed, positions)
                served[index][slot.ref] = value
                values.append(_number(value.value, slot, bound.spec, index))
            matrix.append(values)
        feeds[bound.spec.name] = _tensor(matrix, bound, len(rows))
    return Featurized(feeds, served)


def _tensor(matrix: list[list[float]], bound: BoundInput, rows: int) -> Array:
    """``matrix`` as ``bound``'s input tensor: floats straight in its type (a double to a
    float rounds alike either way), other types through doubles, as they always were."""
    dtype = DTYPES[bound.spec.datatype]
    if bound.spec.datatype in _FLOATS:
        return np.array(matrix, dtype=dtype).reshape(rows, len(bound.slots))
    return np.asarray(matrix, dtype=np.float64).reshape(rows, len(bound.slots)).astype(dtype)


def _served(
    slot: Slot,
    row: gpb.PredictRow,
    index: int,
    online: Mapping[str, Sequence[Sequence[OnlineValue]]],
    computed: Mapping[str, Sequence[Mapping[str, Scalar]]],
    positions: Mapping[str, Mapping[str, int]],
) -> OnlineValue:
    if slot.origin is Origin.REQUEST:
        return OnlineValue(_supplied(row, index, slot.name, NUMBER), None, FeatureStatus.PRESENT)
    if slot.ref in row.features:
        assert slot.type is not None
        kinds = NUMBER if slot.type is ColumnType.DOUBLE else (KINDS[slot.type],)
        return OnlineValue(_supplied(row, index, slot.ref, kinds), None, FeatureStatus.PRESENT)
    if slot.origin is Origin.REQUEST_VIEW:
        return OnlineValue(computed[slot.view][index][slot.name], None, FeatureStatus.PRESENT)
    return online[slot.view][index][positions[slot.view][slot.name]]


def _number(value: Scalar, slot: Slot, spec: TensorSpec, index: int) -> float:
    if value is None:
        if spec.datatype in _FLOATS:
            return float("nan")
        raise InvalidArgumentError(
            f"rows[{index}]",
            f"feature {slot.ref!r} has no value and declares no default; input "
            f"{spec.name!r} ({spec.datatype}) cannot hold a null",
        )
    if type(value) is float or type(value) is int:  # exactly these: most calls
        return float(value)
    if isinstance(value, datetime | str):
        raise InvalidArgumentError(f"rows[{index}]", f"feature {slot.ref!r} is not a number")
    return float(value)
