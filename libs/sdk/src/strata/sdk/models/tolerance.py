"""How far an ONNX output may be from the framework's: a value users pass to log_model.

Kept apart from :mod:`verification` (which needs the ``strata-sdk[models]`` extra) so
that importing :mod:`strata.sdk.models` does not import the frameworks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """How far an ONNX output may be from the framework's, per element."""

    absolute: float = 1e-4
    relative: float = 1e-4

    def __post_init__(self) -> None:
        if self.absolute < 0 or self.relative < 0:
            raise ValueError(f"tolerances must not be negative, got {self}")
