"""Labelled images: a split held in memory, and the labels of a class-major set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class LabeledImages:
    """``images`` uint8 (N, C, H, W); ``labels`` int64 (N,); ``class_names`` one per class."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]


def class_major_labels(classes: Sequence[int], per_class: int | Sequence[int]) -> torch.Tensor:
    """int64 labels of images stored class by class: ``per_class`` of each of ``classes`` (one
    count for all, or one per class). ([0, 2], 2) -> [0, 0, 2, 2]."""
    counts = per_class if isinstance(per_class, int) else torch.tensor(list(per_class))
    return torch.tensor(list(classes), dtype=torch.int64).repeat_interleave(counts)
