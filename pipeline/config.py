"""Compose a run's config from a preset and Hydra overrides, and check it.

The configs ship inside the ``configs`` package and are found with Hydra's module search
path, so this works wherever the calling script lives (``ray submit`` copies run.py alone).
"""
from __future__ import annotations

from importlib import resources

from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from m3d_condense.kernels import ESTIMATORS, KERNELS
from m3d_condense.models import list_models
from m3d_condense.models.augment import GEOMETRIC_OPS, OP_CHOICES, AugmentSpec
from m3d_condense.pipeline.compute import PRECISIONS
from omegaconf import DictConfig, OmegaConf

BASE = "base"
CHOICES = {
    "method": ("m3d", "random", "herding", "whole"),
    "device": ("auto", "cpu", "cuda"),
    "kernel": KERNELS,
    "estimator": ESTIMATORS,
    "update_mode": ("reference", "batched"),
    "init": ("mix", "mix_first"),
    "augment.op_per": OP_CHOICES,
    "eval.augment.op_per": OP_CHOICES,
    "eval.recipe": ("dsa", "imagenet"),
    "data.source": ("auto", "shards", "npz", "digits"),
    "data.cache": ("auto", "device", "host", "stream"),
    "backend": ("auto", "local", "ray"),
    "compile": ("auto", True, False),
    "precision": PRECISIONS,
    "eval.compile": ("auto", True, False),
    "eval.precision": PRECISIONS,
}
# Keys a preset may leave null for the manifest of a prepared dataset to fill (preset custom).
FROM_MANIFEST = ("data.num_classes", "data.channels", "data.image_size", "data.mean", "data.std")


class ConfigError(ValueError):
    """A preset, key or value the user gave is not valid; the message lists the valid ones."""


def list_presets() -> list[str]:
    files = resources.files("m3d_condense.configs").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml") and f.name != f"{BASE}.yaml")


def _dotted_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return keys


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The resolved config of ``preset`` with ``overrides`` (Hydra syntax, ``key=value``)."""
    presets = list_presets()
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    with initialize_config_module("m3d_condense.configs", version_base=None):
        try:
            cfg = compose(config_name=preset, overrides=list(overrides))
        except ConfigCompositionException as e:
            valid = _dotted_keys(compose(config_name=preset))
            reason = str(e).splitlines()[0]  # Hydra's second line suggests "+key", which we do not support
            raise ConfigError(f"{reason} (preset {preset!r})\nvalid keys: {', '.join(valid)}") from None
    OmegaConf.resolve(cfg)
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key for any value outside its valid set or range."""
    for key, allowed in CHOICES.items():
        if OmegaConf.select(cfg, key) not in allowed:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r} is not valid; choose one of: "
                              f"{', '.join(str(a).lower() if isinstance(a, bool) else a for a in allowed)}")
    for key in FROM_MANIFEST:
        if OmegaConf.select(cfg, key) is None and cfg.data.source in ("npz", "digits"):
            raise ConfigError(f"{key} is null: only a prepared dataset (data.source=shards) can fill it in")
    for key in ("ipc", "factor", "iterations", "ipm", "batch_real", "log_every", "data.channels", "data.num_classes",
                "eval.epochs", "eval.batch_size", "eval.test_every"):
        if OmegaConf.select(cfg, key) is not None and OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be >= 1")
    if cfg.workers is not None and cfg.workers < 1:
        raise ConfigError(f"workers={cfg.workers} must be >= 1 (or null: one per GPU)")
    if not 0 < cfg.ray.eval_gpus <= 1:
        raise ConfigError(f"ray.eval_gpus={cfg.ray.eval_gpus} must be in (0, 1]: the share of a GPU each evaluation "
                          "task holds (device=cpu evaluates without GPUs)")
    if cfg.checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every={cfg.checkpoint_every} must be >= 0")
    if cfg.eval.runs < 0:
        raise ConfigError(f"eval.runs={cfg.eval.runs} must be >= 0")
    if not 0 <= cfg.eval.cutmix_prob <= 1:
        raise ConfigError(f"eval.cutmix_prob={cfg.eval.cutmix_prob} must be in [0, 1]")
    if cfg.eval.recipe == "imagenet" and cfg.data.channels not in (None, 3):
        raise ConfigError(f"eval.recipe=imagenet needs RGB images, data.channels={cfg.data.channels}; use eval.recipe=dsa")
    models = list_models()
    for key, arch in [("encoder.arch", cfg.encoder.arch)] + [("eval.archs", a) for a in cfg.eval.archs]:
        if arch not in models:
            raise ConfigError(f"{key}: unknown architecture {arch!r}; choose from: {', '.join(models)}")
    for key in ("augment.geometric", "eval.augment.geometric"):
        bad = set(OmegaConf.select(cfg, key)) - set(GEOMETRIC_OPS)
        if bad:
            raise ConfigError(f"{key}: unknown ops {sorted(bad)}; choose from: {', '.join(GEOMETRIC_OPS)}")
    for key in ("data.mean", "data.std"):
        if None in (OmegaConf.select(cfg, key), cfg.data.channels):
            continue
        if len(OmegaConf.select(cfg, key)) != cfg.data.channels:
            raise ConfigError(f"{key} has {len(OmegaConf.select(cfg, key))} values, data.channels={cfg.data.channels}")


def augment_spec(aug_cfg: DictConfig) -> AugmentSpec:
    """An ``augment`` (or ``eval.augment``) config section as the AugmentSpec models/ takes."""
    return AugmentSpec(flip=aug_cfg.flip, color=aug_cfg.color, geometric=tuple(aug_cfg.geometric),
                       op_per=aug_cfg.op_per, cutout=aug_cfg.cutout)
