"""ResNets: ResNetAP-10 (IDC's encoder for ImageNet subsets) and small-image ResNet-10/18.

ResNetAP replaces strided convolutions by 2x2 average pooling and uses instance norm; the
small-image ResNets are the usual CIFAR variants (3x3 stem, strided convs, batch norm) used
for cross-architecture evaluation.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from m3d_condense.models.norm import make_norm
from m3d_condense.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, avgpool_down: bool):
        super().__init__()
        conv_stride = 1 if avgpool_down else stride
        self.pool = avgpool_down and stride > 1
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=conv_stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            down = [nn.Conv2d(in_ch, out_ch, 1, stride=conv_stride, bias=False)]
            if self.pool:
                down.append(nn.AvgPool2d(2))
            self.shortcut = nn.Sequential(*down, make_norm(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        if self.pool:
            out = F.avg_pool2d(out, 2)
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Input (N, C, H, W) -> global-average-pooled features (N, 8 * width) -> logits."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], blocks: tuple[int, ...],
                 width: int = 64, norm: str = "batch", avgpool_down: bool = False):
        super().__init__()
        large = max(image_size) > 128
        if avgpool_down:  # ResNetAP: 7x7 stride-1 stem, extra AvgPool 4 for large inputs
            stem = [nn.Conv2d(channels, width, 7, padding=3, bias=False), make_norm(norm, width), nn.ReLU(inplace=True)]
            if large:
                stem.append(nn.AvgPool2d(4))
        else:
            stem = [nn.Conv2d(channels, width, 3, padding=1, bias=False), make_norm(norm, width), nn.ReLU(inplace=True)]
            if large:
                stem.append(nn.MaxPool2d(3, stride=4, padding=1))
        self.stem = nn.Sequential(*stem)
        stages, in_ch = [], width
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(in_ch, out_ch, stride, norm, avgpool_down))
                in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("resnetap10")
def resnetap10(channels, num_classes, image_size, width=None):
    return ResNet(channels, num_classes, image_size, (1, 1, 1, 1), width or 64, norm="instance", avgpool_down=True)


@register_model("resnet10")
def resnet10(channels, num_classes, image_size, width=None):
    return ResNet(channels, num_classes, image_size, (1, 1, 1, 1), width or 64)


@register_model("resnet18")
def resnet18(channels, num_classes, image_size, width=None):
    return ResNet(channels, num_classes, image_size, (2, 2, 2, 2), width or 64)
