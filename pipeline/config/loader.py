"""``load_config``: Hydra composes a preset (``configs/<preset>.yaml``) with ``key=value``
overrides over the schema (``config/schema.py``, registered here as ``base`` in Hydra's
ConfigStore) into a checked ``RunConfig``; also a run's config.yaml read back and written out.
The only module that imports Hydra or OmegaConf: the schema, the method and the evaluation are
plain dataclasses and functions without them.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Callable

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from m3d_condense.pipeline.config.schema import ConfigError, RunConfig, dotted

ConfigStore.instance().store(name="base", node=RunConfig)

# Keys a preset may leave None for the manifest of a prepared dataset to fill (preset custom).
FROM_MANIFEST = ("num_classes", "channels", "image_size", "mean", "std")


def list_presets() -> list[str]:
    files = resources.files("m3d_condense.configs").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml"))


def _dotted_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return keys


def compose_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The preset with ``overrides`` (Hydra syntax, ``key=value``), typed and resolved, before the
    dataset is looked at. ConfigError names an unknown preset, key or a value of the wrong type."""
    presets = list_presets()
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    with initialize_config_module("m3d_condense.configs", version_base=None):
        try:
            cfg = compose(config_name=preset, overrides=list(overrides))
        except ConfigCompositionException as e:
            valid = _dotted_keys(compose(config_name=preset))
            cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
            reason = _omegaconf_reason(cause) if cause else str(e).splitlines()[0]  # its 2nd line suggests "+key"
            raise ConfigError(f"{reason} (preset {preset!r})\nvalid keys: {', '.join(valid)}") from None
    OmegaConf.resolve(cfg)
    return cfg


def _omegaconf_reason(e: OmegaConfBaseException) -> str:
    """OmegaConf's message without its object dump: 'Invalid value 'abc' ... (key lr)'."""
    first = str(e).splitlines()[0]
    return f"{first} (key {e.full_key})" if getattr(e, "full_key", None) else first

def hydra_overrides(overrides: dict[str, Any]) -> list[str]:
    """``{"lr": 10, "eval": {"runs": 2}}`` -> ``["lr=10", "eval.runs=2"]``: keyword overrides in
    the command line's ``key=value`` form."""
    return [f"{key}={_hydra_value(value)}" for key, value in dotted(overrides).items()]


def _hydra_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(i) for i in v) + "]"
    return str(v)


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The complete, checked config of ``preset`` with ``overrides``: the dataset's source is
    detected and a prepared dataset's manifest fills (or is checked against) the data keys. A
    local ``out_dir`` is made absolute: Ray workers write their checkpoint and synthetic slices
    there, and their working directory is not the driver's."""
    cfg = compose_config(preset, overrides)
    from m3d_condense.pipeline.data.dataset import resolve_dataset  # the data layer reads configs, too
    from m3d_condense.pipeline.data.storage import absolute

    resolve_dataset(cfg.data)
    cfg.out_dir = absolute(cfg.out_dir)
    return to_run_config(cfg)


def to_run_config(cfg: DictConfig | dict) -> RunConfig:
    """A RunConfig from a composed config (or a config.yaml read back); runs every check."""
    node = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg) if isinstance(cfg, dict) else cfg
    try:
        run = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_reason(e)) from None
    missing = [f"data.{k}" for k in FROM_MANIFEST if getattr(run.data, k) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: only a prepared dataset (data.root holding manifest.parquet, "
                          "see pipeline/prepare.py) fills them in")
    return run


def to_dict(cfg: RunConfig) -> dict:
    """The config as plain JSON/YAML values (choices as their strings)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


def read_config(text: str, where: str = "config.yaml") -> RunConfig:
    """A run's config.yaml (as ``outputs.write_config`` wrote it) as a RunConfig."""
    try:
        return to_run_config(OmegaConf.to_container(OmegaConf.create(text)))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def training_config(preset: str, syn: Any, overrides: list[str],
                    fallback_stats: Callable[[], dict] | None = None) -> RunConfig:
    """The config of ``preset`` for training on the set ``syn``: its image shape and classes, then
    ``overrides``; normalised with the preset's mean and std, else the set's (its real data's),
    else ``fallback_stats()``, else a ConfigError saying what to give."""
    channels, height, width = syn.images.shape[1:]
    data = {"num_classes": len(syn.class_names), "channels": int(channels), "image_size": [int(height), int(width)]}
    args = hydra_overrides({"data": data}) + list(overrides)
    if compose_config(preset, args).data.mean is None:  # the preset has no statistics (custom)
        if syn.mean is not None and syn.std is not None:
            args += hydra_overrides({"data": {"mean": syn.mean, "std": syn.std}})
        elif fallback_stats is not None:
            args += hydra_overrides({"data": fallback_stats()})
        else:
            raise ConfigError(f"preset {preset!r} has no normalisation and the set carries none: give "
                              "data={'mean': [...], 'std': [...]} or the preset of its dataset")
    return load_config(preset, args)
