"""Logging models to the registry: ``await log_model(model, name=..., sample=rows)``, or
``log_model_sync(...)`` where nothing awaits.

Importing this package needs no framework; ``log_model`` needs the
``strata-sdk[models]`` extra (scikit-learn, LightGBM, the ONNX converters, ONNX Runtime).
"""

from strata.sdk.models.errors import (
    MissingExtraError,
    OutputMismatchError,
    RegistryError,
    UnsupportedModelError,
)
from strata.sdk.models.registration import log_model, log_model_sync
from strata.sdk.models.tolerance import Tolerance
from strata.sdk.models.upload import ArtifactFile

__all__ = [
    "ArtifactFile",
    "MissingExtraError",
    "OutputMismatchError",
    "RegistryError",
    "Tolerance",
    "UnsupportedModelError",
    "log_model",
    "log_model_sync",
]
