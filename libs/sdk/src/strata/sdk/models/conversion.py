"""scikit-learn or LightGBM model -> ONNX bytes, with the converters the ONNX project keeps.

skl2onnx converts scikit-learn estimators; onnxmltools converts LightGBM's
(its scikit-learn-style ``LGBMRegressor``/``LGBMClassifier``, which skl2onnx alone
does not know).

Inputs are float32, the type ONNX Runtime and the gateway serve; classifiers
get plain probability tensors instead of skl2onnx's default list of dicts
(ZipMap), so the file is servable as the Open Inference Protocol expects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from onnxmltools import convert_lightgbm  # type: ignore[import-untyped]
from onnxmltools.convert.common.data_types import FloatTensorType  # type: ignore[import-untyped]
from skl2onnx import to_onnx  # type: ignore[import-untyped]
from skl2onnx.common.exceptions import MissingShapeCalculator  # type: ignore[import-untyped]
from sklearn.base import BaseEstimator, is_classifier  # type: ignore[import-untyped]
from sklearn.exceptions import NotFittedError  # type: ignore[import-untyped]
from sklearn.utils.validation import check_is_fitted  # type: ignore[import-untyped]

from strata.core.errors import InvalidArgumentError
from strata.sdk.models.errors import UnsupportedModelError


def model_class(model: object) -> str:
    """The dotted class name, e.g. ``sklearn.linear_model._base.LinearRegression``."""
    kind = type(model)
    return f"{kind.__module__}.{kind.__qualname__}"


def framework(model: object) -> str:
    """The distribution the model comes from: ``lightgbm`` or ``scikit-learn``."""
    return "lightgbm" if type(model).__module__.startswith("lightgbm.") else "scikit-learn"


def sample_matrix(sample: Any) -> NDArray[np.float32]:
    """The sample rows as the 2-D float32 matrix the ONNX file takes."""
    try:
        rows = np.asarray(sample, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(
            "sample", f"expected numeric rows (a 2-D array or data frame): {error}"
        ) from None
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise InvalidArgumentError(
            "sample", f"expected a non-empty 2-D array of rows, got shape {rows.shape}"
        )
    return rows


def to_onnx_bytes(model: object, sample: NDArray[np.float32]) -> bytes:
    """The fitted ``model`` as a serialized ONNX model taking rows like ``sample``."""
    if not isinstance(model, BaseEstimator):
        raise UnsupportedModelError(
            f"{model_class(model)} is not a scikit-learn estimator; "
            "log_model converts fitted scikit-learn and LightGBM models"
        )
    if not hasattr(model, "predict"):
        raise UnsupportedModelError(
            f"{model_class(model)} has no predict method; log_model registers predictors"
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise UnsupportedModelError(f"{model_class(model)} is not fitted; call fit first") from None
    width = getattr(model, "n_features_in_", sample.shape[1])
    if width != sample.shape[1]:
        raise InvalidArgumentError(
            "sample",
            f"expected rows of {width} features as the model was fitted on, got {sample.shape[1]}",
        )
    try:
        if framework(model) == "lightgbm":
            inputs = [("X", FloatTensorType([None, sample.shape[1]]))]
            onnx_model = convert_lightgbm(model, initial_types=inputs, zipmap=False)
        else:
            options = {id(model): {"zipmap": False}} if is_classifier(model) else None
            onnx_model = to_onnx(model, sample[:1], options=options)
    except MissingShapeCalculator:
        raise UnsupportedModelError(
            f"skl2onnx has no ONNX converter for {model_class(model)}"
        ) from None
    data: bytes = onnx_model.SerializeToString()
    return data
