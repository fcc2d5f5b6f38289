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
    """One row's slice of an output tensor: a scalar, or a list for a vector (flattened)."""
    if row.ndim == 0:
        item = row.item()
        if isinstance(item, bool | np.bool_):
            return fpb.Value(bool_value=bool(item))
        if isinstance(item, int):
            return fpb.Value(int64_value=item)
        return fpb.Value(double_value=float(item))
    flat = row.ravel()
    if flat.dtype == np.bool_:
        return fpb.Value(bool_list_value=fpb.BoolList(values=flat.tolist()))
    if np.issubdtype(flat.dtype, np.integer):
        return fpb.Value(int64_list_value=fpb.Int64List(values=flat.tolist()))
    if flat.dtype == np.float64:
        return fpb.Value(double_list_value=fpb.DoubleList(values=flat.tolist()))
    return fpb.Value(float_list_value=fpb.FloatList(values=flat.astype(np.float32).tolist()))
