"""GPU readiness suite: correctness checks, speeds and a small full protocol, in one process.

    python -m benchmarks.gpu_suite --out DIR [--quick] [--tiny] [--device auto|cpu|cuda]
                                   [--data-root DIR] [--parts P,...] [--modes M,...] [--budget-s S]

Made for a short window on a GPU machine without network access: it never imports Ray (the
engine runs in-process), every entry is guarded (a failure is recorded as FAIL or ERROR with its
message and the rest still runs), and ``DIR/gpu_suite.json`` is rewritten after every entry, so
a run cut short keeps what it measured. At the end it writes ``DIR/gpu_suite.md`` and prints
that table last.

Parts (``--parts``, in this order; default all, ``--quick`` drops ``protocol``):

correctness
    Each a PASS/FAIL line with the measured difference and its tolerance. Differences of the
    synthetic images are relative to the step's update, ``|d_a - d_b| / |d_b|`` with
    ``d = images after - images before``, and of the per-class losses ``|l_a - l_b| / |l_b|``.
    - ``device_vs_cpu[reference|batched]``: one engine step on the device vs on the CPU (fp32
      with TF32 off: the same arithmetic), at the CIFAR-10 shape;
    - ``device_vs_cpu_tf32[reference]``: the same with the device's default math (cuDNN
      convolutions in TF32 on Ampere and later), what an fp32 run really computes;
    - ``compiled_vs_eager``: ``compile=True`` vs eager on the device;
    - ``bf16_vs_fp32_step``: ``precision=bf16`` vs fp32, one step; ``bf16_vs_fp32_digits``: the
      test accuracy of a short digits run (``pipeline.cli.run``) in both precisions;
    - ``cache_tiers_same_batches``: the ``device``, ``host`` and ``stream`` cache tiers of a
      prepared (sharded) dataset draw the same real batches;
    - ``eval_seeded``: an evaluation on the device twice with one seed gives the same accuracy;
    - ``split_vs_whole``: one Condenser over all classes vs two over a class split, two steps;
    - ``no_ray_import``: ray, webdataset and s3fs were not imported (checked last, at the end).
speed_cifar10, speed_imagenet100
    Condensation at the CIFAR-10 shape (cifar10 preset: 10 classes, 3x32x32, IPC 10, factor 2,
    real batch 128, ConvNet-3) and the ImageNet-100 shape (imagenet100 preset: 100 classes,
    3x224x224, IPC 10, factor 3, real batch 128, ResNetAP-10), random uint8 real images kept on
    the device, in each of ``--modes`` (fp32, bf16, compiled_bf16, compiled_fp32). Per mode:
    it/s (median of rounds, synchronised clocks, warm-up, chunk tuning and compiling excluded;
    their time is ``first_steps_s``), the projected time of the preset's run (10k / 1k
    iterations) against its target (2 / 10 min), the peak device memory
    (``torch.cuda.max_memory_allocated``; None on the CPU), and achieved TFLOP/s of the step's
    matmul/convolution FLOPs (``benchmarks/flops.py``) against the measured matmul peak of the
    precision (fp32 modes: the TF32 peak when cuDNN may use TF32).
eval_speed
    Evaluation epochs/s of one model, ``--eval-modes`` (eager, compiled_bf16): ConvNet-3 on
    CIFAR-10 IPC 10 (400 images, recipe dsa) and ResNetAP-10 on ImageNet-100 IPC 10 (100 classes
    x 90 decoded images, recipe imagenet, batch 128).
protocol
    MNIST IPC 10 with the paper protocol (10k iterations, one 1000-epoch evaluation; preset
    defaults otherwise) from ``DATA_ROOT/mnist``, and CIFAR-10 when ``DATA_ROOT/cifar10`` exists,
    accuracy beside the paper's (97.6 / 63.5) and the wall time.

``--tiny`` shrinks every shape and count (and the mode lists; one CPU thread) so that
``--device cpu --tiny`` runs every part in about a minute on a laptop CPU; its "protocol" is the
mnist preset on a small generated set, so its accuracy has no paper number. ``--budget-s``
skips (as SKIP) whatever would start after that many seconds, so the suite ends with its table
inside a command's time limit.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.flops import count_flops, measured_peaks
from benchmarks.record import git_commit
from benchmarks.speed_vs_reference import EvalLoop, compare, random_dataset, with_eval
from m3d_condense.pipeline.cli import run as run_preset
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import DataConfig, RunConfig
from m3d_condense.pipeline.data import ClassCache, LabeledImages, open_class_cache
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.evaluation.training import train_and_test
from m3d_condense.pipeline.method.compute import can_compile, pick_device, synchronize
from m3d_condense.pipeline.method.engine import Condenser
from m3d_condense.pipeline.method.spec import CondenseSpec

PARTS = ("correctness", "speed_cifar10", "speed_imagenet100", "eval_speed", "protocol")
MODES = {"fp32": {}, "bf16": {"precision": "bf16"}, "compiled_bf16": {"compile": True, "precision": "bf16"},
         "compiled_fp32": {"compile": True}}  # in order of use: eager first, then the likely production mode
EVAL_MODES = {"eager": {}, "bf16": {"precision": "bf16"}, "compiled": {"compile": True},
              "compiled_bf16": {"compile": True, "precision": "bf16"}}
PAPER_ACCURACY = {"mnist": 0.976, "cifar10": 0.635}  # M3D, IPC 10 (Zhang et al. 2024, Table 2)
ABSENT_ON_GPU_MACHINE = ("ray", "webdataset", "s3fs")  # the suite must run without them
# The paper protocol at IPC 10 with one evaluation, in-process (preset defaults otherwise).
PROTOCOL = ("ipc=10", "eval.runs=1", "backend=local")


@dataclasses.dataclass(frozen=True)
class Workload:
    """A condensation shape: a preset, the Hydra overrides that shrink it (``--tiny``), and the
    run it projects to (``project_iterations`` in at most ``target_s`` seconds)."""

    name: str
    preset: str
    overrides: tuple[str, ...]
    project_iterations: int
    target_s: float
    eval_arch: str  # the evaluation model of this preset's protocol
    eval_epochs: int  # evaluation epochs per timed round


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every shape and count the suite uses: FULL for a GPU, TINY for a CPU smoke run."""

    cifar10: Workload
    imagenet100: Workload
    modes: dict[str, tuple[str, ...]]  # condensation modes per workload
    eval_modes: dict[str, tuple[str, ...]]  # evaluation modes per workload
    chunk_classes: int  # classes per forward in the speed runs; 0: tuned by the eager mode, reused compiled;
    #                     -1: all classes in one forward
    rounds: int  # timed rounds per mode (the median is reported)
    steps_per_round: int  # condensation steps per timed round
    peak_seconds: float  # per peak measurement (benchmarks/flops.measured_peaks)
    eval_check_epochs: int  # epochs of each evaluation in the eval_seeded check
    digits: tuple[str, ...]  # overrides of the digits preset for the bf16 accuracy check
    digits_tolerance: float  # |accuracy bf16 - accuracy fp32|, a fraction
    tiers_per_class: int  # images per class of the prepared set in the cache-tier check
    protocol_overrides: tuple[str, ...]  # overrides of the protocol runs beyond (and over) PROTOCOL
    threads: int | None  # CPU threads (None: torch's default)


