"""What the engine knows about a dataset's images, and a split held in memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataSpec:
    """What the engine and the evaluation need to know about a dataset's images."""

    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, data_cfg) -> "DataSpec":
        return cls(num_classes=data_cfg.num_classes, channels=data_cfg.channels,
                   image_size=tuple(data_cfg.image_size), mean=tuple(data_cfg.mean), std=tuple(data_cfg.std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (N, C, H, W) in [0, 1] -> (x - mean) / std per channel."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


@dataclass
class LabeledImages:
    """``images`` uint8 (N, C, H, W); ``labels`` int64 (N,); ``class_names`` one per class."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
