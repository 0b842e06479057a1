"""A name -> constructor registry for networks (timm style).

Every registered constructor takes ``(channels, num_classes, image_size, width=None)`` and
returns an ``nn.Module`` with ``embed(x) -> (N, feature_dim)`` and ``forward(x) -> logits``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(
    name: str, channels: int, num_classes: int, image_size: tuple[int, int], width: int | None = None
) -> nn.Module:
    """Build a registered network; an unknown name raises with the valid names."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose one of {list_models()}")
    return _REGISTRY[name](channels=channels, num_classes=num_classes, image_size=tuple(image_size), width=width)
