"""Accuracy against condensation steps, DM vs M3D (the paper's Fig. 3), one trajectory per method.

    python -m benchmarks.steps_curve PRESET --steps 0,50,100,200,400 [--methods dm,m3d] [key=value ...]

Each method condenses once from the shared initial set; at every step count in ``--steps`` the
current images are decoded and evaluated (``eval.*`` keys, in-process). Besides accuracy the
row records how far the pixels have moved from the initial set (mean |x - x0|, pixel units in
[0, 1]) and the mean matching loss, so a method that is merely slow can be told apart from one
that goes the wrong way. One JSON line per (method, steps) goes to
benchmarks/results/steps_<preset>.jsonl (or --out) and a table is printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.record import RESULTS, append, git_commit, machine
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import NAMED_METHODS
from m3d_condense.pipeline.data.dataset import open_class_cache
from m3d_condense.pipeline.logs import setup_logging
from m3d_condense.pipeline.method.engine import Condenser
from m3d_condense.pipeline.method.spec import CondenseSpec
from m3d_condense.pipeline.orchestration.driver import run_evaluations
from m3d_condense.pipeline.results.synthetic import SyntheticSet

PROGRESS_EVERY = 50  # iterations between progress lines


def trajectory(preset: str, method: str, steps: list[int], overrides: list[str], out: Path) -> list[dict]:
    cfg = load_config(preset, [*NAMED_METHODS[method], *overrides])
    classes = list(range(cfg.data.num_classes))
    cache = open_class_cache(cfg.data, classes, torch.device("cpu"), progress=False)
    condenser = Condenser(CondenseSpec.of(cfg), cache, classes)
    start_images, labels = condenser.images.clone(), torch.arange(len(classes)).repeat_interleave(cfg.ipc)
    rows, losses, condense_s = [], [], 0.0
    for target in steps:
        t0 = time.perf_counter()
        while condenser.iteration < target:
            losses.append(float(condenser.step().mean()))
            if condenser.iteration % PROGRESS_EVERY == 0:  # hours of work: say where it is
                print(f"[steps] {method} iteration {condenser.iteration}/{steps[-1]}, loss {losses[-1]:.4g}, "
                      f"{(condense_s + time.perf_counter() - t0) / condenser.iteration:.2f} s/iteration",
                      file=sys.stderr, flush=True)
        condense_s += time.perf_counter() - t0
        print(f"[steps] {method} {target}: evaluating ({cfg.eval.runs} x {cfg.eval.epochs} epochs)",
              file=sys.stderr, flush=True)
        current = SyntheticSet(condenser.images.detach().cpu(), labels, cfg.factor, cache.class_names)
        evals, _ = run_evaluations(cfg, current, "local", torch.device("cpu"), progress=False)
        accs = evals[0]["runs"]
        row = {"preset": preset, "method": method, "steps": target, "lr": cfg.lr, "ipc": cfg.ipc,
               "accuracy_mean": statistics.fmean(accs), "accuracy_runs": accs,
               "pixel_shift": float((condenser.images - start_images).abs().mean()),
               "loss": statistics.fmean(losses[-10:]) if losses else None, "condense_seconds": condense_s,
               "eval_epochs": evals[0]["epochs"],
               "overrides": overrides, "machine": machine(), "commit": git_commit()}
        print(f"[steps] {method} {target}: {100 * row['accuracy_mean']:.2f}% shift {row['pixel_shift']:.4f}",
              file=sys.stderr, flush=True)
        append(out, row)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", default="0,50,100,200,400")
    ap.add_argument("--methods", default="dm,m3d")
    ap.add_argument("--out", type=Path)
    args = ap.parse_intermixed_args()
    setup_logging()  # the evaluations' lines on stderr, as in a run
    out = args.out or RESULTS / f"steps_{args.preset}.jsonl"
    steps = sorted(int(v) for v in args.steps.split(","))
    rows = [r for m in args.methods.split(",") for r in trajectory(args.preset, m, steps, args.overrides, out)]
    print("\n| method | steps | accuracy (last epoch, %) | mean pixel shift | loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        loss = float("nan") if r["loss"] is None else r["loss"]
        print(f"| {r['method']} | {r['steps']} | {100 * r['accuracy_mean']:.2f} | {r['pixel_shift']:.4f} | {loss:.4g} |")


if __name__ == "__main__":
    main()
