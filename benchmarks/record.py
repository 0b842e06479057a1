"""Where benchmark results go: one JSON object per line, stamped with the machine and commit."""
from __future__ import annotations

import json
from pathlib import Path

from m3d_condense.pipeline.results.provenance import git_commit as _commit_of
from m3d_condense.pipeline.results.provenance import machine  # noqa: F401  (re-exported for the benchmarks)

RESULTS = Path(__file__).parent / "results"


def git_commit() -> str:
    """The commit of this checkout (the benchmarks' own), wherever the command runs from."""
    return _commit_of(Path(__file__).parent)


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def report(path: Path, result: dict) -> None:
    """Stamp ``result`` with the commit, append it to ``path``, print it as a table and, as the
    last stdout line, as JSON."""
    result["commit"] = git_commit()
    append(path, result)
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:>{width}}: {v}")
    print(json.dumps(result))
