"""Where a result was made: the machine and the commit, stamped on every recorded row and summary."""
from __future__ import annotations

import os
import platform
import subprocess

import torch


def machine() -> str:
    """The CPU model, core count, GPU and torch threads of this process, as one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} cpus ({cpu}){gpu}, {torch.get_num_threads()} torch threads"


def git_commit(checkout: str | os.PathLike | None = None) -> str:
    """The commit of the checkout at ``checkout`` (default: the working directory), or ``unknown``."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=checkout)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
