"""DenseNet-121 sized for small images (3x3 stem, no initial pooling), for cross-architecture tests."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from m3d_condense.models.registry import register_model


class DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bottleneck: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, bottleneck * growth, 1, bias=False),
            nn.BatchNorm2d(bottleneck * growth), nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.net(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int],
                 blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32):
        super().__init__()
        ch = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 3, padding=1, bias=False)]
        if max(image_size) > 128:
            layers.append(nn.MaxPool2d(3, stride=4, padding=1))
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(ch, growth))
                ch += growth
            if i < len(blocks) - 1:  # transition: compress by half, downsample by 2
                layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, ch // 2, 1, bias=False),
                           nn.AvgPool2d(2)]
                ch //= 2
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.feature_dim = ch
        self.classifier = nn.Linear(ch, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("densenet121")
def densenet121(channels, num_classes, image_size, width=None):
    return DenseNet(channels, num_classes, image_size, growth=width or 32)
