"""Carry paper-protocol cells (``pipeline/reproduce.py``) across machines that do not keep their
disks, through the repository:

    python -m benchmarks.paper_state save [OUT]      # OUT (default ~/m3d-paper) -> benchmarks/results/paper
    python -m benchmarks.paper_state restore [OUT]   # and back, then rerun the cell's command

``save`` copies what each unfinished cell needs to continue into ``state/<cell>/``: run.json,
config.yaml, summary.json once evaluated, its last complete checkpoint, the evaluation records, the stored set once
condensed, and the snapshots not yet scored (a scored snapshot keeps only its record), and
copies every finished row into ``rows/``. Reports and plots stay behind: the run writes them
again. ``PAPER_STATE_DIR`` moves the kept folder (tests use it).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEPT = Path(os.environ.get("PAPER_STATE_DIR", REPO / "benchmarks" / "results" / "paper"))
NEEDED = ("run.json", "config.yaml", "summary.json", "checkpoints", "evals", "synthetic")


def save_cell(run: Path, dest: Path) -> None:
    for name in NEEDED:
        if (run / name).is_dir():
            shutil.copytree(run / name, dest / name, dirs_exist_ok=True)
        elif (run / name).exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / name, dest / name)
    for snap in sorted((run / "snapshots").glob("it*")):
        scored = any(snap.glob("evals/*/*-run0.json"))
        for part in ("evals",) if scored else ("evals", "synthetic"):
            if (snap / part).is_dir():
                shutil.copytree(snap / part, dest / "snapshots" / snap.name / part, dirs_exist_ok=True)


def save(out: Path) -> None:
    (KEPT / "rows").mkdir(parents=True, exist_ok=True)
    for row in (out / "rows").glob("*.json"):
        shutil.copy2(row, KEPT / "rows" / row.name)
    shutil.rmtree(KEPT / "state", ignore_errors=True)
    for run in sorted(p for p in (out / "runs").glob("*") if p.is_dir()):
        if (out / "rows" / f"{run.name}.json").exists() or not (run / "run.json").exists():
            continue  # finished (its row is kept), or nothing complete to continue from yet
        save_cell(run, KEPT / "state" / run.name)
        size = sum(f.stat().st_size for f in (KEPT / "state" / run.name).rglob("*") if f.is_file())
        print(f"saved {run.name}: {size / 2**20:.1f} MiB")


def restore(out: Path) -> None:
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for row in (KEPT / "rows").glob("*.json"):
        if not (out / "rows" / row.name).exists():
            shutil.copy2(row, out / "rows" / row.name)
    for state in sorted(p for p in (KEPT / "state").glob("*") if p.is_dir()):
        shutil.copytree(state, out / "runs" / state.name, dirs_exist_ok=True)
        print(f"restored {state.name} into {out / 'runs' / state.name}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("save", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(os.path.expanduser(argv[1] if len(argv) > 1 else "~/m3d-paper"))
    (save if argv[0] == "save" else restore)(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
