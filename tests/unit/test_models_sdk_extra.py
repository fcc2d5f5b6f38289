"""``strata-sdk[models]`` is optional: without it the SDK imports, and log_model says
which extra to install. The missing frameworks are simulated by blocking their import
(a ``None`` in ``sys.modules`` makes ``import sklearn`` raise ImportError)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from strata.sdk.models import MissingExtraError, log_model
from strata.sdk.models.frameworks import EXTRA, MODULES


def _block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


async def test_log_model_without_the_extra_names_the_extra_and_the_missing_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _block(monkeypatch, "sklearn", "onnxruntime")
    with pytest.raises(MissingExtraError) as caught:
        await log_model(object(), name="eta", sample=np.zeros((2, 2)))
    message = str(caught.value)
    assert f"pip install '{EXTRA}'" in message
    missing = message.split("(missing: ")[1].split(")")[0].split(", ")
    # skl2onnx may be named too: it cannot import without scikit-learn.
    assert {"sklearn", "onnxruntime"} <= set(missing) <= {"sklearn", "onnxruntime", "skl2onnx"}
    assert isinstance(caught.value, ImportError)


def test_the_sdk_and_its_models_package_import_without_the_extra() -> None:
    # A fresh interpreter: this one has the frameworks imported already.
    script = f"""
import sys
for name in {[*MODULES, "onnx"]!r}:
    sys.modules[name] = None
import strata.sdk.cli
import strata.sdk.models.commands
from strata.sdk.models import Tolerance, log_model_sync
print(Tolerance(absolute=0.5).absolute)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.5"
