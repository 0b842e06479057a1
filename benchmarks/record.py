"""Where benchmark results go: one JSON object per line, stamped with the machine and commit."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus"


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
