"""Selection baselines evaluated in the same harness as condensation."""
from __future__ import annotations

from typing import Sequence

import torch

from pipeline.data import ClassPool


def random_real(pool: ClassPool, classes: Sequence[int], ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` distinct random real images per class (no factor): images (C * ipc, ...) in [0, 1], labels."""
    images = torch.cat([pool.random_subset(c, ipc, seed) for c in classes])
    return images, torch.tensor(list(classes)).repeat_interleave(ipc)
