"""Evaluation protocol (SPEC.md, IDC's): train a fresh network on the synthetic set only,
test on the full real test set.

SGD with momentum 0.9, step decay x0.2 at 2/3 and 5/6 of the epochs, and one of two
training recipes, as released:
- ``dsa`` (low-resolution sets): lr 0.01, weight decay 5e-4, batch 64, 1000 epochs; DSA per
  image (flip p 0.5, colour, then ONE of crop/scale/rotate per mini-batch), CutMix p 0.5.
- ``imagenet``: RandomResizedCrop(0.5-1), flip, colour jitter and PCA lighting per image,
  CutMix on every mini-batch; epochs from IDC's table on the decoded images per class
  (``imagenet_epochs``); lr 0.1, weight decay 1e-4, batch 128 for 100 or more classes (presets).
Speed (``eval.compile``, ``eval.precision``): the model may run through ``torch.compile`` and
under bf16 autocast; neither changes the recipe, only the arithmetic (BENCHMARKS.md has the
speed and the accuracy of each).

We report the last-epoch accuracy; the best accuracy seen on the test set is kept only for
comparison with the reference, which reports it, and is labelled as such.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from m3d_condense.models import NUM_UNIFORMS, AugmentSpec, augment, create_model, imagenet_augment
from m3d_condense.pipeline.compute import autocast, use_compile
from m3d_condense.pipeline.config import augment_spec
from m3d_condense.pipeline.data import DataSpec, LabeledImages
from m3d_condense.pipeline.seeding import derive_seed, generator
from omegaconf import DictConfig
from torch.nn import functional as F

# Optimizer steps from which eval.compile=auto compiles: the one-off compile (about a minute
# for the training and test graphs on CPU) is then a small part of the run.
COMPILE_AUTO_STEPS = 3000

# The released low-resolution evaluation augmentation: color_crop_flip_scale_rotate minus cutout.
DSA_EVAL = AugmentSpec(flip=True, color=True, geometric=("crop", "scale", "rotate"), op_per="batch", cutout=False)


def imagenet_epochs(images_per_class: int, num_classes: int) -> int:
    """IDC's evaluation epochs for ImageNet subsets, from the decoded training images per class
    (ipc * factor^2); for exactly 100 classes 2/3 of that, rounded down to a multiple of 100."""
    n = images_per_class
    epochs = 3000 if n == 1 else 2000 if n <= 10 else 1500 if n <= 50 else 1000 if n <= 200 else 500 if n <= 500 else 300
    if num_classes == 100:
        epochs = int(2 / 3 * epochs)
        epochs -= epochs % 100
    return epochs


@dataclass(frozen=True)
class EvalSettings:
    data: DataSpec
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    recipe: str = "dsa"  # dsa | imagenet (see the module docstring)
    cutmix_prob: float = 0.5
    test_every: int = 100
    augment: AugmentSpec = DSA_EVAL  # recipe dsa only
    compile: bool = False  # torch.compile the model (same recipe, fused kernels)
    precision: str = "fp32"  # fp32 | bf16: forwards and backwards under bf16 autocast, fp32 weights and loss

    @classmethod
    def from_config(cls, cfg: DictConfig, images_per_class: int | None = None) -> "EvalSettings":
        """``images_per_class``: decoded training images per class of the set to evaluate, which
        sets the epochs when ``eval.epochs`` is null (default: ipc * factor^2)."""
        e = cfg.eval
        per_class = images_per_class or cfg.ipc * cfg.factor**2
        epochs = e.epochs if e.epochs is not None else imagenet_epochs(per_class, cfg.data.num_classes)
        steps = epochs * -(-per_class * cfg.data.num_classes // e.batch_size)  # optimizer steps of the whole run
        return cls(data=DataSpec.from_config(cfg.data), epochs=epochs, lr=e.lr, momentum=e.momentum,
                   weight_decay=e.weight_decay, batch_size=e.batch_size, recipe=e.recipe, cutmix_prob=e.cutmix_prob,
                   test_every=e.test_every, augment=augment_spec(e.augment),
                   compile=use_compile(e.compile, steps, COMPILE_AUTO_STEPS), precision=e.precision)


@dataclass
class EvalResult:
    arch: str
    seed: int
    accuracy: float  # last epoch, fraction in [0, 1]
    best_accuracy: float  # best test accuracy seen during training (test-set selection)
    curve: list[tuple[int, float]]  # (epoch, test accuracy)
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss of every epoch


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, test: LabeledImages, s: EvalSettings, device: torch.device,
                  chunk: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on all of ``test``, a fraction in [0, 1]."""
    model.eval()
    correct = 0
    for i in range(0, len(test.labels), chunk):
        x = s.data.normalize(test.images[i:i + chunk].to(device).float().div_(255.0))
        with autocast(device, s.precision):
            logits = model(x)
        correct += int((logits.argmax(1).cpu() == test.labels[i:i + chunk]).sum())
    model.train()
    return correct / len(test.labels)


