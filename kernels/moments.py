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


def moment_gaps(x: torch.Tensor, y: torch.Tensor, min_std_fraction: float = 0.05) -> dict[str, float]:
    """L2 distance between the per-dimension moments of ``x`` (n, d) and the reference ``y`` (m, d),
    per order.

    The first two orders are raw (mean, variance); the higher ones are standardised
    (skewness, kurtosis), so each gap is comparable across feature scales. Standardised moments
    of an (almost) constant dimension are ratios of rounding noise (a ReLU unit that a fresh
    encoder leaves dead), so those orders skip the dimensions whose std in ``y`` is below
    ``min_std_fraction`` of its median std (0 keeps every dimension).
    """
    mx, my = feature_moments(x.double()), feature_moments(y.double())
    std = my["variance"].sqrt()
    live = std >= min_std_fraction * std.median()
    gaps = {}
    for k in MOMENT_ORDERS:
        diff = mx[k] - my[k]
        gaps[k] = float(torch.linalg.vector_norm(diff if k in ("mean", "variance") else diff[live]))
    return gaps
