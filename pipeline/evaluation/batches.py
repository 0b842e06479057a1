"""A condensed set's mini-batches for your own training loop, drawn exactly as our evaluation
draws them (``pipeline/evaluation/training.py``, ``train_batch``): a random order per epoch, the decoded
images of each batch, the recipe's augmentation (``dsa``: flip, colour, then one of crop /
scale / rotate per mini-batch; ``imagenet``: RandomResizedCrop, flip, colour jitter, lighting),
normalised; optionally CutMix with the evaluation's probability, as soft labels.

    for epoch in range(300):
        for x, y in syn.batches(64, preset="cifar10"):
            loss = F.cross_entropy(model(x), y)   # y: class indices, or (B, classes) probabilities with cutmix

DSA's "one op per mini-batch" is why this is a batch iterable and not a per-image transform.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.nn import functional as F

from m3d_condense.pipeline.evaluation.training import epoch_batches
from m3d_condense.pipeline.method.seeding import generator


class TrainingBatches:
    """Re-iterable: every ``iter()`` is one epoch of ``(x, y)``: x (B, C, H, W) normalised and
    augmented, y (B,) class indices, or with ``cutmix=True`` (B, classes) label probabilities.

    ``preset`` gives the recipe and its augmentation (MNIST's drops the flip, ImageNet presets
    use the imagenet recipe) and, if the set does not carry them, the normalisation; keyword
    overrides are the command line's keys as in ``condense`` (``eval={"recipe": "dsa"}``).
    ``seed`` fixes the order and the augmentation of every epoch; ``device`` is where the
    stored set is kept and the batches are made."""

    def __init__(self, syn: Any, batch_size: int | None = None, *, preset: str = "custom", cutmix: bool = False,
                 seed: int = 0, device: str | torch.device = "cpu", **overrides: Any):
        from m3d_condense.pipeline.config.loader import hydra_overrides, training_config  # Hydra: only when used

        args = hydra_overrides({"eval": {"batch_size": batch_size}} if batch_size else {}) + hydra_overrides(overrides)
        if not cutmix:  # the coin is still drawn per batch, so the augmentation draws match the evaluation's
            args.append("eval.cutmix_prob=0")
        self.cfg = training_config(preset, syn, args)
        self.device = torch.device(device)
        self.images = syn.images.to(self.device).float()
        self.factor, self.num_classes = syn.factor, len(syn.class_names)
        self.labels = syn.training_labels().to(self.device)
        self.cutmix = cutmix
        self.g = generator(seed, "training-batches")

    def __len__(self) -> int:
        """Mini-batches per epoch."""
        return -(-len(self.labels) // self.cfg.eval.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, y_b, lam in epoch_batches(self.images, self.labels, self.cfg, self.g, self.factor):
            if not self.cutmix:
                yield x, y
            else:  # one label format per iterator: probabilities throughout
                soft = F.one_hot(y, self.num_classes).float()
                yield x, soft if y_b is None else lam * soft + (1 - lam) * F.one_hot(y_b, self.num_classes).float()
