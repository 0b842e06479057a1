"""Normalisation layers selected by name."""
from torch import nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """``instance`` is GroupNorm with one group per channel (affine), as the reference uses:
    every image is normalised alone, so batching classes together does not change features."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose instance, batch or none")
