"""Squared maximum mean discrepancy between two sets of feature vectors.

All functions accept a leading batch of independent problems: ``x`` of shape
``(..., n, d)`` and ``y`` of shape ``(..., m, d)`` give one MMD^2 per leading index.
The engine uses this to score every class of a step with one call.
"""
from __future__ import annotations

import torch

# The reference (M3D release) multi-bandwidth Gaussian: five scales around a
# data-driven bandwidth, so no single length scale has to be tuned per dataset.
GAUSSIAN_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
KERNELS = ("gaussian", "linear", "polynomial")
ESTIMATORS = ("biased", "unbiased")


def squared_distances(z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, ``(..., N, d) -> (..., N, N)``, clamped at 0."""
    sq = (z * z).sum(-1)
    d = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (z @ z.transpose(-1, -2))
    return d.clamp_min(0.0)


def kernel_matrix(z: torch.Tensor, kernel: str = "gaussian", degree: int = 3, coef0: float = 1.0,
                  sigma2: torch.Tensor | float | None = None) -> torch.Tensor:
    """Gram matrix of the rows of ``z`` (``(..., N, d) -> (..., N, N)``).

    gaussian: ``sum_s exp(-D / (s * sigma2))`` over ``GAUSSIAN_SCALES``, where ``sigma2`` is the
    mean off-diagonal squared distance, detached (the bandwidth carries no gradient), unless a
    fixed ``sigma2`` (scalar or shape ``(...)``) is given.
    linear: ``z z^T``. polynomial: ``(z z^T / d + coef0) ** degree``.
    """
    if kernel == "gaussian":
        dist = squared_distances(z)
        if sigma2 is None:
            n = z.shape[-2]
            off_diag_sum = dist.sum((-1, -2)) - dist.diagonal(dim1=-2, dim2=-1).sum(-1)
            sigma2 = (off_diag_sum / (n * (n - 1))).detach()
        sigma2 = torch.as_tensor(sigma2, dtype=z.dtype, device=z.device)[..., None, None]
        return sum(torch.exp(-dist / (s * sigma2)) for s in GAUSSIAN_SCALES)
    gram = z @ z.transpose(-1, -2)
    if kernel == "linear":
        return gram
    if kernel == "polynomial":
        return (gram / z.shape[-1] + coef0) ** degree
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")


def _block_mean(k: torch.Tensor, exclude_diagonal: bool) -> torch.Tensor:
    total = k.sum((-1, -2))
    n = k.shape[-1]
    if not exclude_diagonal:
        return total / (n * n)
    return (total - k.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def mmd2(x: torch.Tensor, y: torch.Tensor, kernel: str = "gaussian", estimator: str = "biased",
         sigma2: torch.Tensor | float | None = None) -> torch.Tensor:
    """MMD^2 between feature sets ``x`` (..., n, d) and ``y`` (..., m, d); returns shape ``(...)``.

    ``biased`` is the V-statistic of the paper and the released code (diagonals included):
    ``mean K_xx + mean K_yy - 2 mean K_xy``. ``unbiased`` is the U-statistic, which drops the
    diagonals of ``K_xx`` and ``K_yy`` (needs n, m >= 2). The Gaussian bandwidth is computed on
    the pooled set ``cat([x, y])``. ``kernel="linear"`` with the biased estimator is exactly
    DM's loss ``||mean x - mean y||^2``. ``sigma2`` fixes the Gaussian bandwidth (for tests).
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if x.shape[-1] != y.shape[-1] or x.shape[:-2] != y.shape[:-2]:
        raise ValueError(f"feature shapes do not match: x {tuple(x.shape)}, y {tuple(y.shape)}")
    unbiased = estimator == "unbiased"
    if unbiased and min(x.shape[-2], y.shape[-2]) < 2:
        raise ValueError("the unbiased estimator needs at least 2 samples on each side")
    if kernel == "linear" and not unbiased:
        # O((n+m) d) instead of O((n+m)^2 d); equal to the V-statistic of x.y.
        diff = x.mean(-2) - y.mean(-2)
        return (diff * diff).sum(-1)
    n = x.shape[-2]
    k = kernel_matrix(torch.cat([x, y], dim=-2), kernel, sigma2=sigma2)
    k_xx, k_yy, k_xy = k[..., :n, :n], k[..., n:, n:], k[..., :n, n:]
    return _block_mean(k_xx, unbiased) + _block_mean(k_yy, unbiased) - 2.0 * k_xy.mean((-1, -2))
