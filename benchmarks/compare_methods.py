"""Random real selection vs DM (linear kernel) vs M3D (Gaussian kernel) in one harness.

    python -m benchmarks.compare_methods PRESET [key=value ...] [--out FILE]

Every method (``--methods``, names of ``pipeline.config.NAMED_METHODS``) runs through
``pipeline.cli.run`` with the same overrides (same IPC, seed, evaluation protocol); one JSON
line per method is appended to FILE (default benchmarks/results/compare_<preset>.jsonl) and a
table is printed.

DM's released setting is lr 1 on images stored *normalised*; we store pixels in [0, 1], where
the same step is lr * std^2 ~ 0.1 for these datasets (std ~ 0.3). The linear kernel's gradient
is orders of magnitude larger than the Gaussian's, so M3D's lr 1 would saturate DM's pixels:
hence DM's lr 0.1.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from benchmarks.record import append, git_commit
from m3d_condense.pipeline.cli import run
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import NAMED_METHODS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--methods", default="random,dm,m3d")
    args = ap.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"compare_{args.preset}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        overrides = [*NAMED_METHODS[method], *args.overrides]  # the command line wins
        cfg = load_config(args.preset, overrides)
        cfg.run_name = f"compare_{args.preset}_{method}_lr{cfg.lr}"
        start = time.perf_counter()
        summary = run(cfg, progress=False)
        e = summary.get("eval", {})
        row = {"preset": args.preset, "method": method, "ipc": cfg.ipc, "factor": summary["factor"],
               "iterations": summary["iterations"], "lr": cfg.lr, "batch_real": cfg.batch_real, "eval_epochs": e.get("epochs"),
               "eval_runs": e.get("runs"), "accuracy_mean": e.get("accuracy_mean"), "accuracy_std": e.get("accuracy_std"),
               "best_epoch_accuracy_mean": e.get("best_epoch_accuracy_mean"),
               "condense_seconds": summary["condense_seconds"], "total_seconds": time.perf_counter() - start,
               "overrides": args.overrides, "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
               "commit": git_commit()}
        rows.append(row)
        append(out, row)
    print("\n| method | IPC | iterations | accuracy (last epoch, %) | condense s |")
    print("|---|---|---|---|---|")
    for r in rows:
        acc = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}" if r["accuracy_mean"] is not None else "-"
        print(f"| {r['method']} | {r['ipc']} | {r['iterations']} | {acc} | {r['condense_seconds']:.0f} |")


if __name__ == "__main__":
    main()
