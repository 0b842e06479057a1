"""Per-order moment gaps between two feature distributions (the paper's Table 1 diagnostic)."""
from __future__ import annotations

import torch

MOMENT_ORDERS = ("mean", "variance", "skewness", "kurtosis")


def feature_moments(f: torch.Tensor, eps: float = 1e-8) -> dict[str, torch.Tensor]:
    """Per-dimension mean, variance, skewness and (non-excess) kurtosis of ``f`` (n, d); each (d,)."""
    mean = f.mean(0)
    centred = f - mean
    var = (centred**2).mean(0)
    std = (var + eps).sqrt()
    return {
        "mean": mean,
        "variance": var,
        "skewness": (centred**3).mean(0) / std**3,
        "kurtosis": (centred**4).mean(0) / std**4,
    }


def moment_gaps(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """L2 distance between the per-dimension moments of ``x`` (n, d) and ``y`` (m, d), per order.

    The first two orders are raw (mean, variance); the higher ones are standardised
    (skewness, kurtosis), so each gap is comparable across feature scales.
    """
    mx, my = feature_moments(x.double()), feature_moments(y.double())
    return {k: float(torch.linalg.vector_norm(mx[k] - my[k])) for k in MOMENT_ORDERS}
