"""A worker's class cache: its real images grouped by class, with deterministic per-class
sampling. ``data.cache`` says where they sit (``dataset.cache_tier``).

The batch for (seed, class, iteration) is a fixed random subset of the class's positions,
drawn from ``generator(seed, "real", class, iteration)``: it is the same whichever worker
draws it and whether the images sit in device memory, in host memory or in shards.
"""
from __future__ import annotations

from typing import Sequence

import torch

from m3d_condense.pipeline.data.labeled import LabeledImages
from m3d_condense.pipeline.data.reader import ClassShardReader
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.logs import progress_bar
from m3d_condense.pipeline.method.seeding import generator


class ClassTooSmallError(RunError, ValueError):
    """A class has fewer real images than the run needs from it."""


class ClassCache:
    """The images of ``classes`` as one uint8 tensor (sum n_c, C, H, W), class-major, each class
    in dataset order, on ``device`` (the fast path) or in host memory (copied per batch)."""

    def __init__(self, images: torch.Tensor, count: dict[int, int], device: torch.device | str = "cpu",
                 class_names: Sequence[str] | None = None):
        self._index(count, device, class_names)
        if sum(count.values()) != len(images):
            raise ValueError(f"class counts add up to {sum(count.values())}, but {len(images)} images were given")
        self.images = images

    def _index(self, count: dict[int, int], device, class_names) -> None:
        self.class_names = list(class_names) if class_names is not None else None  # of the whole dataset
        self.classes = sorted(count)
        self.count = dict(count)
        self.device = torch.device(device)
        self.offset, start = {}, 0
        for c in self.classes:
            self.offset[c] = start
            start += self.count[c]

    @classmethod
    def from_labeled(cls, data: LabeledImages, classes: Sequence[int], device="cpu") -> "ClassCache":
        classes = [int(c) for c in classes]
        keep = torch.isin(data.labels, torch.tensor(classes))
        labels = data.labels[keep]
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=max(classes) + 1)
        empty = [data.class_names[c] for c in classes if counts[c] == 0]
        if empty:
            raise ValueError(f"classes with no images: {empty}")
        return cls(data.images[keep][order].to(device), {c: int(counts[c]) for c in classes}, device,
                   data.class_names)

    @classmethod
    def from_shards(cls, reader: ClassShardReader, split: str, classes: Sequence[int], device="cpu",
                    store: torch.device | str | None = None, workers: int = 1, progress: bool = True) -> "ClassCache":
        """Decode each class once from its shards (in ``workers`` processes) into ``store``
        (default: ``device``)."""
        order = sorted(int(c) for c in classes)
        parts, count = [], {}
        total = sum(reader.num_samples(split, c) for c in order)
        with progress_bar(total=total, unit="img", desc=f"cache {split}", progress=progress) as bar:
            for c, images in reader.read_classes(split, order, workers):
                parts.append(images.to(store or device))
                count[c] = len(images)
                bar.update(len(images))
        return cls(torch.cat(parts), count, device, reader.manifest.class_names)

    def _take(self, parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """uint8 images for (class, positions within the class) pairs, concatenated."""
        idx = torch.cat([p + self.offset[c] for c, p in parts]).to(self.images.device)
        return self.images[idx]

    def _gather(self, parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        return self._take(parts).to(self.device, non_blocking=True).float().div_(255.0)

    def _need(self, c: int, n: int) -> None:
        if self.count[c] < n:
            name = f" ({self.class_names[c]})" if self.class_names else ""
            raise ClassTooSmallError(f"class {c}{name} has {self.count[c]} images, {n} are needed (M3D's initial set "
                                     "takes ipc x factor^2 of them, a baseline ipc): lower ipc or factor")

    def sample(self, classes: Sequence[int], batch: int, seed: int, iteration: int) -> torch.Tensor:
        """Real images for each class in ``classes``, class-major: (sum_c min(batch, n_c), C, H, W)
        floats in [0, 1]. Class c's rows are a random subset drawn from ``(seed, c, iteration)``."""
        return self._gather([(c, torch.randperm(self.count[c], generator=generator(seed, "real", c, iteration))[:batch])
                             for c in classes])

    def batch_sizes(self, classes: Sequence[int], batch: int) -> list[int]:
        return [min(batch, self.count[c]) for c in classes]

    def images_of(self, c: int, positions: torch.Tensor) -> torch.Tensor:
        """Class ``c``'s images at ``positions`` (dataset order within the class), floats in [0, 1]."""
        return self._gather([(c, positions)])

    def first(self, c: int, n: int) -> torch.Tensor:
        """The first ``n`` images of class ``c`` in dataset order, floats in [0, 1]."""
        self._need(c, n)
        return self.images_of(c, torch.arange(n))

    def random_subset(self, c: int, n: int, seed: int, stream: str = "subset") -> torch.Tensor:
        """``n`` distinct images of class ``c`` chosen from ``(seed, stream, c)``."""
        self._need(c, n)
        return self.images_of(c, torch.randperm(self.count[c], generator=generator(seed, stream, c))[:n])


class StreamingClassCache(ClassCache):
    """Same sampling, no cache: every batch is read from the shards (the path for classes that
    fit neither device nor host memory; slow, and measured in BENCHMARKS.md)."""

    def __init__(self, reader: ClassShardReader, split: str, classes: Sequence[int], device="cpu"):
        self.reader, self.split = reader, split
        self._index({int(c): reader.num_samples(split, int(c)) for c in classes}, device,
                    reader.manifest.class_names)

    def _take(self, parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([self.reader.read_samples(self.split, c, p.tolist()) for c, p in parts])
