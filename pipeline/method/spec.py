"""What a condensation reads: ``CondenseSpec``, built once from the run's config.

The engine (``engine.py``), its memory sizing (``memory.py``), the selection baselines and the
moment diagnostics take this spec rather than the whole ``RunConfig``, so the method's contract
is the list of fields below: nothing of where a run executes, how it is evaluated or where it
writes reaches them. Every field but ``chunk_classes`` comes from a key that shapes the
synthetic set (part of the run fingerprint, ``config/schema.py``); ``chunk_classes`` only
decides how many classes share a forward, which is exact either way.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from m3d_condense.models.augment import AugmentSpec

if TYPE_CHECKING:
    from m3d_condense.pipeline.config.schema import DataConfig, RunConfig


@dataclass(frozen=True)
class DataSpec:
    """The real images as the method sees them: their shape, their classes, and the per-channel
    statistics every network input is normalised with (``normalize``: the one place, for the
    encoders here and the evaluation's models alike). Built from ``data`` once the dataset is
    resolved (a prepared dataset's manifest fills what a preset leaves unset)."""

    image_size: tuple[int, int]  # (height, width) in pixels
    channels: int
    num_classes: int
    mean: tuple[float, ...]  # per channel, of pixels in [0, 1]
    std: tuple[float, ...]  # per channel, of pixels in [0, 1]

    @classmethod
    def of(cls, data: DataConfig) -> DataSpec:
        return cls(tuple(data.image_size), data.channels, data.num_classes, tuple(data.mean), tuple(data.std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (N, C, H, W) in [0, 1] -> (x - mean) / std per channel."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class CondenseSpec:
    """Everything one condensation reads; ``CondenseSpec.of(cfg)`` for a run's config. Choices
    are plain strings, as the method names them."""

    seed: int  # every random draw derives from it (seeding.py): encoders, real batches, init, augmentation
    ipc: int  # stored synthetic images per class
    factor: int  # multi-formation l: each stored image holds l x l training images
    init: str  # mix (a seeded random sample of each class) | mix_first (each class's first images), tiled
    iterations: int  # the run's length: decides compile=auto
    ipm: int  # iterations per random encoder
    arch: str  # the random encoder's network (models.list_models())
    width: int | None  # its width; None: the architecture's default
    batch_real: int  # real images per class per iteration
    augment: AugmentSpec  # the siamese DSA of matching: one draw per class per iteration
    kernel: str  # MMD kernel: gaussian | linear | polynomial
    estimator: str  # biased (V-statistic) | unbiased (U-statistic)
    lr: float  # SGD learning rate of the pixels (values in [0, 1])
    momentum: float
    update_mode: str  # reference (the released per-class steps) | batched (one step on the summed losses)
    chunk_classes: int  # classes per encoder forward; 0: the fastest that fits
    precision: str  # fp32 | bf16 (autocast of the encoder forwards; MMD and images stay fp32)
    compile: str | bool  # torch.compile the encoder: true | false | "auto"
    data: DataSpec

    @classmethod
    def of(cls, cfg: RunConfig) -> CondenseSpec:
        """The spec of the run ``cfg`` (its ``lr`` already resolved; the augmentation copied)."""
        return cls(seed=cfg.seed, ipc=cfg.ipc, factor=cfg.factor, init=str(cfg.init), iterations=cfg.iterations,
                   ipm=cfg.ipm, arch=cfg.encoder.arch, width=cfg.encoder.width, batch_real=cfg.batch_real,
                   augment=AugmentSpec(**dataclasses.asdict(cfg.augment)), kernel=str(cfg.kernel),
                   estimator=str(cfg.estimator), lr=cfg.lr, momentum=cfg.momentum, update_mode=str(cfg.update_mode),
                   chunk_classes=cfg.chunk_classes, precision=str(cfg.precision), compile=cfg.compile,
                   data=DataSpec.of(cfg.data))
