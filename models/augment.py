"""Differentiable siamese augmentation (DSA) driven by a table of uniforms.

Randomness is passed in, not drawn here: ``u`` holds ``NUM_UNIFORMS`` uniforms per *group*
and ``groups`` maps every image to its group. During matching a group is a class: its real
and synthetic images share one transform (siamese), while different classes draw their own,
so all classes of a step go through one call. For evaluation every image is its own group.
Every op is differentiable w.r.t. the input pixels.

The released code (IDC's ``DiffAug``, which M3D uses) splits a strategy such as
``color_crop_cutout`` into flags (flip, colour, cutout) and a list of the remaining ops of
which it applies ONE per call. ``AugmentSpec`` holds the same pieces:

- matching, ``color_crop_cutout`` (one call per class): colour, crop (the only listed op, so
  always), cutout: ``AugmentSpec()``;
- evaluation of low-resolution sets, ``color_crop_flip_scale_rotate`` minus cutout (one call
  per mini-batch, per-image parameters): ``AugmentSpec(flip=True, geometric=["crop", "scale",
  "rotate"], op_per="batch", cutout=False)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

GEOMETRIC_OPS = ("crop", "scale", "rotate", "flip")
OP_CHOICES = ("group", "batch")
# Columns of the uniform table: brightness, saturation, contrast, op, shift y/x, scale x/y,
# angle, flip-as-op, cutout y/x, independent flip.
NUM_UNIFORMS = 13


@dataclass
class AugmentSpec:
    """What to apply, in the released order: flip (if on), colour (if on), ONE op of
    ``geometric``, cutout (if on).

    ``flip`` mirrors each group with probability 0.5, independently of the op. ``op_per``
    says who draws the op: ``group`` (each group its own: one class per call in matching) or
    ``batch`` (one op for the whole call, from the first row: one mini-batch per call in
    evaluation). "flip" in ``geometric`` is flipping as one of the ops (not what the released
    code does; kept for the old ``color_onegeom_cutout`` behaviour).
    """

    flip: bool = False
    color: bool = True
    geometric: list[str] = field(default_factory=lambda: ["crop"])
    op_per: str = "group"
    cutout: bool = True
    crop_ratio: float = 0.125  # max shift, fraction of the side
    scale_ratio: float = 1.2  # scale in [1/r, r]
    rotate_degrees: float = 15.0
    cutout_ratio: float = 0.5  # side of the erased square, fraction of the side

    def __post_init__(self):
        unknown = set(self.geometric) - set(GEOMETRIC_OPS)
        if unknown:
            raise ValueError(f"unknown augmentation ops {sorted(unknown)}; choose from {GEOMETRIC_OPS}")
        if self.op_per not in OP_CHOICES:
            raise ValueError(f"op_per={self.op_per!r}; choose from {OP_CHOICES}")


def flip_half(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images (N, C, H, W) whose uniform in ``u`` (N,) is below 0.5."""
    return torch.where((u < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)


def _color(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    b, s, c = (p[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = x + (b - 0.5)  # brightness
    mean_c = x.mean(1, keepdim=True)
    x = (x - mean_c) * (2.0 * s) + mean_c  # saturation around the per-pixel channel mean
    mean_all = x.mean((1, 2, 3), keepdim=True)
    return (x - mean_all) * (c + 0.5) + mean_all  # contrast around the image mean


def _affine(x: torch.Tensor, p: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """One affine resampling carries every geometric op (identity for images whose op is another).

    align_corners=False as the release's ``affine_grid``/``grid_sample`` defaults; an integer
    translation by 2*d/W is then an exact shift of d pixels with zero fill, like its crop."""
    n, _, h, w = x.shape
    ops = spec.geometric
    op = (p[:, 0] * len(ops)).long().clamp_max(len(ops) - 1)
    if spec.op_per == "batch":
        op = op[:1].expand(n)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0

    def chosen(name: str) -> torch.Tensor:
        return op == ops.index(name) if name in ops else torch.zeros_like(op, dtype=torch.bool)

    if "crop" in ops:  # integer-pixel translation with zero fill
        sh, sw = int(h * spec.crop_ratio + 0.5), int(w * spec.crop_ratio + 0.5)
        dy = (p[:, 1] * (2 * sh + 1)).floor().clamp_max(2 * sh) - sh
        dx = (p[:, 2] * (2 * sw + 1)).floor().clamp_max(2 * sw) - sw
        m = chosen("crop")
        theta[:, 0, 2] = torch.where(m, 2 * dx / w, theta[:, 0, 2])
        theta[:, 1, 2] = torch.where(m, 2 * dy / h, theta[:, 1, 2])
    if "scale" in ops:
        r = spec.scale_ratio
        m = chosen("scale")
        theta[:, 0, 0] = torch.where(m, p[:, 3] * (r - 1 / r) + 1 / r, theta[:, 0, 0])
        theta[:, 1, 1] = torch.where(m, p[:, 4] * (r - 1 / r) + 1 / r, theta[:, 1, 1])
    if "rotate" in ops:
        a = (p[:, 5] - 0.5) * 2 * math.radians(spec.rotate_degrees)
        m = chosen("rotate")
        theta[:, 0, 0] = torch.where(m, a.cos(), theta[:, 0, 0])
        theta[:, 0, 1] = torch.where(m, -a.sin(), theta[:, 0, 1])
        theta[:, 1, 0] = torch.where(m, a.sin(), theta[:, 1, 0])
        theta[:, 1, 1] = torch.where(m, a.cos(), theta[:, 1, 1])
    if "flip" in ops:
        m = chosen("flip") & (p[:, 6] < 0.5)
        theta[:, 0, 0] = torch.where(m, -theta[:, 0, 0], theta[:, 0, 0])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _cutout(x: torch.Tensor, p: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * spec.cutout_ratio + 0.5), int(w * spec.cutout_ratio + 0.5)
    top = (p[:, 0] * (h + 1 - ch % 2)).floor().long() - ch // 2
    left = (p[:, 1] * (w + 1 - cw % 2)).floor().long() - cw // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + ch)
    in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def augment(x: torch.Tensor, u: torch.Tensor, groups: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """Augment normalised images ``x`` (N, C, H, W).

    ``u``: (G, NUM_UNIFORMS) uniforms in [0, 1); ``groups``: (N,) long, the row of ``u`` each
    image uses. Images of one group get exactly the same transform.
    """
    p = u.to(device=x.device, dtype=x.dtype)[groups.to(x.device)]
    if spec.flip:
        x = flip_half(x, p[:, 12])
    if spec.color:
        x = _color(x, p[:, 0:3])
    if spec.geometric:
        x = _affine(x, p[:, 3:10], spec)
    if spec.cutout:
        x = _cutout(x, p[:, 10:12], spec)
    return x
