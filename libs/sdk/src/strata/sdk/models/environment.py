"""What the SDK knows about a model without being told: definition, dependencies, generation.

These fill the registry's artifact kinds a caller would otherwise forget:
the Python and package versions that produced the file, the framework and its
version, and the hyperparameters ``get_params()`` reports.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from strata.api.registry.v1 import registry_pb2 as pb
from strata.sdk.models.conversion import framework, model_class

PACKAGES = (
    "scikit-learn", "lightgbm", "numpy", "scipy", "skl2onnx", "onnxmltools", "onnx", "onnxruntime",
)  # fmt: skip
"""The distributions that decide what a model computes and how it was converted."""


def dependencies() -> pb.Dependencies:
    """This interpreter's Python version and the installed versions of :data:`PACKAGES`."""
    installed: dict[str, str] = {}
    for package in PACKAGES:
        try:
            installed[package] = version(package)
        except PackageNotFoundError:
            continue
    return pb.Dependencies(python_version=platform.python_version(), packages=installed)


def definition(model: object) -> pb.ModelDefinition:
    """The model's class and its printed form; the registry adds what the ONNX file says."""
    return pb.ModelDefinition(model_class=model_class(model), architecture=repr(model))


def generation(model: object, given: pb.GenerationCode | None) -> pb.GenerationCode:
    """The caller's generation code (entry point, split, search) plus the model's framework."""
    code = pb.GenerationCode()
    if given is not None:
        code.CopyFrom(given)
    code.framework = framework(model)
    code.framework_version = version(code.framework)
    return code


def hyperparameters(model: Any) -> dict[str, str]:
    """``model.get_params(deep=False)`` as text: strings as they are, anything else by repr."""
    params: dict[str, object] = model.get_params(deep=False)
    return {key: value if isinstance(value, str) else repr(value) for key, value in params.items()}
