"""The models called in this process, without a server: what each server adds to them.

ONNX Runtime runs the exact file the registry holds (the one the gateway serves),
with the default session options the gateway uses; scikit-learn runs the model
MLServer unpickles. Each does one row a call, as the clients send.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from bench.bus.stats import Distribution


@dataclass(frozen=True)
class InProcess:
    onnx_runtime: Distribution
    scikit_learn: Distribution


def measure(
    onnx: bytes, input_name: str, model: Any, rows: NDArray[np.float32], samples: int, warmup: int
) -> InProcess:
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    singles = [rows[i : i + 1] for i in range(len(rows))]
    return InProcess(
        onnx_runtime=_time(
            lambda row: session.run(None, {input_name: row}), singles, samples, warmup
        ),
        scikit_learn=_time(model.predict, singles, samples, warmup),
    )


def _time(
    call: Callable[[NDArray[np.float32]], object],
    singles: list[NDArray[np.float32]],
    samples: int,
    warmup: int,
) -> Distribution:
    took = []
    for i in range(samples + warmup):
        row = singles[i % len(singles)]
        started = time.perf_counter()
        call(row)
        took.append(time.perf_counter() - started)
    return Distribution.of(took[warmup:])
