"""The ImageNet training augmentation of the released evaluation, on batches of tensors.

IDC (which M3D's release builds on) trains evaluation networks on ImageNet subsets with
torchvision-style per-image transforms on images in [0, 1], before normalisation:
RandomResizedCrop(scale 0.5-1, ratio 3/4-4/3), horizontal flip with probability 0.5, colour
jitter (brightness, contrast, saturation, each a lerp with strength uniform in [-0.4, 0.4],
in a random order per image) and AlexNet-style PCA lighting (alpha ~ N(0, 0.1)). Here the
same draws are made for a whole batch at once, so the transform runs on the GPU.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from m3d_condense.models.augment import flip_half

# ImageNet's RGB PCA (AlexNet lighting noise), as IDC uses it.
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
GRAY = (0.299, 0.587, 0.114)


def rrc_boxes(n: int, h: int, w: int, g: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
              attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes (n, 4) as (top, left, height, width) in pixels, sampled as
    torchvision does: up to ``attempts`` draws of (area fraction, log-uniform aspect), the
    first that fits; else the centre crop with the aspect clamped to ``ratio``."""
    area = h * w * (torch.rand(n, attempts, generator=g) * (scale[1] - scale[0]) + scale[0])
    log_r = torch.rand(n, attempts, generator=g) * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    aspect = log_r.exp()
    cw = (area * aspect).sqrt().round()
    ch = (area / aspect).sqrt().round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    ok = fits.any(1)
    pick = fits.float().argmax(1, keepdim=True)  # the first draw that fits (0 where none does)
    pos = torch.rand(n, 2, generator=g)
    boxes = torch.zeros(n, 4)
    bh, bw = ch.gather(1, pick)[:, 0], cw.gather(1, pick)[:, 0]
    boxes[:, 2], boxes[:, 3] = bh, bw
    boxes[:, 0] = (pos[:, 0] * (h - bh + 1)).floor().clamp_max(h - bh)
    boxes[:, 1] = (pos[:, 1] * (w - bw + 1)).floor().clamp_max(w - bw)
    if not ok.all():  # fallback: the whole image cropped to the nearest allowed aspect, centred
        in_ratio = w / h
        fw, fh = (w, h) if ratio[0] <= in_ratio <= ratio[1] else \
            ((w, round(w / ratio[0])) if in_ratio < ratio[0] else (round(h * ratio[1]), h))
        boxes[~ok] = torch.tensor([(h - fh) // 2, (w - fw) // 2, fh, fw], dtype=torch.float32)
    return boxes


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop box i of image i (boxes as from ``rrc_boxes``) and resize it to ``size``, bilinear."""
    n, _, h, w = x.shape
    top, left, bh, bw = (boxes[:, i].to(x) for i in range(4))
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = bw / w, bh / h
    theta[:, 0, 2] = (2 * left + bw) / w - 1  # centre of the box in normalised coordinates
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = F.affine_grid(theta, [n, x.shape[1], *size], align_corners=False)
    # Sample only inside the box (edge pixels repeat), as cropping first and then resizing does.
    lo = torch.stack([(2 * left + 1) / w - 1, (2 * top + 1) / h - 1], -1).view(n, 1, 1, 2)
    hi = torch.stack([(2 * (left + bw) - 1) / w - 1, (2 * (top + bh) - 1) / h - 1], -1).view(n, 1, 1, 2)
    grid = torch.maximum(torch.minimum(grid, hi), lo)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, strength: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """IDC's ColorJitter: ``strength`` (n, 3) alphas for brightness, contrast, saturation; each
    op is ``x.lerp(target, alpha)``; ``order`` (n, 3) is the permutation of the three ops."""
    for position in range(3):
        a = strength.gather(1, order[:, position:position + 1]).view(-1, 1, 1, 1).to(x)
        op = order[:, position].view(-1, 1, 1, 1).to(x.device)
        gray = _gray(x)
        target = torch.where(op == 0, torch.zeros_like(x),  # brightness: towards black
                             torch.where(op == 1, gray.mean((2, 3), keepdim=True).expand_as(x),  # contrast
                                         gray.expand_as(x)))  # saturation
        x = x + a * (target - x)
    return x


def lighting(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """AlexNet PCA lighting: add eigvec @ (alpha * eigval) to each image; ``alpha`` (n, 3)."""
    eigvec = torch.tensor(EIGVEC, dtype=x.dtype, device=x.device)
    eigval = torch.tensor(EIGVAL, dtype=x.dtype, device=x.device)
    rgb = (alpha.to(x)[:, None, :] * eigval * eigvec).sum(-1)  # (n, 3)
    return x + rgb[:, :, None, None]


def imagenet_augment(x: torch.Tensor, g: torch.Generator, jitter: float = 0.4, lighting_std: float = 0.1,
                     scale=(0.5, 1.0)) -> torch.Tensor:
    """The released ImageNet training transform of images ``x`` (N, 3, H, W) in [0, 1], per
    image, all draws from ``g``: RandomResizedCrop to (H, W), flip, colour jitter, lighting.
    Returns images in the same space (normalise afterwards)."""
    n, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"the ImageNet evaluation augmentation needs RGB images, got {c} channels")
    x = resized_crop(x, rrc_boxes(n, h, w, g, scale=scale), (h, w))
    x = flip_half(x, torch.rand(n, generator=g).to(x.device))
    strength = (torch.rand(n, 3, generator=g) * 2 - 1) * jitter
    order = torch.rand(n, 3, generator=g).argsort(1)
    x = color_jitter(x, strength, order)
    return lighting(x, torch.randn(n, 3, generator=g) * lighting_std)
