"""Multi-formation (IDC's factor l): each stored image holds an l x l grid of smaller images."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def decode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Stored images (N, C, H, W) -> training images (N * l * l, C, H, W).

    Pads with 0.5 (bottom/right) to a multiple of l, cuts the l x l grid row-major and
    upsamples every crop back to (H, W) bilinearly (align_corners=False). Crop k of image i
    lands at row ``i * l * l + k``, so labels are ``repeat_interleave(l * l)``.
    """
    if factor == 1:
        return images
    n, c, h, w = images.shape
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    x = F.pad(images, (0, cw * factor - w, 0, ch * factor - h), value=0.5)
    x = x.reshape(n, c, factor, ch, factor, cw).permute(0, 2, 4, 1, 3, 5).reshape(n * factor * factor, c, ch, cw)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def decode_rows(images: torch.Tensor, rows: torch.Tensor, factor: int) -> torch.Tensor:
    """Rows ``rows`` (M,) of ``decode(images, factor)``, computed from their stored images only:
    (M, C, H, W). A training loop decodes each mini-batch this way, so only the stored set
    (factor^2 times smaller) sits in memory."""
    if factor == 1:
        return images[rows]
    tiles = factor * factor
    crops = decode(images[rows // tiles], factor)  # every tile of each needed stored image
    return crops[torch.arange(len(rows), device=crops.device) * tiles + rows.to(crops.device) % tiles]


def mix_init(real: torch.Tensor, factor: int) -> torch.Tensor:
    """Tile real images (k * l * l, C, H, W) into k stored images (k, C, H, W).

    Each real image is downsampled (nearest) to (ceil(H/l), ceil(W/l)) and placed row-major
    into its stored image's l x l grid, the layout that ``decode`` reads back.
    """
    if factor == 1:
        return real.clone()
    n, c, h, w = real.shape
    if n % (factor * factor):
        raise ValueError(f"mix_init needs a multiple of {factor * factor} images, got {n}")
    k, ch, cw = n // (factor * factor), math.ceil(h / factor), math.ceil(w / factor)
    small = F.interpolate(real, size=(ch, cw), mode="nearest")
    tiled = small.reshape(k, factor, factor, c, ch, cw).permute(0, 3, 1, 4, 2, 5).reshape(k, c, factor * ch, factor * cw)
    return tiled[:, :, :h, :w].contiguous()
