"""``python pipeline/run.py PRESET [key=value ...]`` (or ``m3d-condense PRESET ...``): condense,
evaluate, write the run directory."""
from __future__ import annotations

import sys

from m3d_condense.pipeline.config.loader import list_presets, load_config
from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.errors import command
from m3d_condense.pipeline.logs import setup_logging
from m3d_condense.pipeline.orchestration.driver import run_pipeline

USAGE = """usage: python pipeline/run.py PRESET [key=value ...]   (or: m3d-condense PRESET [key=value ...])

PRESET is one of: {presets}
Everything after it is a Hydra override, e.g. ipc=10 kernel=linear iterations=500 eval.runs=0.
Every key, its type and default: pipeline/config/schema.py (RunConfig).
Outputs go to OUT_DIR/RUN_NAME (defaults: runs/<preset>_<method>_<kernel>_ipc<ipc>_s<seed>)."""


def run(cfg: RunConfig, progress: bool = True) -> dict:
    """Execute one configured run (or continue it); returns the summary written to summary.json."""
    setup_logging()
    return run_pipeline(cfg, progress=progress)


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = USAGE.format(presets=", ".join(list_presets()))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    run(load_config(argv[0], argv[1:]))
    return 0
