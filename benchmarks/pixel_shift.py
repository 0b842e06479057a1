"""How far condensation moved the pixels: mean |x - x0| between each condensed run's stored
images and the initial set it started from, per dataset, IPC, method and lr.

    python -m benchmarks.pixel_shift GRID_DIR        (e.g. benchmarks/results/grid_cpu)

Reads each GRID_DIR/runs/*/ run's config.yaml and stored set (the M3D/DM runs; the selection baselines
are skipped) and prints a Markdown table: mean ± std over seeds, pixels in [0, 1].
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from m3d_condense.pipeline.config.loader import read_config
from m3d_condense.pipeline.config.schema import named_method
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.dataset import open_class_cache
from m3d_condense.pipeline.method.engine import initial_images
from m3d_condense.pipeline.method.spec import CondenseSpec
from m3d_condense.pipeline.results.synthetic import SyntheticSet, is_stored


def run_shift(run_url: str, caches: dict) -> tuple[tuple, float] | None:
    config_url = storage.join(run_url, "config.yaml")
    if not storage.exists(config_url):  # not a run directory (a log file, an unrelated folder)
        return None
    cfg = read_config(storage.read_bytes(config_url).decode(), config_url)
    if cfg.method != "m3d" or not is_stored(run_url):
        return None
    classes = list(range(cfg.data.num_classes))
    key = (cfg.preset, cfg.data.root)
    if key not in caches:
        caches[key] = open_class_cache(cfg.data, classes, torch.device("cpu"), progress=False)
    stored = SyntheticSet.load(run_url).images
    start = initial_images(caches[key], classes, CondenseSpec.of(cfg))
    method = named_method(cfg.method, cfg.kernel)
    return (cfg.preset, cfg.ipc, method, cfg.lr, cfg.iterations), float((stored - start).abs().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid_dir")
    args = ap.parse_args()
    shifts: dict = {}
    caches: dict = {}
    runs = storage.join(args.grid_dir, "runs")
    fs, root = storage.filesystem(runs)
    for name in sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)):
        found = run_shift(storage.join(runs, name), caches)
        if found:
            shifts.setdefault(found[0], []).append(found[1])
    print("| dataset | IPC | method | lr | iterations | pixel shift | runs |")
    print("|---|---|---|---|---|---|---|")
    for (preset, ipc, method, lr, its), v in sorted(shifts.items()):
        spread = f" ± {statistics.pstdev(v):.4f}" if len(v) > 1 else ""
        print(f"| {preset} | {ipc} | {method} | {lr:g} | {its} | {statistics.fmean(v):.4f}{spread} | {len(v)} |")


if __name__ == "__main__":
    main()
