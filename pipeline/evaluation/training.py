"""Evaluation protocol (docs/protocol.md; the released code's, from IDC): train a fresh network on the synthetic set only,
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
from typing import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from m3d_condense.models import NUM_UNIFORMS, augment, create_model, decode_rows, imagenet_augment
from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.data import LabeledImages
from m3d_condense.pipeline.logs import progress_bar
from m3d_condense.pipeline.method.compute import autocast, use_compile
from m3d_condense.pipeline.method.seeding import derive_seed, generator
from m3d_condense.pipeline.method.spec import DataSpec

# Optimizer steps from which eval.compile=auto compiles: the one-off compile (about a minute
# for the training and test graphs on CPU) is then a small part of the run.
COMPILE_AUTO_STEPS = 3000

def imagenet_epochs(images_per_class: int, num_classes: int) -> int:
    """IDC's evaluation epochs for ImageNet subsets, from the decoded training images per class
    (ipc * factor^2); for exactly 100 classes 2/3 of that, rounded down to a multiple of 100."""
    n = images_per_class
    epochs = 3000 if n == 1 else 2000 if n <= 10 else 1500 if n <= 50 else 1000 if n <= 200 else 500 if n <= 500 else 300
    if num_classes == 100:
        epochs = int(2 / 3 * epochs)
        epochs -= epochs % 100
    return epochs


def eval_epochs(cfg: RunConfig, images_per_class: int) -> int:
    """``eval.epochs``, or for None IDC's table on the decoded training images per class."""
    e = cfg.eval.epochs
    return e if e is not None else imagenet_epochs(images_per_class, cfg.data.num_classes)


def eval_compiles(cfg: RunConfig, images_per_class: int) -> bool:
    """``eval.compile``, with auto decided by the optimizer steps of one training run."""
    steps = eval_epochs(cfg, images_per_class) * -(-images_per_class * cfg.data.num_classes // cfg.eval.batch_size)
    return use_compile(cfg.eval.compile, steps, COMPILE_AUTO_STEPS)


@dataclass
class EvalResult:
    arch: str
    seed: int
    accuracy: float  # last epoch, fraction in [0, 1]
    best_accuracy: float  # best test accuracy seen during training (test-set selection)
    curve: list[tuple[int, float]]  # (epoch, test accuracy)
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss of every epoch


# Pixels per test forward: 1000 images of 224 px through ResNetAP-10's full-resolution stem
# hold about 24 GiB of activations (measured); 2**21 pixels keep it near 1 GiB there (41
# images) and leave 32 px sets at 1000 images per forward.
TEST_PIXELS = 2**21


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, test: LabeledImages, cfg: RunConfig, device: torch.device,
                  chunk: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on all of ``test``, a fraction in [0, 1]."""
    model.eval()
    correct = 0
    chunk = max(1, min(chunk, TEST_PIXELS // (test.images.shape[-2] * test.images.shape[-1])))
    normalize = DataSpec.of(cfg.data).normalize
    for i in range(0, len(test.labels), chunk):
        x = normalize(test.images[i:i + chunk].to(device).float().div_(255.0))
        with autocast(device, cfg.eval.precision):
            logits = model(x)
        correct += int((logits.argmax(1).cpu() == test.labels[i:i + chunk]).sum())
    model.train()
    return correct / len(test.labels)


def cutmix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
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


def train_batch(x_all: torch.Tensor, y_all: torch.Tensor, idx: torch.Tensor, cfg: RunConfig,
                g: torch.Generator, factor: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmented, normalised mini-batch ``idx`` of the training set that the stored images
    ``x_all`` (pixels in [0, 1], ``factor`` x ``factor`` tiles each) stand for, and its labels
    ``y_all[idx]``. dsa augments normalised images; the imagenet recipe augments pixels, then
    normalises."""
    x, y = decode_rows(x_all, idx, factor), y_all[idx]
    normalize = DataSpec.of(cfg.data).normalize
    if cfg.eval.recipe == "imagenet":
        return normalize(imagenet_augment(x, g)), y
    u = torch.rand(len(idx), NUM_UNIFORMS, generator=g)
    return augment(normalize(x), u, torch.arange(len(idx)), cfg.eval.augment), y


def epoch_batches(x_all: torch.Tensor, y_all: torch.Tensor, cfg: RunConfig, g: torch.Generator,
                  factor: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]]:
    """One epoch of the training set of the stored images ``x_all`` (N, C, H, W) in [0, 1]
    (``y_all``: N * factor^2 labels) as the evaluation trains on it: random mini-batches with the
    recipe's augmentation (``train_batch``), then CutMix on ``eval.cutmix_prob`` of them. Yields
    (x, y, y_b, lam): the loss is ``lam * CE(x, y) + (1 - lam) * CE(x, y_b)``; y_b None: no CutMix."""
    for idx in torch.randperm(len(y_all), generator=g).split(cfg.eval.batch_size):
        x, y = train_batch(x_all, y_all, idx.to(x_all.device), cfg, g, factor)
        if float(torch.rand(1, generator=g)) < cfg.eval.cutmix_prob:
            x, y_b, lam = cutmix(x, y, g)
            yield x, y, y_b, lam
        else:
            yield x, y, None, 1.0


