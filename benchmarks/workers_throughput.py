"""Condensation throughput vs worker count, and the per-iteration overhead that Ray adds.

    python -m benchmarks.workers_throughput [--preset digits --iterations 60 --workers 1,2]

Runs the same condensation (evaluation off) in-process with one torch thread (`backend=local`,
the baseline: a Ray actor also gets one thread), in-process with all threads, and as Ray
actors with each worker count; all sync every iteration (log_every=1), the worst case for
the driver. Reports steady-state iterations/s (after the workers have started and loaded
their classes). Appends to benchmarks/results/workers_throughput.jsonl and prints the JSON
object as the last stdout line.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.record import RESULTS as RESULTS_DIR
from benchmarks.record import machine, report
from m3d_condense.pipeline.cli import run
from m3d_condense.pipeline.config.loader import load_config

RESULTS = RESULTS_DIR / "workers_throughput.jsonl"


def it_per_s(preset: str, overrides: list[str], out: str, name: str) -> float:
    cfg = load_config(preset, [f"out_dir={out}", f"run_name={name}", "eval.runs=0", "log_every=1", *overrides])
    return run(cfg, progress=False)["condense_it_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.root=...")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    base = [f"iterations={args.iterations}", f"device={args.device}", "checkpoint_every=0", *args.overrides]
    out = tempfile.mkdtemp(prefix="m3d-workers-")
    threads = torch.get_num_threads()
    result = {"benchmark": "workers_throughput", "preset": args.preset, "iterations": args.iterations,
              "overrides": args.overrides, "machine": machine(),
              "torch": torch.__version__}
    torch.set_num_threads(1)
    result["local_1thread_it_per_s"] = it_per_s(args.preset, [*base, "workers=1", "backend=local"], out, "l1")
    torch.set_num_threads(threads)
    result[f"local_{threads}threads_it_per_s"] = it_per_s(args.preset, [*base, "workers=1", "backend=local"], out, "lN")
    for n in [int(w) for w in args.workers.split(",")]:
        result[f"ray_{n}workers_it_per_s"] = it_per_s(args.preset, [*base, f"workers={n}", "backend=ray"], out, f"r{n}")
    local1, ray1 = result["local_1thread_it_per_s"], result.get("ray_1workers_it_per_s")
    if ray1:
        result["ray_overhead_ms_per_it"] = round(1000 * (1 / ray1 - 1 / local1), 2)
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    report(args.out, result)


if __name__ == "__main__":
    main()
