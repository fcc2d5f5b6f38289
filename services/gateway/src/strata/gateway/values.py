"""Python scalars and model outputs to feature ``Value`` messages, for answers and the log.

Pure: no I/O. Reading a ``Value`` a caller sent, checked against the kind expected,
is :func:`strata.transforms.featurize.typed`, shared with batch prediction.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from strata.api.features.v1 import features_pb2 as fpb
from strata.transforms.featurize import Array
from strata.transforms.spec import value_of
from strata.transforms.types import FeatureStatus, Scalar

STATUSES = {
    FeatureStatus.PRESENT: fpb.FEATURE_STATUS_PRESENT,
    FeatureStatus.NOT_FOUND: fpb.FEATURE_STATUS_NOT_FOUND,
    FeatureStatus.EXPIRED: fpb.FEATURE_STATUS_EXPIRED,
}


def feature_value(
    value: Scalar, event_time: datetime | None, status: FeatureStatus
) -> fpb.FeatureValue:
    """A feature as served, for the prediction log."""
    message = fpb.FeatureValue(value=value_of(value), status=STATUSES[status])
    if event_time is not None:
        message.event_time.FromDatetime(event_time)
    return message


def output_value(row: Array) -> fpb.Value:
    """One row's slice of an output tensor as a new ``Value`` (see :func:`put_output`)."""
    value = fpb.Value()
    put_output(value, row)
    return value


def put_output(target: fpb.Value, row: Array) -> None:
    """Set ``target`` to one row's slice of an output tensor: a scalar, or a list for a
    vector (flattened).

    In place, so an answer is written straight into the reply: building ``Value``
    messages and then copying them into it cost Predict more than its model run
    (bench/README.md).
    """
    if row.ndim == 0:
        item = row.item()
        if isinstance(item, bool | np.bool_):
            target.bool_value = bool(item)
        elif isinstance(item, int):
            target.int64_value = item
        else:
            target.double_value = float(item)
        return
    flat = row.ravel()
    kind = flat.dtype.kind  # by kind letter: np.issubdtype costs more than the rest of this
    listed: fpb.BoolList | fpb.Int64List | fpb.DoubleList | fpb.FloatList
    if kind == "b":
        listed = target.bool_list_value
    elif kind in ("i", "u"):
        listed = target.int64_list_value
    elif kind == "f" and flat.dtype.itemsize == 8:
        listed = target.double_list_value
    else:
        listed = target.float_list_value
        flat = flat.astype(np.float32, copy=False)
    listed.values.extend(flat.tolist())  # sets the oneof even when empty
