"""``python pipeline/run.py PRESET [key=value ...]``: condense, evaluate, write the run directory."""
from __future__ import annotations

import sys

from m3d_condense.pipeline.checkpoint import ResumeError
from m3d_condense.pipeline.config import ConfigError, list_presets, load_config, validate
from m3d_condense.pipeline.data import ManifestError, ShardError, StorageError
from m3d_condense.pipeline.data.loading import resolve_dataset
from m3d_condense.pipeline.driver import run_pipeline
from m3d_condense.pipeline.memory import MemoryBudgetError
from m3d_condense.pipeline.ray_backend import ResourceError, WorkerError
from omegaconf import DictConfig

USAGE = """usage: python pipeline/run.py PRESET [key=value ...]

PRESET is one of: {presets}
Everything after it is a Hydra override, e.g. ipc=10 kernel=linear iterations=500 eval.runs=0.
Outputs go to OUT_DIR/RUN_NAME (defaults: runs/<preset>_<method>_<kernel>_ipc<ipc>_s<seed>)."""


def run(cfg: DictConfig, progress: bool = True) -> dict:
    """Execute one configured run (or continue it); returns the summary written to summary.json."""
    resolve_dataset(cfg)  # a prepared dataset's manifest fills or checks the data.* keys
    validate(cfg)
    return run_pipeline(cfg, progress=progress)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = USAGE.format(presets=", ".join(list_presets()))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
        run(cfg)
    except (ConfigError, ManifestError, ShardError, StorageError, ResumeError, ResourceError, WorkerError, MemoryBudgetError,
            FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
