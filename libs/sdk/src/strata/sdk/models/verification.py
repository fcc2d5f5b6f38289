"""Does the ONNX file compute what the framework model computes? Checked on sample rows.

Conversion to float32 ONNX changes arithmetic (and for trees, can move a row
across a split threshold), so outputs are compared within a tolerance:
``|onnx - framework| <= absolute + relative * |framework|`` elementwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime
from numpy.typing import NDArray
from sklearn.base import is_classifier  # type: ignore[import-untyped]

from strata.sdk.models.errors import OutputMismatchError
from strata.sdk.models.tolerance import Tolerance

_ERRORS_ONLY = 3
"""onnxmltools declares a LightGBM classifier's labels as shape [1]; ONNX Runtime warns per run."""


def verify(onnx: bytes, model: Any, sample: NDArray[np.float32], tolerance: Tolerance) -> None:
    """Raise :class:`OutputMismatchError` unless ONNX matches ``model`` on every sample row.

    Regressors: ONNX's first output against ``predict``. Classifiers: labels must
    be equal and probabilities within tolerance of ``predict_proba``.
    """
    options = onnxruntime.SessionOptions()
    options.log_severity_level = _ERRORS_ONLY
    session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: sample})
    names = [output.name for output in session.get_outputs()]
    if is_classifier(model):
        _compare(names[0], outputs[0], model.predict(sample), Tolerance(0.0, 0.0))
        _compare(names[1], outputs[1], model.predict_proba(sample), tolerance)
    else:
        _compare(names[0], outputs[0], model.predict(sample), tolerance)


def _compare(name: str, got: Any, expected: Any, tolerance: Tolerance) -> None:
    rows = np.asarray(expected).shape[0]
    actual = np.asarray(got).reshape(rows, -1)
    wanted = np.asarray(expected).reshape(rows, -1)
    if actual.shape != wanted.shape:
        raise OutputMismatchError(
            f"ONNX output {name!r} has shape {actual.shape}, the framework's {wanted.shape}",
            largest_difference=float("inf"),
            row=0,
        )
    if not np.issubdtype(wanted.dtype, np.number):
        unequal = actual != wanted
        if unequal.any():
            row = int(np.argwhere(unequal)[0][0])
            raise OutputMismatchError(
                f"ONNX output {name!r} differs from the framework's on sample row {row}: "
                f"{actual[row].tolist()} vs {wanted[row].tolist()}",
                largest_difference=float("inf"),
                row=row,
            )
        return
    difference = np.abs(actual.astype(np.float64) - wanted.astype(np.float64))
    allowed = tolerance.absolute + tolerance.relative * np.abs(wanted.astype(np.float64))
    if (difference <= allowed).all():
        return
    row, column = (int(i) for i in np.unravel_index(np.argmax(difference), difference.shape))
    largest = float(difference[row, column])
    raise OutputMismatchError(
        f"ONNX output {name!r} differs from the framework's by up to {largest:.6g} "
        f"(sample row {row}: {float(actual[row, column]):.6g} vs "
        f"{float(wanted[row, column]):.6g}); allowed {tolerance.absolute:g} + "
        f"{tolerance.relative:g} * |expected|",
        largest_difference=largest,
        row=row,
    )