FULL = Sizes(
    cifar10=Workload("cifar10", "cifar10", (), 10_000, 120.0, "convnet3", 10),
    imagenet100=Workload("imagenet100", "imagenet100", (), 1_000, 600.0, "resnetap10", 1),
    modes={"cifar10": tuple(MODES), "imagenet100": tuple(MODES)},
    eval_modes={"cifar10": ("eager", "compiled_bf16"), "imagenet100": ("eager", "compiled_bf16")},
    chunk_classes=0, rounds=3, steps_per_round=3, peak_seconds=0.5, eval_check_epochs=20,
    digits=("iterations=200", "eval.runs=1", "eval.epochs=200", "eval.test_every=200"), digits_tolerance=0.03,
    tiers_per_class=160, protocol_overrides=(), threads=None)

TINY = Sizes(
    cifar10=Workload("cifar10", "cifar10", ("data.num_classes=4", "data.image_size=[16,16]", "ipc=2", "batch_real=16",
                                            "encoder.width=32"), 10_000, 120.0, "convnet3", 1),
    imagenet100=Workload("imagenet100", "imagenet100", ("data.num_classes=3", "data.image_size=[32,32]", "ipc=1",
                                                        "batch_real=8", "encoder.width=16"), 1_000, 600.0,
                         "resnetap10", 1),
    # The compiled engine runs in correctness (compiled_fp32 reuses its code: same chunk) and the
    # compiled evaluation on ConvNet-3: every path once, without paying for more CPU compiles.
    modes={"cifar10": ("fp32", "bf16", "compiled_fp32"), "imagenet100": ("fp32", "bf16")},
    eval_modes={"cifar10": ("eager", "compiled_bf16"), "imagenet100": ("eager",)},
    chunk_classes=-1, rounds=1, steps_per_round=1, peak_seconds=0.05, eval_check_epochs=3,
    digits=("iterations=10", "eval.runs=1", "eval.epochs=20", "eval.test_every=20"), digits_tolerance=0.15,
    tiers_per_class=12,
    protocol_overrides=("ipc=1", "iterations=10", "eval.epochs=10", "eval.test_every=10", "checkpoint_every=5",
                        "log_every=5", "diagnostics.moments=false"),
    threads=1)

