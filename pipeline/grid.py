#!/usr/bin/env python
"""``python pipeline/grid.py --presets P[,P] [--ipc ...] [--methods ...] [--seeds ...] [--out DIR]
[key=value ...]``: the result grid (``pipeline/results/grid.py``): dataset x IPC x method x seed,
every finished cell appended to a parquet table; a rerun skips the cells the table already has.

    python pipeline/grid.py --presets mnist,fashion_mnist --ipc 1,10,50 \\
        --methods random,herding,dm,m3d --seeds 0,1,2 [key=value ...] [--out DIR]

Methods: random, herding, init (M3D's starting set), dm (linear kernel), m3d, whole (the whole
training set, the upper bound). A variant with its own overrides is NAME:key=value[:key=value...],
e.g. dm:lr=0.01; its keys win over the overrides after the options, which apply to every cell
({preset} in a value is the preset's name). Runs
go to DIR/runs, the table to DIR/results.parquet and DIR/report.html (default DIR:
benchmarks/results/grid); several grid commands may share one DIR.
"""
import argparse
import sys

# Run as a script, Python puts pipeline/ first on sys.path. That is harmless: everything is
# imported as m3d_condense.*, and no module in pipeline/ has the name of a standard or installed
# top-level module (tests/test_packaging.py checks both).
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import command
from m3d_condense.pipeline.results.report import grid_markdown

DEFAULT_OUT = "benchmarks/results/grid"  # the repository's results folder, run from its root


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python pipeline/grid.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--presets", required=True)
    ap.add_argument("--ipc", default="1,10,50")
    ap.add_argument("--methods", default="random,herding,dm,m3d")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("overrides", nargs="*")
    return ap


@command
def main(argv: list[str] | None = None) -> int:
    from m3d_condense.pipeline.results.grid import run_grid  # after --help: it imports torch and pyarrow

    a = parser().parse_args(argv)
    rows = run_grid(a.presets.split(","), [int(v) for v in a.ipc.split(",")], a.methods.split(","),
                    [int(v) for v in a.seeds.split(",")], a.out, a.overrides)
    print(grid_markdown(rows))
    print(f"[grid] {len(rows)} rows in {storage.join(a.out, 'results.parquet')}; report: "
          f"{storage.join(a.out, 'report.html')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
