#!/usr/bin/env python
"""``python pipeline/reproduce.py``: the paper's protocol (Table 2), one cell per command.

  python pipeline/reproduce.py cell cifar10 10 data.root=data/cifar10        # run or continue a cell
  python pipeline/reproduce.py cell cifar10 10 --method dm data.root=...      # DM's loss, same engine
  python pipeline/reproduce.py select cifar10 10 --follow data.root=...      # score snapshots beside it
  python pipeline/reproduce.py table                                          # the table, as Markdown
  python pipeline/reproduce.py publish cifar10 10 data.root=... --dest sets   # store the set as uint8

A cell condenses for the preset's 10,000 iterations, evaluates the final set ``--runs`` times
for 1,000 epochs and, for the released code's selection, evaluates a snapshot of the set every
``--select-every`` iterations once (docs/protocol.md, "The paper protocol"). Every stage is
recorded as it ends under ``--out`` (default ~/m3d-paper): the same command continues a cell
that was stopped, and its row (``OUT/rows/<cell>.json``) is written only at the end. Overrides
after the cell apply to its run (e.g. precision=bf16 eval.precision=bf16 compile=true).
"""
import argparse
import os
import sys

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import command
from m3d_condense.pipeline.logs import setup_logging
from m3d_condense.pipeline.results import paper

DEFAULT_OUT = os.path.join("~", "m3d-paper")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python pipeline/reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("cell", "run or continue one cell"), ("publish", "store a finished cell's set as uint8"),
                       ("select", "score the cell's stored snapshots (stage 3), e.g. beside a running cell")):
        c = sub.add_parser(name, help=what)
        c.add_argument("preset")
        c.add_argument("ipc", type=int)
        c.add_argument("--method", default="m3d", choices=("m3d", "dm"), help="m3d, or dm: the linear kernel (lr 0.1)")
        c.add_argument("--runs", type=int, default=10, help="evaluation runs of the final set (default 10)")
        c.add_argument("--select-every", type=int, default=paper.RELEASED_SELECT_EVERY,
                       help="iterations between evaluated snapshots (default 500, as released; 0: no selection)")
        c.add_argument("--out", default=DEFAULT_OUT, help="where the cell's runs and rows live (default ~/m3d-paper)")
        c.add_argument("--no-progress", action="store_true", help="no progress bars")
        c.add_argument("overrides", nargs="*", metavar="key=value")
        if name == "select":
            c.add_argument("--follow", action="store_true", help="keep scoring new snapshots until the cell has condensed")
        if name == "publish":
            c.add_argument("--dest", default="sets", help="the published set goes to DEST/<cell> (default sets)")
            c.add_argument("--eval-runs", type=int, default=5, help="evaluation runs of the stored uint8 set")
    t = sub.add_parser("table", help="print the recorded rows as a Markdown table")
    t.add_argument("dirs", nargs="*", default=[DEFAULT_OUT], help="folders holding rows/ (default ~/m3d-paper)")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    p = parser()
    a, extra = p.parse_known_args(argv)  # overrides may come before, between or after the options
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown or (extra and a.command == "table"):
        p.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    a.overrides = [*getattr(a, "overrides", []), *extra]
    setup_logging()
    if a.command == "table":
        rows = paper.read_rows(*(os.path.expanduser(d) for d in a.dirs))
        print(paper.table_markdown(rows) if rows else f"no rows recorded under {', '.join(a.dirs)}")
        return 0
    cell = paper.Cell(a.preset, a.ipc, a.method, a.runs, a.select_every, list(a.overrides))
    out = os.path.expanduser(a.out)
    if a.command == "cell":
        paper.run_cell(cell, out, progress=not a.no_progress)
    elif a.command == "select":
        cfg = cell.config(out)
        paper.score_snapshots(cfg, storage.join(cfg.out_dir, cfg.run_name), cell.select_every, not a.no_progress, a.follow)
    else:
        paper.publish_cell(cell, out, a.dest, a.eval_runs, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