# Tolerances of the correctness checks (relative differences, see the module docstring).
# Measured on a CPU at the CIFAR-10 shape: compiled vs eager 2.8e-4, bf16 vs fp32 2.6e-2 (5.7e-2
# at the tiny shape). TF32 keeps 3 more mantissa bits than bf16: about an eighth of bf16's.
TOL_SAME_MATH = 1e-3  # fp32 vs fp32 with different kernels or batch compositions (TF32 off)
TOL_TF32 = 2e-2  # fp32 on the CPU vs the device's TF32 convolutions (10-bit mantissa)
TOL_COMPILED = 2e-2  # compiled vs eager, both with the device's default math (TF32 convolutions on a GPU)
TOL_BF16_STEP = 0.15  # bf16 autocast vs fp32 (8-bit mantissa); reported, loose by design


# --------------------------------------------------------------------------------------------
# Results: one JSON file, rewritten after every entry
# --------------------------------------------------------------------------------------------

class Results:
    """The suite's results as one dict, saved to ``DIR/gpu_suite.json`` after every entry."""

    KINDS = ("checks", "condense_speed", "eval_speed", "protocol", "errors")  # errors: a part that failed to set up

    def __init__(self, out: Path, header: dict, budget_s: float | None):
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.data: dict = {**header, **{k: [] for k in self.KINDS}, "seconds": 0.0}
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s

    def add(self, kind: str, row: dict) -> None:
        self.data[kind].append(row)
        self.save()
        shown = {k: v for k, v in row.items() if k not in ("detail", "error")}
        print(f"[{self.elapsed():7.1f}s] {kind}: {json.dumps(shown, default=str)}", flush=True)
        if row.get("error"):
            print(f"           {row['error']}", flush=True)

    def save(self) -> None:
        self.data["seconds"] = round(self.elapsed(), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_suite.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.out / "gpu_suite.json")

    def run_part(self, part: str, body: Callable[[], None]) -> None:
        """Run one part; an exception outside its guarded entries (in its setup) is recorded under
        ``errors`` and the suite goes on with the next part."""
        try:
            body()
        except Exception as e:  # noqa: BLE001 - one failure must not stop the suite
            traceback.print_exc()
            release_device_memory()
            self.add("errors", {"part": part, "status": "ERROR", "error": f"{type(e).__name__}: {e}"[:1000]})

    def guarded(self, kind: str, names: dict, measure: Callable[[], dict]) -> dict:
        """Record ``{**names, **measure()}`` under ``kind``; an exception is recorded as status
        ERROR with its message (and the traceback printed), and the suite goes on. Past the
        budget, ``measure`` is not called and the entry is recorded as SKIP."""
        start = time.perf_counter()
        if self.over_budget():
            fields = {"status": "SKIP", "error": f"past the time budget of {self.budget_s:g} s"}
        else:
            try:
                fields = measure()
            except Exception as e:  # noqa: BLE001 - one failure must not stop the suite
                traceback.print_exc()
                fields = {"status": "ERROR", "error": f"{type(e).__name__}: {e}"[:1000]}
                release_device_memory()
        row = {**names, **fields, "seconds": round(time.perf_counter() - start, 2)}
        self.add(kind, row)
        return row