def train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, x_all: torch.Tensor, y_all: torch.Tensor,
                cfg: RunConfig, g: torch.Generator, factor: int = 1) -> float:
    """One epoch of SGD over ``epoch_batches``; returns the mean training loss."""
    total, batches = torch.zeros((), device=x_all.device), 0
    for x, y, y_b, lam in epoch_batches(x_all, y_all, cfg, g, factor):
        with autocast(x_all.device, cfg.eval.precision):
            out = net(x).float()
        loss = F.cross_entropy(out, y) if y_b is None else lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y_b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
        batches += 1
    return float(total) / batches


def train_and_test(images: torch.Tensor, labels: torch.Tensor, test: LabeledImages, arch: str, cfg: RunConfig,
                   seed: int, device: torch.device | str = "cpu", progress: bool = False,
                   factor: int = 1) -> EvalResult:
    """Train ``arch`` from scratch on ``images`` (N, C, H, W) floats in [0, 1] with ``labels`` (N,)
    and test it on ``test``, with the recipe of ``cfg.eval`` on the dataset ``cfg.data``. With
    ``factor`` > 1 the images are stored multi-formation images: the network trains on the
    N * factor^2 images they decode to, decoded a mini-batch at a time, so only the stored set
    sits on the device. Everything random comes from ``seed``."""
    device, e, d = torch.device(device), cfg.eval, cfg.data
    per_class = len(labels) * factor * factor // d.num_classes
    epochs = eval_epochs(cfg, per_class)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "eval-model", arch))
        model = create_model(arch, d.channels, d.num_classes, d.image_size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=e.lr, momentum=e.momentum, weight_decay=e.weight_decay)
    milestones = [epochs * 2 // 3, epochs * 5 // 6]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.2)
    g = generator(seed, "eval-train", arch)
    # Compiled per model: a new model of an architecture seen before reuses its compiled code.
    net = torch.compile(model, dynamic=False) if eval_compiles(cfg, per_class) else model
    x_all, y_all = images.to(device).float(), labels.repeat_interleave(factor * factor).to(device)
    curve, losses = [], []
    model.train()
    for epoch in progress_bar(range(1, epochs + 1), desc=f"eval {arch}", unit="ep", progress=progress, leave=False):
        losses.append(train_epoch(net, opt, x_all, y_all, cfg, g, factor))
        sched.step()
        if epoch % e.test_every == 0 or epoch == epochs:
            curve.append((epoch, test_accuracy(net, test, cfg, device)))
    return EvalResult(arch=arch, seed=seed, accuracy=curve[-1][1], best_accuracy=max(a for _, a in curve),
                      curve=curve, seconds=time.perf_counter() - start, losses=losses)
