"""The result grid: dataset x IPC x method x seed, every finished cell appended to a parquet
table; a rerun skips the cells the table already has.

    python benchmarks/reproduce.py --presets mnist,fashion_mnist --ipc 1,10,50 \\
        --methods random,herding,dm,m3d --seeds 0,1,2 [key=value ...] [--out DIR]

Overrides after the options apply to every cell (e.g. a reduced protocol: iterations=200
eval.epochs=100 data.root=...; use {preset} in a value for the preset's name, e.g.
data.root=../shared/data/{preset}). Runs go to DIR/runs, the table to DIR/results.parquet
(default DIR: benchmarks/results/grid). One row per cell, architecture and evaluation run:
dataset, ipc, method, arch, seed, eval_run, accuracy (last epoch), accuracy_best_epoch
(selected on the test set, as the reference reports), condense_seconds, eval_seconds,
iterations, epochs, protocol (the overrides), machine, commit.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.compare_methods import METHODS  # noqa: E402
from benchmarks.record import RESULTS, git_commit, machine  # noqa: E402
from pipeline.cli import run  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import storage  # noqa: E402
from pipeline.report import grid_report  # noqa: E402

KEY = ("dataset", "ipc", "method", "seed", "protocol")


def read_rows(path: str) -> list[dict]:
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pylist()
    except FileNotFoundError:
        return []


def write_rows(path: str, rows: list[dict]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    storage.write_bytes_atomic(path, buf.getvalue())


def cell_rows(summary: dict, cell: dict, cfg) -> list[dict]:
    """One row per architecture and evaluation run of a finished cell."""
    rows = []
    for e in summary.get("evals", []):
        for k, (acc, best, secs) in enumerate(zip(e["runs"], e["best_epoch_runs"], e["seconds"], strict=True)):
            rows.append({**cell, "arch": e["arch"], "eval_run": k, "accuracy": acc, "accuracy_best_epoch": best,
                         "condense_seconds": summary["condense_seconds"], "eval_seconds": secs,
                         "iterations": summary["iterations"], "epochs": e["epochs"], "factor": summary["factor"],
                         "machine": machine(), "commit": git_commit()})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", required=True)
    ap.add_argument("--ipc", default="1,10,50")
    ap.add_argument("--methods", default="random,herding,dm,m3d")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(RESULTS / "grid"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    table = storage.join(args.out, "results.parquet")
    rows = read_rows(table)
    done = {tuple(r[k] for k in KEY) for r in rows}
    protocol = " ".join(args.overrides)
    for preset in args.presets.split(","):
        for ipc in [int(v) for v in args.ipc.split(",")]:
            for method in args.methods.split(","):
                for seed in [int(v) for v in args.seeds.split(",")]:
                    cell = {"dataset": preset, "ipc": ipc, "method": method, "seed": seed, "protocol": protocol}
                    if tuple(cell[k] for k in KEY) in done:
                        print(f"[grid] skip {preset} ipc {ipc} {method} seed {seed}: in {table}", file=sys.stderr)
                        continue
                    overrides = [o.replace("{preset}", preset) for o in args.overrides]
                    cfg = load_config(preset, [*METHODS[method], f"ipc={ipc}", f"seed={seed}",
                                               f"out_dir={storage.join(args.out, 'runs')}",
                                               f"run_name={preset}_{method}_ipc{ipc}_s{seed}", *overrides])
                    print(f"[grid] {preset} ipc {ipc} {method} seed {seed}", file=sys.stderr, flush=True)
                    rows += cell_rows(run(cfg, progress=False), cell, cfg)
                    write_rows(table, rows)  # after every cell: an interrupted grid loses at most one cell
    storage.write_bytes_atomic(storage.join(args.out, "report.html"), grid_report(rows).encode())
    print(f"[grid] {len(rows)} rows in {table}; report: {storage.join(args.out, 'report.html')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