def release_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def verdict(value: float, tolerance: float, detail: str) -> dict:
    """PASS when ``value <= tolerance`` (NaN fails)."""
    return {"status": "PASS" if value <= tolerance else "FAIL", "value": value, "tolerance": tolerance,
            "detail": detail}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` (Frobenius norms, float64, on the CPU); 0 when both are 0."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    norm = b.norm().item()
    diff = (a - b).norm().item()
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for matmuls and cuDNN convolutions inside (full fp32 on the device)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset, GiB; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        release_device_memory()
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------------------------
# Data and settings
# --------------------------------------------------------------------------------------------

def preset_config(w: Workload) -> RunConfig:
    """The preset's run config at the workload's shape, with the encoder and the evaluation
    eager (compile off): the checks and modes change it with ``dataclasses.replace`` and
    ``with_eval``."""
    return load_config(w.preset, [*w.overrides, "compile=false", "eval.compile=false"])


def real_per_class(s: RunConfig) -> int:
    """Real images a class needs: a full real batch and the initial synthetic sample."""
    return max(s.batch_real, s.ipc * s.factor**2)


def random_uint8_pool(s: RunConfig, device: torch.device, seed: int = 0) -> ClassCache:
    """Random uint8 real images, (classes * real_per_class(s), C, H, W) class-major, generated on
    and kept on ``device`` (speed does not depend on content; an ImageNet-100 cache is ~2 GB)."""
    n, (h, w) = real_per_class(s), s.data.image_size
    g = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (s.data.num_classes * n, s.data.channels, h, w), generator=g, device=device,
                           dtype=torch.uint8)
    return ClassCache(images, {c: n for c in range(s.data.num_classes)}, device)


def patterned_images(classes: int, per_class: int, channels: int, size: tuple[int, int], seed: int) -> LabeledImages:
    """uint8 images (classes * per_class, C, H, W), class-major, that a network can tell apart:
    each class a fixed random pattern (weight 0.6) plus per-image noise (0.4)."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, channels, *size, generator=torch.Generator().manual_seed(1234))
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = 0.6 * patterns[labels] + 0.4 * torch.rand(len(labels), channels, *size, generator=g)
    return LabeledImages((x * 255).round().to(torch.uint8), labels, [f"class{c}" for c in range(classes)])


def write_npz(folder: Path, split: str, data: LabeledImages) -> None:
    """``folder/split.npz`` in the in-memory format (x uint8 NHWC, y, class_names)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{split}.npz", x=data.images.permute(0, 2, 3, 1).numpy(), y=data.labels.numpy(),
                        class_names=np.array(data.class_names))


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class StepResult:
    """Synthetic images (rows, C, H, W) before and after some engine steps, on the CPU, and the
    last step's per-class losses (classes,)."""

    before: torch.Tensor
    after: torch.Tensor
    losses: torch.Tensor

    @property
    def update(self) -> torch.Tensor:
        return self.after - self.before


def run_steps(s: RunConfig, data: LabeledImages, classes: list[int], device: torch.device,
              steps: int = 1) -> StepResult:
    """``steps`` engine steps over ``classes`` of ``data`` (all classes' images, class-major), on
    ``device``, with ``s.chunk_classes`` (0 would tune; the checks pass it explicitly)."""
    cache = ClassCache.from_labeled(data, classes, device)
    condenser = Condenser(CondenseSpec.of(s), cache, classes, device)
    before = condenser.images.detach().cpu().clone()
    losses = torch.zeros(len(classes))
    for _ in range(steps):
        losses = condenser.step()
    return StepResult(before, condenser.images.detach().cpu(), losses)


def compare_steps(a: StepResult, b: StepResult, tolerance: float, what: str) -> dict:
    """A verdict on the update and loss differences of two runs of the same steps (``b`` the
    reference); the value is the larger of the two relative differences."""
    update, loss = relative_difference(a.update, b.update), relative_difference(a.losses, b.losses)
    same_start = torch.equal(a.before, b.before)
    detail = (f"{what}: update rel. diff {update:.2e}, loss rel. diff {loss:.2e}, update norm "
              f"{b.update.norm():.3g}, same initial images: {same_start}")
    result = verdict(max(update, loss), tolerance, detail)
    if not same_start:
        result["status"] = "FAIL"
    return result


def correctness(results: Results, sizes: Sizes, device: torch.device, work: Path) -> None:
    """Every correctness check, each guarded; the CIFAR-10 workload of ``sizes`` is the shape."""
    w = sizes.cifar10
    base = preset_config(w)
    classes = list(range(base.data.num_classes))
    base = dataclasses.replace(base, chunk_classes=len(classes))  # one forward: no tuning, no extra compiled shape
    data = patterned_images(len(classes), real_per_class(base), base.data.channels, base.data.image_size, seed=0)
    cpu = torch.device("cpu")
    on_cpu = "" if device.type != "cpu" else " (the device is the CPU: it is compared with itself)"

    def device_vs_cpu(mode: str, tf32: bool) -> dict:
        s = dataclasses.replace(base, update_mode=mode)
        with strict_fp32():
            reference = run_steps(s, data, classes, cpu)
        with contextlib.nullcontext() if tf32 else strict_fp32():
            ours = run_steps(s, data, classes, device)
        math_mode = "device default math (TF32 convolutions if enabled)" if tf32 else "fp32, TF32 off"
        return compare_steps(ours, reference, TOL_TF32 if tf32 else TOL_SAME_MATH,
                             f"{device} vs cpu, update_mode={mode}, {math_mode}{on_cpu}")

    for mode in ("reference", "batched"):
        results.guarded("checks", {"name": f"device_vs_cpu[{mode}]"}, lambda m=mode: device_vs_cpu(m, tf32=False))
    results.guarded("checks", {"name": "device_vs_cpu_tf32[reference]"}, lambda: device_vs_cpu("reference", tf32=True))

    def compiled_vs_eager() -> dict:
        if not can_compile():
            return {"status": "SKIP", "detail": "no C++ compiler for CPU kernels"}
        eager = run_steps(base, data, classes, device)
        start = time.perf_counter()
        compiled = run_steps(dataclasses.replace(base, compile=True), data, classes, device)
        return compare_steps(compiled, eager, TOL_COMPILED, f"compile=True vs eager on {device}, one step "
                             f"(compiling and stepping took {time.perf_counter() - start:.1f} s)")

    results.guarded("checks", {"name": "compiled_vs_eager"}, compiled_vs_eager)

    def bf16_vs_fp32_step() -> dict:
        fp32 = run_steps(base, data, classes, device)
        bf16 = run_steps(dataclasses.replace(base, precision="bf16"), data, classes, device)
        return compare_steps(bf16, fp32, TOL_BF16_STEP, f"precision=bf16 vs fp32 on {device}, one step")

    results.guarded("checks", {"name": "bf16_vs_fp32_step"}, bf16_vs_fp32_step)
    results.guarded("checks", {"name": "bf16_vs_fp32_digits"}, lambda: digits_precision(sizes, device, work))
    results.guarded("checks", {"name": "cache_tiers_same_batches"}, lambda: cache_tiers(sizes, base, device, work))
    results.guarded("checks", {"name": "eval_seeded"}, lambda: eval_seeded(sizes, device))

    def split_vs_whole() -> dict:
        half = len(classes) // 2
        with strict_fp32():
            whole = run_steps(base, data, classes, device, steps=2)
            parts = [run_steps(dataclasses.replace(base, chunk_classes=len(p)), data, p, device, steps=2)
                     for p in (classes[:half], classes[half:])]
        joined = StepResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("before", "after", "losses")))
        return compare_steps(joined, whole, TOL_SAME_MATH, f"classes {classes[:half]} + {classes[half:]} vs all "
                             f"{len(classes)} in one Condenser, two steps on {device}, fp32 with TF32 off")

    results.guarded("checks", {"name": "split_vs_whole"}, split_vs_whole)


def digits_precision(sizes: Sizes, device: torch.device, work: Path) -> dict:
    """Test accuracy of a short digits run (condense and evaluate, ``pipeline.cli.run``) with the
    engine and the evaluation in fp32, and both in bf16."""
    accuracy = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config("digits", [*sizes.digits, f"precision={precision}", f"eval.precision={precision}",
                                     "backend=local", f"device={device.type}", "compile=false", "eval.compile=false",
                                     "diagnostics.moments=false", f"out_dir={work / 'digits'}",
                                     f"run_name={precision}"])
        accuracy[precision] = run_preset(cfg, progress=False)["eval"]["accuracy_mean"]
    gap = abs(accuracy["bf16"] - accuracy["fp32"])
    return {**verdict(gap, sizes.digits_tolerance, f"digits ({' '.join(sizes.digits)}) accuracy fp32 "
                      f"{100 * accuracy['fp32']:.2f}%, bf16 {100 * accuracy['bf16']:.2f}%"), "accuracy": accuracy}


def cache_tiers(sizes: Sizes, s: RunConfig, device: torch.device, work: Path) -> dict:
    """Prepare a small sharded set, open it in the device, host and stream cache tiers and count
    the real batches (several iterations) that differ from the host tier's."""
    classes = list(range(s.data.num_classes))
    data = patterned_images(len(classes), sizes.tiers_per_class, s.data.channels, s.data.image_size, seed=1)
    write_npz(work / "tiers_src", "train", data)
    prepare(str(work / "tiers_src"), str(work / "tiers"), PrepareOptions(progress=False, shard_size=50),
            log=lambda _m: None)
    caches = {tier: open_class_cache(DataConfig(source="shards", root=str(work / "tiers"), cache=tier, read_workers=1),
                                   classes, device, progress=False)
             for tier in ("device", "host", "stream")}
    where = {tier: str(p.images.device) if hasattr(p, "images") else "shards" for tier, p in caches.items()}
    batch = min(s.batch_real, sizes.tiers_per_class - 1)
    differing, draws = 0, 0
    for t in range(4):
        host = caches["host"].sample(classes, batch, s.seed, t).cpu()
        for tier in ("device", "stream"):
            differing += not torch.equal(caches[tier].sample(classes, batch, s.seed, t).cpu(), host)
            draws += 1
    placed = where["device"].startswith(device.type) and where["host"] == "cpu"
    result = verdict(differing, 0, f"{draws} batches of {batch} per class from the device and stream tiers vs host; "
                     f"images stored on: {where}")
    if not placed:
        result["status"] = "FAIL"
    return result


def eval_seeded(sizes: Sizes, device: torch.device) -> dict:
    """Train and test ConvNet-3 on the device twice with one seed: the accuracies must be equal
    (the detail gives the largest difference of the per-epoch training losses too)."""
    s = with_eval(preset_config(sizes.cifar10), epochs=sizes.eval_check_epochs, test_every=sizes.eval_check_epochs)
    n = s.ipc * s.factor**2
    train = patterned_images(s.data.num_classes, n, s.data.channels, s.data.image_size, seed=2)
    test = patterned_images(s.data.num_classes, 20, s.data.channels, s.data.image_size, seed=3)
    images = train.images.float().div(255)
    runs = [train_and_test(images, train.labels, test, "convnet3", s, seed=7, device=device) for _ in range(2)]
    gap = abs(runs[0].accuracy - runs[1].accuracy)
    loss_gap = max(abs(a - b) for a, b in zip(runs[0].losses, runs[1].losses, strict=True))
    return {**verdict(gap, 0.0, f"convnet3, {len(images)} images, {s.eval.epochs} epochs on {device}: accuracies "
                      f"{100 * runs[0].accuracy:.2f}% / {100 * runs[1].accuracy:.2f}%, largest training-loss "
                      f"difference {loss_gap:.2e}"), "accuracy": runs[0].accuracy}


def imports_check() -> dict:
    """None of the packages the GPU machine lacks was imported."""
    found = [m for m in ABSENT_ON_GPU_MACHINE if m in sys.modules]
    return verdict(len(found), 0, f"imported: {found or 'none'} of {list(ABSENT_ON_GPU_MACHINE)}")


# --------------------------------------------------------------------------------------------
# Speeds
# --------------------------------------------------------------------------------------------

def measure_peaks(device: torch.device, seconds: float) -> dict[str, float]:
    """GFLOP/s peaks of ``benchmarks/flops.measured_peaks`` (fp32 without TF32, bf16) and, on a
    GPU, the TF32 matmul peak as ``matmul_tf32_gflops``."""
    with strict_fp32():
        peaks = measured_peaks(device, seconds)
    if device.type == "cuda":
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            tf32 = measured_peaks(device, seconds)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        peaks["matmul_tf32_gflops"] = tf32["matmul_fp32_gflops"]
    return peaks


def matmul_peak(peaks: dict, precision: str, device: torch.device) -> float | None:
    """The matmul peak (GFLOP/s) a mode's convolutions can reach: bf16, or for fp32 the TF32
    peak when cuDNN may use TF32 on this device."""
    if precision == "bf16":
        return peaks.get("matmul_bf16_gflops")
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32 and "matmul_tf32_gflops" in peaks:
        return peaks["matmul_tf32_gflops"]
    return peaks.get("matmul_fp32_gflops")


def condense_speed(results: Results, sizes: Sizes, w: Workload, modes: list[str], device: torch.device,
                   peaks: dict) -> None:
    """It/s, projected run time, peak memory and achieved TFLOP/s of each mode on workload ``w``."""
    base = preset_config(w)
    classes = list(range(base.data.num_classes))
    if sizes.chunk_classes != 0:
        base = dataclasses.replace(base, chunk_classes=len(classes) if sizes.chunk_classes < 0 else sizes.chunk_classes)
    cache = random_uint8_pool(base, device)
    chunks: dict[str, int] = {}  # classes per forward the eager modes chose; their compiled modes reuse it
    flops: dict[str, int] = {}

    def one_mode(mode: str) -> dict:
        if MODES[mode].get("compile") and not can_compile():
            return {"status": "SKIP", "error": "no C++ compiler for CPU kernels"}
        s = dataclasses.replace(base, **MODES[mode])
        eager_twin = mode.removeprefix("compiled_")
        if s.compile and s.chunk_classes == 0 and eager_twin in chunks:
            s = dataclasses.replace(s, chunk_classes=chunks[eager_twin])
        condenser = Condenser(CondenseSpec.of(s), cache, classes, device)
        start = time.perf_counter()
        condenser.step()  # tunes the chunk (chunk_classes=0) and compiles (compile=True): not timed
        condenser.step()
        synchronize(device)
        first_steps_s = time.perf_counter() - start
        chunks[mode] = condenser.chunk
        reset_peak_memory(device)
        it_per_s = compare({mode: condenser}, sizes.steps_per_round, sizes.rounds, device)[mode]
        if "step" not in flops:  # one eager fp32 step: the same matmul/conv work as every mode's
            fixed_chunk = dataclasses.replace(CondenseSpec.of(base), chunk_classes=condenser.chunk)
            counted = Condenser(fixed_chunk, cache, classes, device)
            flops["step"] = count_flops(counted.step)
        peak = matmul_peak(peaks, s.precision, device)
        tflops = it_per_s * flops["step"] / 1e12
        projected = w.project_iterations / it_per_s
        return {"status": "PASS" if projected <= w.target_s else "SLOW", "it_per_s": it_per_s,
                "projected_s": projected, "project_iterations": w.project_iterations, "target_s": w.target_s,
                "first_steps_s": first_steps_s, "peak_memory_gib": peak_memory_gib(device),
                "flops_per_step": flops["step"], "tflops": tflops,
                "fraction_of_peak": tflops * 1e3 / peak if peak else None, "chunk_classes": condenser.chunk}

    for mode in modes:
        results.guarded("condense_speed", {"workload": w.name, "mode": mode}, lambda m=mode: one_mode(m))


def eval_speed(results: Results, sizes: Sizes, w: Workload, modes: list[str], device: torch.device) -> None:
    """Epochs/s of one ``w.eval_arch`` model on the preset's IPC 10 decoded set (random pixels,
    ``ipc * factor^2`` per class, on the device), per evaluation mode."""
    base = with_eval(preset_config(w), epochs=w.eval_epochs, test_every=10**9)
    per_class = base.ipc * base.factor**2
    h, wd = base.data.image_size
    g = torch.Generator(device=device).manual_seed(1)
    images = torch.rand(base.data.num_classes * per_class, base.data.channels, h, wd, generator=g, device=device)
    labels = torch.arange(base.data.num_classes).repeat_interleave(per_class)
    test = random_dataset(base.data.num_classes, 1, base.data.channels, h)  # the timing is training's: a token test set

    def one_mode(mode: str) -> dict:
        s = with_eval(base, **EVAL_MODES[mode])
        if s.eval.compile and not can_compile():
            return {"status": "SKIP", "error": "no C++ compiler for CPU kernels"}
        reset_peak_memory(device)
        start = time.perf_counter()
        rate = compare({mode: EvalLoop(s, images, labels, test, 1, device, w.eval_arch)}, 1, sizes.rounds, device)[mode]
        return {"status": "PASS", "epochs_per_s": rate * s.eval.epochs, "epochs_per_round": s.eval.epochs,
                "images": len(labels), "batch_size": s.eval.batch_size, "recipe": str(s.eval.recipe),
                "peak_memory_gib": peak_memory_gib(device), "total_s": time.perf_counter() - start}

    for mode in modes:
        results.guarded("eval_speed", {"workload": w.name, "arch": w.eval_arch, "mode": mode},
                        lambda m=mode: one_mode(m))


# --------------------------------------------------------------------------------------------
# Full protocol
# --------------------------------------------------------------------------------------------

def merge_overrides(*groups: tuple[str, ...]) -> list[str]:
    """Hydra ``key=value`` overrides, a later group's value of a key replacing an earlier one's."""
    merged: dict[str, str] = {}
    for group in groups:
        merged.update(o.split("=", 1) for o in group)
    return [f"{k}={v}" for k, v in merged.items()]


def protocol(results: Results, sizes: Sizes, data_root: Path, device: torch.device, work: Path, tiny: bool) -> None:
    """The paper protocol of MNIST (and CIFAR-10 if its data is there) at IPC 10, one evaluation;
    with ``tiny``, the mnist preset on a small generated set instead."""
    runs = {"mnist": data_root / "mnist", "cifar10": data_root / "cifar10"}
    if tiny:
        root = work / "tiny_mnist"
        write_npz(root, "train", patterned_images(10, 20, 1, (28, 28), seed=4))
        write_npz(root, "test", patterned_images(10, 10, 1, (28, 28), seed=5))
        runs = {"mnist": root}

    def one_run(preset: str, root: Path) -> dict:
        if not (root / "train.npz").exists() and not (root / "manifest.parquet").exists():
            return {"status": "SKIP", "error": f"no data at {root} (train.npz or manifest.parquet)"}
        overrides = merge_overrides(PROTOCOL, (f"data.root={root}", f"device={device.type}",
                                               f"out_dir={work / 'protocol'}", f"run_name={preset}"),
                                    sizes.protocol_overrides)
        cfg = load_config(preset, overrides)
        start = time.perf_counter()
        summary = run_preset(cfg, progress=False)
        accuracy = summary["eval"]["accuracy_mean"]
        paper = None if tiny else PAPER_ACCURACY[preset]
        return {"status": "ran", "accuracy": accuracy, "paper": paper,
                "gap_to_paper": accuracy - paper if paper is not None else None, "wall_s": time.perf_counter() - start,
                "condense_s": summary["condense_seconds"], "condense_it_per_s": summary["condense_it_per_s"],
                "iterations": summary["iterations"], "eval_epochs": summary["eval"]["epochs"],
                "eval_s": summary["eval"]["seconds"][0], "ipc": summary["ipc"],
                "data": "generated (tiny)" if tiny else str(root)}

    for preset, root in runs.items():
        results.guarded("protocol", {"preset": preset}, lambda p=preset, r=root: one_run(p, r))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def cpu_name() -> str:
    """The processor's model name (Linux), else the architecture."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "commit": git_commit(), "host": platform.node(), "cpu_name": cpu_name(), "device_name": cpu_name()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    tf32={"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32})
        with contextlib.suppress(ImportError):
            import triton

            info["triton"] = triton.__version__
    return info


def fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(data: dict) -> str:
    """The results as Markdown tables, one per part that ran."""
    m = data["machine"]
    lines = [f"# GPU suite: {m['device_name']} ({m['device']}), torch {m['torch']}, CUDA {m['cuda']}, "
             f"{data['seconds']:.0f} s{' (tiny)' if data['args']['tiny'] else ''}", ""]
    if data["checks"]:
        lines += ["| check | status | measured | tolerance | detail |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['status']} | {fmt(r.get('value'), '.2e')} | {fmt(r.get('tolerance'), '.2g')} | "
                  f"{r.get('detail') or r.get('error', '')} |" for r in data["checks"]]
        lines.append("")
    if data["condense_speed"]:
        lines += ["| workload | mode | it/s | projected s (iterations) | target s | status | first steps s | "
                  "peak GiB | TFLOP/s | of peak | classes/forward |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in data["condense_speed"]:
            frac = r.get("fraction_of_peak")
            lines.append(f"| {r['workload']} | {r['mode']} | {fmt(r.get('it_per_s'))} | {fmt(r.get('projected_s'), '.0f')} "
                         f"({fmt(r.get('project_iterations'))}) | {fmt(r.get('target_s'), '.0f')} | {r['status']} | "
                         f"{fmt(r.get('first_steps_s'), '.1f')} | {fmt(r.get('peak_memory_gib'), '.2f')} | "
                         f"{fmt(r.get('tflops'))} | {'-' if frac is None else f'{100 * frac:.1f}%'} | "
                         f"{fmt(r.get('chunk_classes'))} |" + (f" {r['error']}" if r.get("error") else ""))
        lines.append("")
    if data["eval_speed"]:
        lines += ["| evaluation | mode | epochs/s | images | batch | peak GiB | status |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['arch']} on {r['workload']} | {r['mode']} | {fmt(r.get('epochs_per_s'))} | {fmt(r.get('images'))} | "
                  f"{fmt(r.get('batch_size'))} | {fmt(r.get('peak_memory_gib'), '.2f')} | {r['status']} |"
                  + (f" {r['error']}" if r.get("error") else "") for r in data["eval_speed"]]
        lines.append("")
    if data["errors"]:
        lines += ["| part | error |", "|---|---|"] + [f"| {r['part']} | {r['error']} |" for r in data["errors"]] + [""]
    if data["protocol"]:
        lines += ["| protocol | accuracy | paper | wall s | condense it/s | iterations | eval epochs | status |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {fmt(100 * r['accuracy'] if 'accuracy' in r else None, '.2f')} | "
                  f"{fmt(100 * r['paper'] if r.get('paper') else None, '.1f')} | {fmt(r.get('wall_s'), '.0f')} | "
                  f"{fmt(r.get('condense_it_per_s'))} | {fmt(r.get('iterations'))} | {fmt(r.get('eval_epochs'))} | "
                  f"{r['status']} |" + (f" {r['error']}" if r.get("error") else "") for r in data["protocol"]]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def chosen(value: str | None, valid, default) -> list[str]:
    """A comma-separated choice checked against ``valid``, or ``default``."""
    if value is None:
        return list(default)
    items = [v for v in value.split(",") if v]
    unknown = sorted(set(items) - set(valid))
    if unknown:
        raise SystemExit(f"unknown {unknown}; choose from {sorted(valid)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--quick", action="store_true", help="skip the full protocol")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and counts: a smoke run of every part")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--data-root", type=Path, default=Path("data"), help="holds mnist/ (and cifar10/) for the protocol")
    ap.add_argument("--parts", help=f"comma-separated, from {list(PARTS)} (default: all; --quick: all but protocol)")
    ap.add_argument("--modes", help=f"condensation modes, from {list(MODES)} (default: per workload, see FULL/TINY)")
    ap.add_argument("--eval-modes", help=f"evaluation modes, from {list(EVAL_MODES)} (default: eager,compiled_bf16)")
    ap.add_argument("--budget-s", type=float, help="skip entries that would start after this many seconds")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary folder of run directories and data")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = TINY if args.tiny else FULL
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise SystemExit(f"--device {args.device}: {e}") from None
    parts = chosen(args.parts, PARTS, [p for p in PARTS if not (args.quick and p == "protocol")])
    modes = {name: chosen(args.modes, MODES, default) for name, default in sizes.modes.items()}
    eval_modes = {name: chosen(args.eval_modes, EVAL_MODES, default) for name, default in sizes.eval_modes.items()}
    header = {"suite": "gpu_suite", "machine": machine_info(device), "parts": parts,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    results = Results(args.out, header, args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    print(f"gpu_suite: {header['machine']['device_name']} ({device}); parts {parts}; work folder {work}", flush=True)
    results.data["peaks"] = {}
    try:
        if "correctness" in parts:
            results.run_part("correctness", lambda: correctness(results, sizes, device, work))
        if {"speed_cifar10", "speed_imagenet100"} & set(parts):
            results.run_part("peaks", lambda: results.data.update(peaks=measure_peaks(device, sizes.peak_seconds)))
        for w in (sizes.cifar10, sizes.imagenet100):
            if f"speed_{w.name}" in parts:
                results.run_part(f"speed_{w.name}",
                                 lambda w=w: condense_speed(results, sizes, w, modes[w.name], device, results.data["peaks"]))
        if "eval_speed" in parts:
            for w in (sizes.cifar10, sizes.imagenet100):
                results.run_part(f"eval_speed {w.name}",
                                 lambda w=w: eval_speed(results, sizes, w, eval_modes[w.name], device))
        if "protocol" in parts:
            results.run_part("protocol", lambda: protocol(results, sizes, args.data_root, device, work, args.tiny))
        results.guarded("checks", {"name": "no_ray_import"}, imports_check)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        results.save()
        table = markdown(results.data)
        (args.out / "gpu_suite.md").write_text(table)
        print("\n" + table, flush=True)
    bad = [r for kind in Results.KINDS for r in results.data[kind] if r["status"] in ("FAIL", "ERROR")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
