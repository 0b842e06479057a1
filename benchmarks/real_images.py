"""Costs of real ImageNet photographs (issue 27): prepare's throughput on JPEGs, the
condensation step (s/iteration, peak memory) and the evaluation's epochs/s of a preset.

    python -m benchmarks.real_images prepare SOURCE_FOLDER --size 128 [--per-class 40]
    python -m benchmarks.real_images step PRESET data.root=DATA [key=value ...] [--steps 3]
    python -m benchmarks.real_images eval PRESET data.root=DATA [key=value ...] [--epochs 2]
    python -m benchmarks.real_images peak

``prepare`` links the first ``--per-class`` train and val JPEGs of every class of an
ImageFolder into a temporary folder and runs ``pipeline/prepare.py --size S --workers 1`` on
it in a child process: images/s per core = images / the child's CPU seconds (user + sys, less
those of ``prepare.py --help``: the interpreter's start and the imports), so
the number holds on a loaded machine, where wall time does not; the source sizes are read from
the JPEG headers. ``step`` runs, in a fresh process, one warm-up step and ``--steps`` timed
steps of the preset's engine on its real classes, or on the first ``--classes`` of them as a
worker owning that slice would (``chunk_classes=1`` unless given: what the first step's tuning
picks on a CPU; the step is then a loop over classes, so its time scales with them; eager,
``compile=false``, unless given), and
reports wall and CPU seconds per iteration and the
peak RSS growth over the steps beside the engine's estimate (pipeline/method/memory.py).
``eval`` trains the preset's first evaluation network on the initial stored set (real images,
decoded multi-formation) for ``--epochs`` epochs and tests it once: train epochs/s and the
test pass's seconds. ``peak`` is the core's fp32 convolution rate (ConvNet-3's 128->128 3x3
convolution at 16x16, forward, one thread) per CPU second: the denominator the cost model
divides the measured step and epoch rates by (their fraction of peak), counted in CPU seconds
like them, so it holds on a loaded machine. Rows go to benchmarks/results/real_images.jsonl (benchmarks/record.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import RESULTS, machine, report

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS / "real_images.jsonl"

STEP_CHILD = """
import json, resource, sys, time, torch
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.data import open_class_cache
from m3d_condense.pipeline.method.engine import Condenser
from m3d_condense.pipeline.method.memory import step_bytes
from m3d_condense.pipeline.method.spec import CondenseSpec
preset, steps, owned, overrides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
s = load_config(preset, overrides)
spec = CondenseSpec.of(s)
device = torch.device("cpu")
classes = list(range(owned or s.data.num_classes))  # a worker's slice: the step is a loop over its classes
t0 = time.perf_counter()
cache = open_class_cache(s.data, classes, device, progress=False)
load_s = time.perf_counter() - t0
c = Condenser(spec, cache, classes, device)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # as benchmarks/memory.py: after the cache
c.step()  # warm-up (its peak is a step's peak: RSS only grows)
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(steps):
    c.step()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({"preset": preset, "overrides": overrides, "arch": s.encoder.arch, "image_size": list(s.data.image_size),
                  "classes_timed": len(classes), "classes": s.data.num_classes,
                  "s_per_iteration_wall_all_classes": round(wall / steps * s.data.num_classes / len(classes), 1),
                  "s_per_iteration_cpu_all_classes": round(cpu / steps * s.data.num_classes / len(classes), 1),
                  "ipc": s.ipc, "factor": s.factor, "batch_real": s.batch_real,
                  "chunk_classes": c.chunk, "compiled": bool(c.compiled), "real_images_cached": sum(cache.count.values()),
                  "cache_load_s": round(load_s, 1), "steps": steps, "s_per_iteration_wall": round(wall / steps, 2),
                  "s_per_iteration_cpu": round(cpu / steps, 2),
                  "peak_rss_growth_mib_over_the_steps": round(peak / 2**20),
                  "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "estimate_step_mib": round(step_bytes(spec, c.chunk) / 2**20)}))
"""

EVAL_CHILD = """
import json, resource, sys, time, torch
from m3d_condense.models import create_model
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.data import load_split, open_class_cache
from m3d_condense.pipeline.method.engine import initial_images
from m3d_condense.pipeline.evaluation.training import test_accuracy, train_epoch
from m3d_condense.pipeline.method.seeding import generator
from m3d_condense.pipeline.method.spec import CondenseSpec
preset, epochs, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = load_config(preset, overrides)
d, e, arch = s.data, s.eval, s.eval.archs[0]
classes = list(range(d.num_classes))
cache = open_class_cache(d, classes, torch.device("cpu"), progress=False)
images = initial_images(cache, classes, CondenseSpec.of(s))  # the stored set at iteration 0: real images, multi-formation
labels = torch.arange(d.num_classes).repeat_interleave(s.ipc)
t0 = time.perf_counter()
test = load_split(d, "test")
test_load_s = time.perf_counter() - t0
torch.manual_seed(0)
model = create_model(arch, d.channels, d.num_classes, d.image_size)
opt = torch.optim.SGD(model.parameters(), lr=e.lr, momentum=e.momentum, weight_decay=e.weight_decay)
g = generator(0, "eval-train", arch)
x_all, y_all = images.float(), labels.repeat_interleave(s.factor ** 2)
model.train()
train_epoch(model, opt, x_all, y_all, s, g, s.factor)  # warm-up epoch
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(epochs):
    train_epoch(model, opt, x_all, y_all, s, g, s.factor)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
t1, c1 = time.perf_counter(), time.process_time()
acc = test_accuracy(model, test, s, torch.device("cpu"))
test_wall, test_cpu = time.perf_counter() - t1, time.process_time() - c1
print(json.dumps({"preset": preset, "overrides": overrides, "arch": arch, "recipe": str(e.recipe),
                  "image_size": list(d.image_size), "classes": d.num_classes, "ipc": s.ipc, "factor": s.factor,
                  "train_images": len(y_all), "batch_size": e.batch_size, "epochs_timed": epochs,
                  "epochs_per_s_wall": round(epochs / wall, 3), "epochs_per_s_cpu": round(epochs / cpu, 3),
                  "test_images": len(test.labels), "test_load_s": round(test_load_s, 1),
                  "test_pass_s_wall": round(test_wall, 1), "test_pass_s_cpu": round(test_cpu, 1),
                  "accuracy_after_warmup_plus_timed_epochs": round(acc, 4),
                  "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""

PEAK_CHILD = """
import json, time, torch
from torch.nn import functional as F
torch.set_num_threads(1)
x, w = torch.randn(64, 128, 16, 16), torch.randn(128, 128, 3, 3)
flops = 2 * 64 * 128 * 16 * 16 * 128 * 9
with torch.no_grad():
    for _ in range(3):
        F.conv2d(x, w, padding=1)  # warm-up
    rates = []
    for _ in range(5):
        n, cpu = 0, time.process_time()
        while time.process_time() - cpu < 1.0:
            F.conv2d(x, w, padding=1)
            n += 1
        rates.append(n * flops / (time.process_time() - cpu) / 1e9)
print(json.dumps({"conv_fp32_gflops_per_cpu_s": round(max(rates), 1), "what": "ConvNet-3 conv 128->128 3x3 at "
                  "16x16, batch 64, forward, one thread; best of 5 one-CPU-second windows"}))
"""


def child(code: str, args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"child failed with status {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_rate(source: Path, size: int, per_class: int) -> dict:
    from PIL import Image

    sizes: list[tuple[int, int]] = []
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "val"):
            for cls in sorted(p for p in (source / split).iterdir() if p.is_dir()):
                dst = Path(tmp, "src", split, cls.name)
                dst.mkdir(parents=True)
                for f in sorted(cls.iterdir())[:per_class]:
                    (dst / f.name).symlink_to(f.resolve())
                    with Image.open(f) as im:
                        sizes.append(im.size)
                    n += 1
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "--help"], check=True,
                       capture_output=True)  # the interpreter's start and prepare's imports, subtracted below
        mid = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), str(Path(tmp, "src")),
                        str(Path(tmp, "out")), "--size", str(size), "--workers", "1", "--no-progress"],
                       check=True, capture_output=True, text=True)
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        nbytes = sum(p.stat().st_size for p in Path(tmp, "out").rglob("*.tar"))
    startup = (mid.ru_utime - before.ru_utime) + (mid.ru_stime - before.ru_stime)
    cpu = (after.ru_utime - mid.ru_utime) + (after.ru_stime - mid.ru_stime) - startup
    short = sorted(min(s) for s in sizes)
    long = sorted(max(s) for s in sizes)
    return {"source": str(source), "size": size, "images": n, "per_class": per_class, "workers": 1,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "startup_cpu_s_subtracted": round(startup, 1), "images_per_s_per_core": round(n / cpu, 1),
            "images_per_s_wall": round(n / wall, 1), "shard_bytes_per_image": round(nbytes / n),
            "source_shorter_side": [short[0], short[len(short) // 2], short[-1]],
            "source_longer_side_min_median_max": [long[0], long[len(long) // 2], long[-1]],
            "what_prepare_does": f"shorter side resized to {size} (bicubic), centre crop {size}x{size}, "
                                 "re-encoded JPEG quality 90"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("prepare", "step", "eval", "peak"))
    ap.add_argument("target", nargs="?", default="", help="prepare: an ImageFolder; step/eval: a preset")
    ap.add_argument("overrides", nargs="*", help="step/eval: key=value overrides (data.root=... required)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--classes", type=int, default=0, help="step: time the first N classes (a worker's slice; "
                    "the all-classes s/iteration scales it, since a step loops over classes); 0: all")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default="", help="e.g. 'machine loaded by other jobs'")
    args = ap.parse_args()
    stamp = {"benchmark": f"real_images.{args.what}", "machine": machine(), "omp_threads": os.environ.get(
        "OMP_NUM_THREADS"), "note": args.note}
    if args.what == "peak":
        row = child(PEAK_CHILD, [])
    elif args.what == "prepare":
        row = prepare_rate(Path(args.target), args.size, args.per_class)
    else:
        overrides = list(args.overrides)
        for key, value in (("chunk_classes", "1"), ("compile", "false")) if args.what == "step" else ():
            if not any(o.startswith(f"{key}=") for o in overrides):
                overrides.append(f"{key}={value}")  # eager unless asked: compiling takes minutes on a CPU
        if args.what == "step":
            row = child(STEP_CHILD, [args.target, str(args.steps), str(args.classes), *overrides])
        else:
            row = child(EVAL_CHILD, [args.target, str(args.epochs), *overrides])
    report(args.out, {**stamp, **row})


if __name__ == "__main__":
    main()