def _cutmix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019) with lambda ~ Beta(1, 1); returns mixed x, partner labels, lambda."""
    n, _, h, w = x.shape
    lam = float(torch.rand(1, generator=g))
    perm = torch.randperm(n, generator=g).to(x.device)
    cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
    y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually kept
    return x, y[perm], lam


def train_batch(x_all: torch.Tensor, y_all: torch.Tensor, idx: torch.Tensor, s: EvalSettings,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmented, normalised mini-batch ``idx`` of the training set ``x_all`` (pixels in
    [0, 1]) and its labels. dsa augments normalised images; the imagenet recipe augments pixels,
    then normalises."""
    x, y = x_all[idx], y_all[idx]
    if s.recipe == "imagenet":
        return s.data.normalize(imagenet_augment(x, g)), y
    u = torch.rand(len(idx), NUM_UNIFORMS, generator=g)
    return augment(s.data.normalize(x), u, torch.arange(len(idx)), s.augment), y


def train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, x_all: torch.Tensor, y_all: torch.Tensor,
                s: EvalSettings, g: torch.Generator) -> float:
    """One epoch of SGD over ``x_all`` (N, C, H, W) in [0, 1] in random mini-batches, with the
    recipe's augmentation and CutMix; returns the mean training loss."""
    total = torch.zeros((), device=x_all.device)
    batches = torch.randperm(len(y_all), generator=g).split(s.batch_size)
    for idx in batches:
        x, y = train_batch(x_all, y_all, idx.to(x_all.device), s, g)
        mix = float(torch.rand(1, generator=g)) < s.cutmix_prob
        if mix:
            x, y_b, lam = _cutmix(x, y, g)
        with autocast(x_all.device, s.precision):
            out = net(x).float()
        loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y_b) if mix else F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
    return float(total) / len(batches)


def train_and_test(images: torch.Tensor, labels: torch.Tensor, test: LabeledImages, arch: str, s: EvalSettings,
                   seed: int, device: torch.device | str = "cpu", progress: bool = False) -> EvalResult:
    """Train ``arch`` from scratch on ``images`` (N, C, H, W) floats in [0, 1] with ``labels`` (N,)
    and test it on ``test``. Everything random comes from ``seed``."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "eval-model", arch))
        model = create_model(arch, s.data.channels, s.data.num_classes, s.data.image_size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    milestones = [s.epochs * 2 // 3, s.epochs * 5 // 6]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.2)
    g = generator(seed, "eval-train", arch)
    # Compiled per model: a new model of an architecture seen before reuses its compiled code.
    net = torch.compile(model, dynamic=False) if s.compile else model
    x_all, y_all = images.to(device).float(), labels.to(device)
    curve, losses = [], []
    model.train()
    for epoch in tqdm(range(1, s.epochs + 1), desc=f"eval {arch}", unit="ep", disable=not progress, leave=False):
        losses.append(train_epoch(net, opt, x_all, y_all, s, g))
        sched.step()
        if epoch % s.test_every == 0 or epoch == s.epochs:
            curve.append((epoch, test_accuracy(net, test, s, device)))
    return EvalResult(arch=arch, seed=seed, accuracy=curve[-1][1], best_accuracy=max(a for _, a in curve),
                      curve=curve, seconds=time.perf_counter() - start, losses=losses)
