"""Logging models to the registry: ``await log_model(model, name=..., sample=rows)``."""

from strata.sdk.models.errors import OutputMismatchError, RegistryError, UnsupportedModelError
from strata.sdk.models.registration import log_model
from strata.sdk.models.upload import ArtifactFile
from strata.sdk.models.verification import Tolerance

__all__ = [
    "ArtifactFile",
    "OutputMismatchError",
    "RegistryError",
    "Tolerance",
    "UnsupportedModelError",
    "log_model",
]
