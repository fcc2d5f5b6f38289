"""The model both servers serve: a 100-tree gradient-boosting regressor on generated data.

The data is generated from a fixed seed (a noisy non-linear function of 8 features),
so every run fits the same trees. A second version, fitted with another learning
rate, is what the swap promotes; its answers differ from the first's, so a reply
says which version computed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]

FEATURES = 8
TREES = 100
SEED = 20261201


@dataclass(frozen=True)
class Fitted:
    """The two versions, and rows to send: float32, as both servers receive them."""

    first: GradientBoostingRegressor
    second: GradientBoostingRegressor
    rows: NDArray[np.float32]


def fit(rows: int) -> Fitted:
    """Generate ``rows`` rows, fit both versions on them; a few seconds for 5,000 rows."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(rows, FEATURES))
    y = np.sin(x[:, 0]) * 3 + x[:, 1] * x[:, 2] + np.abs(x[:, 3]) + rng.normal(0, 0.1, rows)
    first = GradientBoostingRegressor(n_estimators=TREES, max_depth=3, random_state=0)
    second = GradientBoostingRegressor(
        n_estimators=TREES, max_depth=3, learning_rate=0.05, random_state=0
    )
    return Fitted(first.fit(x, y), second.fit(x, y), x[:256].astype(np.float32))
