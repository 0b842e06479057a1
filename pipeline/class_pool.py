"""A worker's real images grouped by class, with deterministic per-class sampling."""
from __future__ import annotations

from typing import Sequence

import torch

from pipeline.datasets import LabeledImages
from pipeline.seeding import generator


class ClassPool:
    """Holds the images of ``classes`` as uint8 on ``device``, sorted by class (stable, so each
    class keeps dataset order). The batch for (seed, class, iteration) is the same whichever
    worker draws it."""

    def __init__(self, data: LabeledImages, classes: Sequence[int], device: torch.device | str = "cpu"):
        self.classes = [int(c) for c in classes]
        keep = torch.isin(data.labels, torch.tensor(self.classes))
        labels = data.labels[keep]
        order = torch.argsort(labels, stable=True)
        self.images = data.images[keep][order].to(device)
        counts = torch.bincount(labels, minlength=max(self.classes) + 1)
        self.count = {c: int(counts[c]) for c in self.classes}
        empty = [data.class_names[c] for c in self.classes if self.count[c] == 0]
        if empty:
            raise ValueError(f"classes with no images: {empty}")
        self.offset, start = {}, 0
        for c in sorted(self.classes):
            self.offset[c] = start
            start += self.count[c]

    def _gather(self, index: list[torch.Tensor]) -> torch.Tensor:
        idx = torch.cat(index).to(self.images.device)
        return self.images[idx].float().div_(255.0)

    def sample(self, classes: Sequence[int], batch: int, seed: int, iteration: int) -> torch.Tensor:
        """Real images for each class in ``classes``, class-major: (sum_c min(batch, n_c), C, H, W)
        floats in [0, 1]. Class c's rows are a random subset drawn from ``(seed, c, iteration)``."""
        index = []
        for c in classes:
            perm = torch.randperm(self.count[c], generator=generator(seed, "real", c, iteration))
            index.append(perm[:batch] + self.offset[c])
        return self._gather(index)

    def batch_sizes(self, classes: Sequence[int], batch: int) -> list[int]:
        return [min(batch, self.count[c]) for c in classes]

    def first(self, c: int, n: int) -> torch.Tensor:
        """The first ``n`` images of class ``c`` in dataset order, floats in [0, 1]."""
        if self.count[c] < n:
            raise ValueError(f"class {c} has {self.count[c]} images, {n} are needed")
        return self._gather([torch.arange(n) + self.offset[c]])

    def random_subset(self, c: int, n: int, seed: int) -> torch.Tensor:
        """``n`` distinct images of class ``c`` chosen from ``(seed, "subset", c)``."""
        if self.count[c] < n:
            raise ValueError(f"class {c} has {self.count[c]} images, {n} are needed")
        perm = torch.randperm(self.count[c], generator=generator(seed, "subset", c))
        return self._gather([perm[:n] + self.offset[c]])
