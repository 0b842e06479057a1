"""Iterations per second of our engine vs the released loop's structure, on identical work.

    python -m benchmarks.speed_vs_reference [--classes 10 --size 32 --channels 3 --ipc 10 --factor 2
                                           --batch-real 128 --iterations 4 --device auto]

Both run the same settings, data (random uint8 images of the given shape: timing does not
depend on content), encoders and random draws, alternating in one process so machine noise
hits both. Prints a table and, as the last stdout line, one JSON object with at least
ours_it_per_s, reference_it_per_s, ratio, device, shape.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a file (python benchmarks/speed_vs_reference.py): import from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.reference_loop import ReferenceLoop  # noqa: E402
from pipeline.data import ClassPool, DataSpec, LabeledImages  # noqa: E402
from pipeline.engine import COMPILE_AUTO_ITERATIONS, Condenser, EngineSettings, use_compile  # noqa: E402


def random_dataset(classes: int, per_class: int, channels: int, size: int) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, channels, size, size), generator=g, dtype=torch.uint8)
    return LabeledImages(images, torch.arange(classes).repeat_interleave(per_class), [str(c) for c in range(classes)])


def time_steps(loop, iterations: int, device: torch.device) -> float:
    loop.step()  # warm-up: allocator, first encoder
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        loop.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iterations / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--batch-real", type=int, default=128)
    ap.add_argument("--encoder", default="convnet3")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="also time ours with torch.compile, as long runs use it (auto: if this machine can compile)")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    data = random_dataset(args.classes, max(args.batch_real, args.ipc * args.factor**2) + 8, args.channels, args.size)
    spec = DataSpec(args.classes, args.channels, (args.size, args.size), (0.5,) * args.channels, (0.25,) * args.channels)
    s = EngineSettings(data=spec, ipc=args.ipc, factor=args.factor, batch_real=args.batch_real, encoder=args.encoder)
    classes = list(range(args.classes))
    pool = ClassPool.from_labeled(data, classes, device)
    ours = time_steps(Condenser(s, pool, classes, device), args.iterations, device)
    ref = time_steps(ReferenceLoop(s, pool, classes, device), args.iterations, device)
    compiled = None
    if args.compile == "on" or (args.compile == "auto" and use_compile("auto", COMPILE_AUTO_ITERATIONS)):
        start = time.perf_counter()
        condenser = Condenser(dataclasses.replace(s, compile=True), pool, classes, device)
        condenser.step()
        condenser.step()  # compiles the no-grad real forward and the synthetic forward + backward
        compile_s = time.perf_counter() - start
        compiled = time_steps(condenser, args.iterations, device)
    shape = f"{args.classes} classes x {args.channels}x{args.size}x{args.size}, ipc {args.ipc}, factor {args.factor}, " \
            f"real batch {args.batch_real}, {args.encoder}"
    print(f"{shape} on {device} (torch threads: {torch.get_num_threads()})")
    print(f"ours (eager)         {ours:8.3f} it/s   {ours / ref:5.2f}x")
    if compiled is not None:
        print(f"ours (torch.compile) {compiled:8.3f} it/s   {compiled / ref:5.2f}x   (compiling took {compile_s:.0f} s, "
              "excluded; long runs compile by default)")
    print(f"reference            {ref:8.3f} it/s")
    best = compiled if compiled is not None else ours
    print(json.dumps({"ours_it_per_s": best, "reference_it_per_s": ref, "ratio": best / ref, "device": str(device),
                      "shape": shape, "iterations": args.iterations, "threads": torch.get_num_threads(),
                      "compiled": compiled is not None, "ours_eager_it_per_s": ours, "ratio_eager": ours / ref,
                      "compile_seconds": compile_s if compiled is not None else None}))


if __name__ == "__main__":
    main()
