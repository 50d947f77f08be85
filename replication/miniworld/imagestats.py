"""Image and feature statistics the mini world's measurements share: edge correlation, colourfulness, spread, FID."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class FeatureShapeError(ValueError):
    """Feature sets that cannot be compared (too few rows, different widths)."""


def edge_map(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luminance, [N, H, W]."""
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    return (gx.pow(2) + gy.pow(2)).sqrt().squeeze(1)


def edge_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample Pearson correlation of the edge maps of two image batches."""
    ea, eb = edge_map(a).flatten(1), edge_map(b).flatten(1)
    ea, eb = ea - ea.mean(1, keepdim=True), eb - eb.mean(1, keepdim=True)
    return (ea * eb).sum(1) / (ea.norm(dim=1) * eb.norm(dim=1)).clamp_min(1e-12)


def chroma(x: Tensor) -> float:
    """Mean colourfulness of an image batch in [-1, 1]: per pixel, the largest minus the smallest channel, in [0, 1]."""
    return ((x.amax(1) - x.amin(1)) / 2.0).mean().item()


def feature_spread(features: Tensor) -> float:
    """Total standard deviation of a feature batch [N, D]: sqrt of the trace of its covariance."""
    return (features - features.mean(0)).pow(2).sum(1).mean().sqrt().item()


def frechet_distance(feats_a: np.ndarray | Tensor, feats_b: np.ndarray | Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets [N, F] (float64, torch-fidelity's eigenvalue form)."""
    stats = []
    for feats in (feats_a, feats_b):
        array = feats.detach().cpu().numpy() if isinstance(feats, Tensor) else np.asarray(feats)
        if array.ndim != 2 or array.shape[0] < 2:
            raise FeatureShapeError(f"feature sets must be [N >= 2, F] arrays, got shape {array.shape}")
        array = array.astype(np.float64)
        stats.append((array.mean(axis=0), np.cov(array, rowvar=False)))
    (mu_a, sigma_a), (mu_b, sigma_b) = stats
    if mu_a.shape != mu_b.shape:
        raise FeatureShapeError(f"feature sets differ in width: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    diff = mu_a - mu_b
    # tr(sqrt(S_a S_b)) is the sum of square roots of the eigenvalues of S_a S_b (real, >= 0 up to rounding).
    eigenvalues = np.linalg.eigvals(sigma_a @ sigma_b).astype(np.complex128)
    tr_covmean = np.sqrt(eigenvalues).real.sum()
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_covmean)
