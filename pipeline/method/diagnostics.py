"""Moment diagnostics (paper Table 1): how far the first four feature moments of a synthetic
set are from the real data's, under fresh random encoders that the matching never used."""
from __future__ import annotations

from typing import Sequence

import torch

from m3d_condense.kernels import moment_gaps
from m3d_condense.kernels.moments import MOMENT_ORDERS
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.method.engine import build_encoder
from m3d_condense.pipeline.method.spec import CondenseSpec


@torch.no_grad()
def moment_report(sets: dict[str, tuple[torch.Tensor, torch.Tensor]], cache: ClassCache, classes: Sequence[int],
                  s: CondenseSpec, encoders: int, real_per_class: int, device: torch.device) -> dict[str, dict]:
    """For each named set (decoded images (N, C, H, W) in [0, 1], labels (N,)): the gap of each
    moment order between its features and those of ``real_per_class`` random real images,
    per class, averaged over classes and over ``encoders`` encoders of the "moments" stream."""
    totals = {name: dict.fromkeys(MOMENT_ORDERS, 0.0) for name in sets}
    for e in range(encoders):
        net = build_encoder(s, e, stream="moments").requires_grad_(False).to(device)
        for c in classes:
            n = min(real_per_class, cache.count[c])
            real = cache.random_subset(c, n, seed=s.seed + 7919 * e).to(device)
            f_real = net.embed(s.data.normalize(real)).flatten(1).float()
            for name, (images, labels) in sets.items():
                f_syn = net.embed(s.data.normalize(images[labels == c].to(device))).flatten(1).float()
                for order, gap in moment_gaps(f_syn, f_real).items():
                    totals[name][order] += gap / (encoders * len(classes))
    return totals
