"""The frameworks ``log_model`` needs, from the optional extra ``strata-sdk[models]``.

scikit-learn, LightGBM, their ONNX converters and ONNX Runtime weigh hundreds of
megabytes; a user who only runs workflows, reads features or calls the CLI should
not install them. They are imported when ``log_model`` runs, and their absence is
one clear error naming the extra instead of an ImportError from deep inside a
converter.
"""

from __future__ import annotations

import importlib

from strata.sdk.models.errors import MissingExtraError

EXTRA = "strata-sdk[models]"
MODULES = ("sklearn", "lightgbm", "skl2onnx", "onnxmltools", "onnxruntime")
"""What the extra installs, by import name."""


def require() -> None:
    """Raise :class:`MissingExtraError` naming every module of the extra not importable."""
    missing: list[str] = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"log_model needs the {EXTRA!r} extra, which is not installed (missing: "
            f"{', '.join(missing)}); install it with: pip install '{EXTRA}'",
            name=missing[0],
        )
