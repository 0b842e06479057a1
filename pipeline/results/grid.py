"""The result grid: dataset x IPC x method x seed, every finished cell appended to a parquet
table; a rerun skips the cells the table already has.

    python pipeline/grid.py --presets mnist,fashion_mnist --ipc 1,10,50 \\
        --methods random,herding,dm,m3d --seeds 0,1,2 [key=value ...] [--out DIR]

Methods (``NAMED_METHODS``, ``pipeline/config/schema.py``): random, herding, init (M3D's starting
set: the real tiles it condenses from), dm (linear kernel), m3d, whole (the whole training set,
the upper bound; its IPC is ignored and the report shows it as "whole set"). A variant with its
own overrides is NAME:key=value[:key=value...], e.g. dm:lr=0.01 (a column of its own in the
table); its keys win over the overrides every cell gets.

Overrides after the options apply to every cell (e.g. a reduced protocol: iterations=200
eval.epochs=100 data.root=...; use {preset} in a value for the preset's name, e.g.
data.root=data/{preset}). Runs go to DIR/runs, the table to DIR/results.parquet
(default DIR: benchmarks/results/grid). Each finished cell is also kept as DIR/cells/<cell>.parquet
and the table is rebuilt from those, so several grid commands (e.g. one per dataset, each on
its own cores or machine) can share one DIR. One row per cell, architecture and evaluation run:
dataset, ipc, method, arch, seed, eval_run, accuracy (last epoch), accuracy_best_epoch
(selected on the test set, as the reference reports), condense_seconds, eval_seconds,
iterations, epochs, protocol (the overrides), machine, commit, and the moment gaps (moment_*).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from m3d_condense.pipeline.cli import run
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import NAMED_METHODS
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.results.provenance import git_commit, machine
from m3d_condense.pipeline.results.report import grid_report

KEY = ("dataset", "ipc", "method", "seed", "protocol")


def read_table(path: str) -> list[dict]:
    return pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pylist()


def write_table(path: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))  # cells differ in columns (moments of an initial set)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), buf)
    storage.write_bytes_atomic(path, buf.getvalue())


def read_cells(out: str) -> list[dict]:
    """Every finished cell's rows under ``out/cells`` (written by any grid process sharing ``out``)."""
    return [row for url in storage.list_files(storage.join(out, "cells"), ".parquet") for row in read_table(url)]


def rebuild_table(out: str) -> list[dict]:
    """Rewrite ``out/results.parquet`` from every finished cell and return its rows. Another grid
    process sharing ``out`` may finish a cell while this one writes the table from an older
    listing: write again until the listing is unchanged, so whichever process writes last has
    every cell (otherwise the last writer could drop the other's newest cell)."""
    cells = storage.join(out, "cells")
    while True:
        files = storage.list_files(cells, ".parquet")
        rows = [row for url in files for row in read_table(url)]
        if rows:
            write_table(storage.join(out, "results.parquet"), rows)
        if storage.list_files(cells, ".parquet") == files:
            return rows


def cell_rows(summary: dict, cell: dict) -> list[dict]:
    """One row per architecture and evaluation run of a finished cell, with the moment gaps
    (``moment_<set>_<order>``: set = synthetic, or initial for M3D/DM) when the run computed them."""
    moments = {f"moment_{name}_{order}": gap for name, gaps in summary.get("moments", {}).items()
               for order, gap in gaps.items()}
    rows = []
    for e in summary.get("evals", []):
        for k, (acc, best, secs) in enumerate(zip(e["runs"], e["best_epoch_runs"], e["seconds"], strict=True)):
            rows.append({**cell, "arch": e["arch"], "eval_run": k, "accuracy": acc, "accuracy_best_epoch": best,
                         "condense_seconds": summary["condense_seconds"], "eval_seconds": secs,
                         "iterations": summary["iterations"], "epochs": e["epochs"], "factor": summary["factor"], **moments,
                         "machine": machine(), "commit": git_commit()})
    return rows


def cell_config(method: str, variant: list[str], ipc: int, seed: int, runs: str, name: str,
                overrides: list[str]) -> list[str]:
    """The overrides of one cell, in the order they apply: the named method's, the ones every cell
    gets, the cell's own (ipc, seed, where it runs), then the variant's (``dm:lr=0.01``), which are
    the most specific and so win (``m3d:iterations=100`` beside a common ``iterations=2000``)."""
    return [*NAMED_METHODS[method], *overrides, f"ipc={ipc}", f"seed={seed}", f"out_dir={runs}", f"run_name={name}",
            *variant]


def run_grid(presets: list[str], ipcs: list[int], methods: list[str], seeds: list[int], out: str,
             overrides: list[str]) -> list[dict]:
    """Run every cell of presets x ipcs x methods x seeds not yet in ``out``'s table (each
    finished cell is kept as ``out/cells/<cell>.parquet`` and the table rebuilt from them); write
    ``out/results.parquet`` and ``out/report.html``; returns the table's rows."""
    table = storage.join(out, "results.parquet")
    protocol = " ".join(overrides)
    for preset, ipc, method, seed in itertools.product(presets, ipcs, methods, seeds):
        cell = {"dataset": preset, "ipc": ipc, "method": method, "seed": seed, "protocol": protocol}
        done = {tuple(r[k] for k in KEY) for r in read_cells(out)}  # other processes' cells too
        if tuple(cell[k] for k in KEY) in done:
            print(f"[grid] skip {preset} ipc {ipc} {method} seed {seed}: in {table}", file=sys.stderr)
            continue
        cell_overrides = [o.replace("{preset}", preset) for o in overrides]
        base, *variant = method.split(":")
        name = f"{preset}_{method.replace(':', '_').replace('=', '')}_ipc{ipc}_s{seed}"
        cfg = load_config(preset, cell_config(base, variant, ipc, seed, storage.join(out, "runs"), name, cell_overrides))
        print(f"[grid] {preset} ipc {ipc} {method} seed {seed}", file=sys.stderr, flush=True)
        rows = cell_rows(run(cfg, progress=False), cell)
        cell_file = f"{name}_{hashlib.sha1(protocol.encode()).hexdigest()[:8]}.parquet"
        write_table(storage.join(out, "cells", cell_file), rows)
        rebuild_table(out)  # after every cell: an interruption loses one cell at most
    rows = rebuild_table(out)
    storage.write_bytes_atomic(storage.join(out, "report.html"), grid_report(rows).encode())
    return rows
