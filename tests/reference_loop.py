"""The released M3D loop, with the released structure, for comparison (not part of the product).

It mirrors IDC's ``condense()`` with M3D's loss in ``matchloss`` (snu-mllab/
Efficient-Dataset-Condensation, ``condense.py``), which is what our speed ratios are measured
against, so it does what that loop does and nothing less:
- a fresh encoder every ``ipm`` iterations (``fix_iter``), in train mode, its weights left
  requiring grad as the release leaves them (so every backward also computes weight
  gradients, work the release really does);
- for every class in turn: that class's real batch and decoded synthetic images, ONE siamese
  augmentation of ``cat([real, synthetic])`` (the graph spans the whole concatenation), the real
  features under ``torch.no_grad()``, the synthetic features with grad, MMD^2, backward, and
  one ``torch.optim.SGD`` step on the single synthetic tensor (one shared momentum buffer);
- the clamp to [0, 1] once per iteration (the release clamps at the start of the next
  iteration: the same sequence of images).

It draws the same randomness as ``pipeline.method.engine`` (encoder from (seed, t // ipm), real batch
from (seed, c, t), augmentation row c of the (seed, t) table), so both can be compared number
for number (tests/test_engine.py) and timed on the same work (benchmarks/speed_vs_reference.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from m3d_condense.kernels import mmd2
from m3d_condense.models import augment, decode
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.method.engine import augment_uniforms, build_encoder, initial_images
from m3d_condense.pipeline.method.spec import CondenseSpec


class ReferenceLoop:
    def __init__(self, settings: CondenseSpec, cache: ClassCache, classes: Sequence[int], device: str = "cpu"):
        s = self.s = settings
        self.cache, self.classes, self.device = cache, list(classes), torch.device(device)
        init = initial_images(cache, self.classes, s).to(self.device)
        self.images = init.requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=s.lr, momentum=s.momentum)
        self.iteration = 0
        self.encoder, self._encoder_index = None, None

    def _fresh_encoder(self, t: int) -> torch.nn.Module:
        """The release builds a new model every fix_iter iterations and keeps it in between."""
        if t // self.s.ipm != self._encoder_index:
            self._encoder_index = t // self.s.ipm
            self.encoder = build_encoder(self.s, self._encoder_index).to(self.device).train()
        return self.encoder

    def match_loss(self, encoder: torch.nn.Module, x: torch.Tensor, n_real: int) -> torch.Tensor:
        """M3D's ``matchloss``: MMD^2 between the features of x[n_real:] (synthetic, with grad)
        and of x[:n_real] (real, computed under no_grad)."""
        with torch.no_grad():
            f_real = encoder.embed(x[:n_real])
        f_syn = encoder.embed(x[n_real:])
        return mmd2(f_syn, f_real, self.s.kernel, self.s.estimator)

    def step(self) -> torch.Tensor:
        s, t = self.s, self.iteration
        encoder = self._fresh_encoder(t)
        u = augment_uniforms(s, t)
        losses = []
        for pos, c in enumerate(self.classes):
            real = self.cache.sample([c], s.batch_real, s.seed, t).to(self.device)
            syn = decode(self.images[pos * s.ipc:(pos + 1) * s.ipc], s.factor)
            x = s.data.normalize(torch.cat([real, syn]))
            x = augment(x, u[[c]], torch.zeros(len(x), dtype=torch.long), s.augment)  # one draw for the class
            loss = self.match_loss(encoder, x, len(real))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            self.images.clamp_(0.0, 1.0)
        self.iteration += 1
        return torch.tensor(losses)
