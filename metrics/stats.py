"""Statistics over seeds: mean and percentile-bootstrap confidence intervals (pure numpy, seeded)."""
from __future__ import annotations

import numpy as np


def bootstrap_ci(values, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of `values` by the percentile bootstrap; a single value gives a zero-width CI."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def probability_of_improvement(a, b) -> float:
    """P(X_a > X_b) over all pairs of seeds (ties count half), as rliable's pairwise statistic."""
    a, b = np.asarray(a, dtype=np.float64)[:, None], np.asarray(b, dtype=np.float64)[None, :]
    return float(((a > b) + 0.5 * (a == b)).mean())
