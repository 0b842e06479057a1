"""Selection baselines evaluated in the same harness as condensation: random real images,
herding on random-encoder features, and the whole training set (the upper bound)."""
from __future__ import annotations

from typing import Sequence

import torch
from m3d_condense.pipeline.data import ClassPool
from m3d_condense.pipeline.engine import EngineSettings, build_encoder

CHUNK = 256  # images per feature forward


def random_real(pool: ClassPool, classes: Sequence[int], ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` distinct random real images per class (no factor): images (C * ipc, ...) in [0, 1], labels."""
    images = torch.cat([pool.random_subset(c, ipc, seed) for c in classes])
    return images, torch.tensor(list(classes)).repeat_interleave(ipc)


def whole_dataset(pool: ClassPool, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training image of ``classes``: images (N, ...) in [0, 1] (class-major), labels (N,)."""
    images = torch.cat([pool.images_of(c, torch.arange(pool.count[c])) for c in classes])
    return images, torch.tensor(list(classes)).repeat_interleave(torch.tensor([pool.count[c] for c in classes]))


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
def class_features(pool: ClassPool, c: int, encoder: torch.nn.Module, s: EngineSettings,
                   device: torch.device) -> torch.Tensor:
    """Encoder features of every image of class ``c``: (n_c, d), computed CHUNK images at a time."""
    parts = []
    for start in range(0, pool.count[c], CHUNK):
        x = pool.images_of(c, torch.arange(start, min(start + CHUNK, pool.count[c]))).to(device)
        parts.append(encoder.embed(s.data.normalize(x)).flatten(1).float().cpu())
    return torch.cat(parts)


def herding(pool: ClassPool, classes: Sequence[int], ipc: int, s: EngineSettings,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` real images per class chosen by herding on the features of a random encoder of
    the "herding" stream (its own seed): images (C * ipc, ...) in [0, 1], labels."""
    encoder = build_encoder(s, 0, stream="herding").requires_grad_(False).to(device)
    picks = []
    for c in classes:
        order = herding_order(class_features(pool, c, encoder, s, device), ipc)
        picks.append(pool.images_of(c, torch.tensor(order)))
    return torch.cat(picks), torch.tensor(list(classes)).repeat_interleave(ipc)
