"""Selection baselines evaluated in the same harness as condensation: M3D's starting set
(``init``, the engine's own), random real images, herding on random-encoder features, and the
whole training set (the upper bound)."""
from __future__ import annotations

from typing import Sequence

import torch

from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.data.labeled import class_major_labels
from m3d_condense.pipeline.method.engine import build_encoder, initial_images
from m3d_condense.pipeline.method.spec import CondenseSpec

CHUNK = 256  # images per feature forward


def random_real(cache: ClassCache, classes: Sequence[int], ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` distinct random real images per class (no factor): images (C * ipc, ...) in [0, 1], labels."""
    images = torch.cat([cache.random_subset(c, ipc, seed) for c in classes])
    return images, class_major_labels(classes, ipc)


def whole_dataset(cache: ClassCache, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training image of ``classes``: images (N, ...) in [0, 1] (class-major), labels (N,)."""
    images = torch.cat([cache.images_of(c, torch.arange(cache.count[c])) for c in classes])
    return images, class_major_labels(classes, [cache.count[c] for c in classes])


def herding_order(features: torch.Tensor, k: int) -> list[int]:
    """Greedy herding (Welling 2009): the ``k`` rows of ``features`` (n, d), in pick order, whose
    running mean stays closest to the mean of all rows."""
    target, total = features.mean(0), torch.zeros_like(features[0])
    taken = torch.zeros(len(features), dtype=torch.bool)
    order = []
    for i in range(min(k, len(features))):
        dist = ((total + features) / (i + 1) - target).pow(2).sum(1)
        dist[taken] = float("inf")
        j = int(dist.argmin())
        order.append(j)
        taken[j] = True
        total += features[j]
    return order


@torch.no_grad()
def class_features(cache: ClassCache, c: int, encoder: torch.nn.Module, s: CondenseSpec,
                   device: torch.device) -> torch.Tensor:
    """Encoder features of every image of class ``c``: (n_c, d), computed CHUNK images at a time."""
    parts = []
    for start in range(0, cache.count[c], CHUNK):
        x = cache.images_of(c, torch.arange(start, min(start + CHUNK, cache.count[c]))).to(device)
        parts.append(encoder.embed(s.data.normalize(x)).flatten(1).float().cpu())
    return torch.cat(parts)


def herding(cache: ClassCache, classes: Sequence[int], ipc: int, s: CondenseSpec,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` real images per class chosen by herding on the features of a random encoder of
    the "herding" stream (its own seed): images (C * ipc, ...) in [0, 1], labels."""
    encoder = build_encoder(s, 0, stream="herding").requires_grad_(False).to(device)
    picks = []
    for c in classes:
        order = herding_order(class_features(cache, c, encoder, s, device), ipc)
        picks.append(cache.images_of(c, torch.tensor(order)))
    return torch.cat(picks), class_major_labels(classes, ipc)


def select_real(method: str, s: CondenseSpec, cache: ClassCache, classes: Sequence[int],
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the baseline ``method`` selects from ``cache``: for ``init`` the condensation's
    starting set (``s.ipc`` stored images per class, each ``s.factor`` x ``s.factor`` real tiles,
    exactly what M3D's first iteration starts from), for random and herding ``s.ipc`` real images
    per class, for whole every one."""
    if method == "init":
        return initial_images(cache, classes, s), class_major_labels(classes, s.ipc)
    if method == "herding":
        return herding(cache, classes, s.ipc, s, device)
    if method == "whole":
        return whole_dataset(cache, classes)
    return random_real(cache, classes, s.ipc, s.seed)
