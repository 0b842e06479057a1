"""Peak memory of one worker's condensation step vs classes, IPC and resolution, measured
beside the engine's estimate (pipeline/method/memory.py), which decides chunking and refusals.

    python -m benchmarks.memory [--device auto]

Each configuration runs in a fresh process: CPU peak = growth of the max RSS over the steps
(after the real images are cached); CUDA peak = torch.cuda.max_memory_allocated beyond the
cache. Appends to benchmarks/results/memory.jsonl; the JSON object is the last stdout line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.record import RESULTS, machine, report

CONFIGS = [(c, ipc, size) for size in (32, 64) for ipc in (1, 10) for c in (5, 10)]
CHILD = """
import resource, sys, json, torch
from benchmarks.speed_vs_reference import random_dataset
from m3d_condense.pipeline.config.schema import DataConfig, EncoderConfig, RunConfig
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.method.engine import Condenser
from m3d_condense.pipeline.method.memory import step_bytes
from m3d_condense.pipeline.method.spec import CondenseSpec
classes, ipc, size, device = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), torch.device(sys.argv[4])
data = DataConfig(num_classes=classes, channels=3, image_size=[size, size], mean=[0.5] * 3, std=[0.25] * 3)
s = CondenseSpec.of(RunConfig(ipc=ipc, factor=2, batch_real=128, compile=False, chunk_classes=classes,
                              encoder=EncoderConfig(arch="convnet3"), data=data))
cache = ClassCache.from_labeled(random_dataset(classes, max(128, ipc * 4) + 8, 3, size), range(classes), device)
c = Condenser(s, cache, range(classes), device)
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for _ in range(2):
    c.step()
if device.type == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({"measured": peak, "estimate": step_bytes(s, classes)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "memory.jsonl")
    ap.add_argument("--configs", default=None, help="e.g. 5:1:32,10:10:64 (classes:ipc:size)")
    args = ap.parse_args()
    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")] if args.configs else CONFIGS
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for classes, ipc, size in configs:
        out = subprocess.run([sys.executable, "-c", CHILD, str(classes), str(ipc), str(size), device],
                             capture_output=True, text=True, cwd=root, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"classes": classes, "ipc": ipc, "size": size, "measured_mib": round(r["measured"] / 2**20),
                     "estimate_mib": round(r["estimate"] / 2**20)})
        print(f"classes {classes:3d}  ipc {ipc:3d}  {size:3d}px   measured {rows[-1]['measured_mib']:6d} MiB   "
              f"estimate {rows[-1]['estimate_mib']:6d} MiB", file=sys.stderr)
    report(args.out, {"benchmark": "memory", "device": device, "machine": machine(), "encoder": "convnet3 width 128",
                      "factor": 2, "batch_real": 128, "rows": rows})


if __name__ == "__main__":
    main()
