"""The Python API against the command line on one cell of the result grid: MNIST, IPC 1, M3D,
seed 0, the reduced CPU protocol (50 iterations, real batch 64, one 300-epoch evaluation).

    python -m benchmarks.api_vs_cli [--data ../shared/data/mnist] [--grid benchmarks/results/grid_cpu_released]

The API gets the training split as plain arrays (``condense((x, y), ...)``, which writes them as
shards under the run folder) and the test split as arrays too (``evaluate(syn, (x, y), ...)``);
the grid ran ``pipeline/run.py mnist data.root=...`` on the .npz files. The same data, seed and
protocol must give the same accuracy. Writes benchmarks/results/api_vs_cli.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.record import RESULTS, git_commit, machine
from m3d_condense import condense, evaluate


def arrays(folder: Path, split: str) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    with np.load(folder / f"{split}.npz") as d:
        return (d["x"], d["y"]), [str(n) for n in d["class_names"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mnist"))
    ap.add_argument("--grid", type=Path, default=RESULTS / "grid_cpu_released")
    args = ap.parse_args()
    (train, names), (test, _) = arrays(args.data, "train"), arrays(args.data, "test")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        syn = condense(train, ipc=1, preset="mnist", class_names=names, out_dir=out, progress=False,
                       backend="local", iterations=50, batch_real=64, seed=0)
        condensed = time.perf_counter()
        record = evaluate(syn, test, preset="mnist", runs=1, epochs=300, seed=0, progress=False,
                          eval={"test_every": 300})[0]
        evaluated = time.perf_counter()
    grid = pd.read_parquet(args.grid / "results.parquet")
    cell = grid[(grid.dataset == "mnist") & (grid.ipc == 1) & (grid.method == "m3d") & (grid.seed == 0)]
    row = {"api_accuracy": record["runs"][0], "cli_accuracy": float(cell.accuracy.iloc[0]),
           "cli_commit": str(cell.commit.iloc[0]), "api_condense_s": condensed - start,
           "api_eval_s": evaluated - condensed, "machine": machine(), "commit": git_commit()}
    (RESULTS / "api_vs_cli.json").write_text(json.dumps(row, indent=1) + "\n")
    print(f"API {100 * row['api_accuracy']:.2f}%  command line {100 * row['cli_accuracy']:.2f}%  "
          f"(condense {row['api_condense_s']:.0f} s, evaluate {row['api_eval_s']:.0f} s)")


if __name__ == "__main__":
    main()
