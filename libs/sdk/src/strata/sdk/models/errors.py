"""Why a model was not logged: raised before anything reaches the registry."""

from __future__ import annotations

from strata.core.errors import InvalidArgumentError, StrataError


class UnsupportedModelError(InvalidArgumentError):
    """The model is not something the SDK can turn into ONNX (type named in the message)."""

    def __init__(self, message: str) -> None:
        super().__init__("model", message)


class OutputMismatchError(InvalidArgumentError):
    """The ONNX file does not compute what the framework model computes on the sample.

    Registering it would serve different predictions from the ones evaluated, so
    the version is refused; ``largest_difference`` and ``row`` say where it differs most.
    """

    def __init__(self, message: str, *, largest_difference: float, row: int) -> None:
        super().__init__("model", message)
        self.largest_difference = largest_difference
        self.row = row


class RegistryError(StrataError):
    """The registry refused or could not take a call; the message names the call and why."""


class MissingExtraError(ImportError):
    """``log_model`` was called without the ``strata-sdk[models]`` extra installed.

    An ImportError, as Python reports any missing module; the message names the
    extra to install and the modules missing.
    """
