"""The released M3D loop, written from SPEC.md for comparison (not part of the product).

For every class in turn: decode that class's synthetic images, forward [real; synthetic]
through the encoder with that class's siamese augmentation, backward, and one
``torch.optim.SGD`` step on the single synthetic tensor (one shared momentum buffer), then
clamp after the iteration. It draws the same randomness as ``pipeline.engine`` (encoder from
(seed, t // ipm), real batch from (seed, c, t), augmentation row c of the (seed, t) table),
so both can be compared number for number and timed on the same work.
"""
from __future__ import annotations

from typing import Sequence

import torch

from kernels import mmd2
from models import augment, decode
from pipeline.data import ClassPool
from pipeline.engine import EngineSettings, augment_uniforms, build_encoder, initial_images


class ReferenceLoop:
    def __init__(self, settings: EngineSettings, pool: ClassPool, classes: Sequence[int], device: str = "cpu"):
        s = self.s = settings
        self.pool, self.classes, self.device = pool, list(classes), torch.device(device)
        init = initial_images(pool, self.classes, s).to(self.device)
        self.images = init.requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=s.lr, momentum=s.momentum)
        self.iteration = 0

    def step(self) -> torch.Tensor:
        s, t = self.s, self.iteration
        encoder = build_encoder(s, t // s.ipm).to(self.device)  # the release builds a fresh one; same weights
        u = augment_uniforms(s, t)
        losses = []
        for pos, c in enumerate(self.classes):
            real = self.pool.sample([c], s.batch_real, s.seed, t).to(self.device)
            syn = decode(self.images[pos * s.ipc:(pos + 1) * s.ipc], s.factor)
            x = s.data.normalize(torch.cat([real, syn]))
            x = augment(x, u[[c]], torch.zeros(len(x), dtype=torch.long), s.augment)
            f = encoder.embed(x)
            loss = mmd2(f[len(real):], f[:len(real)], s.kernel, s.estimator)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            self.images.clamp_(0.0, 1.0)
        self.iteration += 1
        return torch.tensor(losses)
