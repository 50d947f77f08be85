"""Linear read-outs: how much of each attribute a representation carries (held-out R^2 of a ridge regression)."""
from __future__ import annotations

import torch


def ridge_readout_r2(features: torch.Tensor, targets: torch.Tensor, train_fraction: float = 0.75,
                     ridge: float = 1e-2) -> torch.Tensor:
    """Per target column, the R^2 on the last (1 - train_fraction) rows of a ridge fit on the first rows.

    Features are standardised with the fitting rows' statistics, so the ridge shrinks every direction alike and not
    the bias; float64 throughout.
    """
    x, y = features.double(), targets.double()
    n_train = int(len(x) * train_fraction)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0).clamp_min(1e-8)
    x = (x - mean) / std
    y_mean = y[:n_train].mean(0)
    gram = x[:n_train].t() @ x[:n_train] + ridge * n_train * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x[:n_train].t() @ (y[:n_train] - y_mean))
    residual = x[n_train:] @ weights + y_mean - y[n_train:]
    return 1.0 - residual.pow(2).mean(0) / y[n_train:].var(0, unbiased=False).clamp_min(1e-12)
