"""ConvNet-D (DC/DM/M3D's default encoder): D blocks of conv3x3 -> norm -> ReLU -> AvgPool2."""
from __future__ import annotations

import torch
from torch import nn

from m3d_condense.models.norm import make_norm
from m3d_condense.models.registry import register_model


class ConvNet(nn.Module):
    """Input (N, channels, H, W) -> features (N, width * h * w) -> logits (N, num_classes).

    One-channel inputs get padding 3 in the first conv (28x28 becomes 32x32), as released.
    """

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int],
                 width: int = 128, depth: int = 3, norm: str = "instance"):
        super().__init__()
        layers: list[nn.Module] = []
        h, w = image_size
        in_ch = channels
        for d in range(depth):
            pad = 3 if (channels == 1 and d == 0) else 1
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), make_norm(norm, width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            h, w = (h + 2 * pad - 2) // 2, (w + 2 * pad - 2) // 2
            if h < 1 or w < 1:
                raise ValueError(f"image size {image_size} is too small for a depth-{depth} ConvNet")
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _convnet(depth: int):
    def build(channels, num_classes, image_size, width=None):
        return ConvNet(channels, num_classes, image_size, width=width or 128, depth=depth)

    return build


register_model("convnet3")(_convnet(3))
register_model("convnet4")(_convnet(4))
# Depth 5 for 128 px (ImageNette/ImageWoof and the other 10-class ImageNet folders): MTT's
# ConvNetD5, DANCE's and NCFM's `convnet` with depth 5, width 128, instance norm; 128 px ->
# 4x4 x 128 = 2048 features, as ConvNet-3 gives at 32 px.
register_model("convnet5")(_convnet(5))
