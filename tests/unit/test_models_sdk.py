"""log_model's conversion and its proof: the ONNX file computes what the model computes.

Models are trained here on generated data; nothing is downloaded.
"""

from __future__ import annotations

import platform

import lightgbm
import numpy as np
import onnx
import onnxruntime
import pytest
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin  # type: ignore[import-untyped]
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]
from sklearn.linear_model import LinearRegression, LogisticRegression  # type: ignore[import-untyped]
from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

from strata.api.registry.v1 import registry_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.sdk.models import OutputMismatchError, Tolerance, UnsupportedModelError, environment
from strata.sdk.models.conversion import sample_matrix, to_onnx_bytes
from strata.sdk.models.verification import verify


def _data(rows: int = 300, seed: int = 7) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 4))
    target = features @ np.array([3.0, -2.0, 0.5, 1.5]) + 10.0 + rng.normal(scale=0.1, size=rows)
    return features, target


def _fitted(model: BaseEstimator) -> tuple[BaseEstimator, NDArray[np.float32]]:
    features, target = _data()
    model.fit(features, target)
    return model, sample_matrix(features[:50])


def _onnx_predictions(data: bytes, rows: NDArray[np.float32]) -> NDArray[np.float32]:
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    out: NDArray[np.float32] = session.run(None, {session.get_inputs()[0].name: rows})[0]
    return out


@pytest.mark.parametrize(
    "model",
    [
        LinearRegression(),
        GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0),
        lightgbm.LGBMRegressor(n_estimators=40, verbose=-1, random_state=0),
        make_pipeline(StandardScaler(), LinearRegression()),
    ],
    ids=["linear", "gradient-boosting", "lightgbm", "pipeline"],
)
def test_the_onnx_file_predicts_what_the_model_predicts(model: BaseEstimator) -> None:
    fitted, rows = _fitted(model)
    data = to_onnx_bytes(fitted, rows)

    verify(data, fitted, rows, Tolerance())  # does not raise
    np.testing.assert_allclose(
        _onnx_predictions(data, rows).ravel(), fitted.predict(rows), rtol=1e-4, atol=1e-4
    )
    assert onnx.load_from_string(data).graph.input[0].type.tensor_type.elem_type == (
        onnx.TensorProto.FLOAT
    )


def test_an_onnx_file_of_another_model_is_refused_naming_the_largest_difference() -> None:
    fitted, rows = _fitted(LinearRegression())
    features, target = _data(seed=8)
    other = LinearRegression().fit(features, target + 5.0)

    with pytest.raises(OutputMismatchError) as refused:
        verify(to_onnx_bytes(other, rows), fitted, rows, Tolerance())

    expected = np.abs(other.predict(rows) - fitted.predict(rows))
    assert refused.value.largest_difference == pytest.approx(expected.max(), rel=1e-3)
    assert refused.value.row == int(expected.argmax())
    assert f"{refused.value.largest_difference:.6g}" in str(refused.value)
    assert refused.value.field == "model"


def test_a_difference_just_beyond_the_tolerance_is_refused() -> None:
    fitted, rows = _fitted(LinearRegression())
    model = onnx.load_from_string(to_onnx_bytes(fitted, rows))
    (regressor,) = model.graph.node
    (intercepts,) = (a for a in regressor.attribute if a.name == "intercepts")
    intercepts.floats[0] += 0.01
    tampered = model.SerializeToString()

    verify(tampered, fitted, rows, Tolerance(absolute=0.02, relative=0.0))
    with pytest.raises(OutputMismatchError) as refused:
        verify(tampered, fitted, rows, Tolerance(absolute=0.005, relative=0.0))
    assert refused.value.largest_difference == pytest.approx(0.01, rel=1e-2)


def test_a_classifier_is_checked_on_labels_and_probabilities() -> None:
    features, target = _data()
    labels = (target > np.median(target)).astype(np.int64)
    fitted = LogisticRegression().fit(features, labels)
    rows = sample_matrix(features[:50])

    verify(to_onnx_bytes(fitted, rows), fitted, rows, Tolerance())  # does not raise
    flipped = LogisticRegression().fit(features, 1 - labels)
    with pytest.raises(OutputMismatchError, match="label"):
        verify(to_onnx_bytes(flipped, rows), fitted, rows, Tolerance())


def test_a_lightgbm_classifier_is_converted_and_checked() -> None:
    features, target = _data()
    labels = (target > np.median(target)).astype(np.int64)
    fitted = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1, random_state=0)
    fitted.fit(features, labels)
    rows = sample_matrix(features[:50])

    verify(to_onnx_bytes(fitted, rows), fitted, rows, Tolerance())  # does not raise
    code = environment.generation(fitted, None)
    assert (code.framework, code.framework_version) == ("lightgbm", lightgbm.__version__)
    flipped = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1, random_state=0)
    flipped.fit(features, 1 - labels)
    with pytest.raises(OutputMismatchError, match="label"):
        verify(to_onnx_bytes(flipped, rows), fitted, rows, Tolerance())


class _Handwritten(BaseEstimator, RegressorMixin):  # type: ignore[misc]
    """A scikit-learn estimator no ONNX converter knows."""

    def fit(self, features: NDArray[np.float64], target: NDArray[np.float64]) -> _Handwritten:
        self.mean_ = float(target.mean())
        return self

    def predict(self, features: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.full(len(features), self.mean_)


def test_models_that_cannot_be_converted_are_refused_naming_their_type() -> None:
    features, target = _data()
    rows = sample_matrix(features[:5])

    with pytest.raises(UnsupportedModelError, match=r"builtins\.dict is not a scikit-learn"):
        to_onnx_bytes({"weights": [1.0]}, rows)
    with pytest.raises(UnsupportedModelError, match="StandardScaler has no predict"):
        to_onnx_bytes(StandardScaler().fit(features), rows)
    with pytest.raises(UnsupportedModelError, match="LinearRegression is not fitted"):
        to_onnx_bytes(LinearRegression(), rows)
    with pytest.raises(UnsupportedModelError, match=r"no ONNX converter for .*\._Handwritten"):
        to_onnx_bytes(_Handwritten().fit(features, target), rows)


def test_a_sample_that_is_not_rows_of_the_model_features_is_refused() -> None:
    fitted, rows = _fitted(LinearRegression())

    with pytest.raises(InvalidArgumentError, match=r"2-D array of rows, got shape \(3,\)") as flat:
        sample_matrix([1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgumentError, match="numeric rows") as text:
        sample_matrix([["a", "b"]])
    with pytest.raises(InvalidArgumentError, match=r"rows of 4 features .* got 3") as narrow:
        to_onnx_bytes(fitted, rows[:, :3])
    assert {flat.value.field, text.value.field, narrow.value.field} == {"sample"}


def test_what_the_sdk_knows_about_the_model() -> None:
    fitted, _ = _fitted(GradientBoostingRegressor(n_estimators=40, learning_rate=0.2))

    params = environment.hyperparameters(fitted)
    assert params["n_estimators"] == "40"
    assert params["learning_rate"] == "0.2"
    assert params["loss"] == "squared_error"
    deps = environment.dependencies()
    assert deps.python_version == platform.python_version()
    assert {"scikit-learn", "skl2onnx", "onnxruntime"} <= set(deps.packages)
    code = environment.generation(fitted, pb.GenerationCode(entry_point="train.py:fit"))
    assert (code.framework, code.entry_point) == ("scikit-learn", "train.py:fit")
    assert code.framework_version == deps.packages["scikit-learn"]
    assert environment.definition(fitted).model_class.endswith("GradientBoostingRegressor")
