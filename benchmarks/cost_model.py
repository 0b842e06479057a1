"""Cost model of M3D on ImageNet-100 and ImageNet-1K on H100 GPUs: FLOPs per iteration, GPU memory
per worker and its cache tier, checkpoint size and object-store traffic, and wall time of the
condensation (1000 iterations) and of the evaluation, for 1, 8 and 64 GPUs.

    python -m benchmarks.cost_model [--out benchmarks/results/cost_model.json]
                                    [--presets imagenet100,imagenet1k] [--ipc 1,10,50] [--gpus 1,8,64]
                                    [--set NAME=VALUE ...] [--override KEY=VALUE ...]

Every number is one of (the JSON's ``sources`` says which, per field):
- counted: matmul/convolution FLOPs of the engine's own code (``Condenser.losses_and_grad``, the
  only part of a step with matmuls or convolutions) under ``benchmarks/flops.count_flops``, on
  meta tensors: shapes only, no memory and no arithmetic, so a whole ImageNet-1K step at IPC 50
  (450k decoded images) is counted in a second instead of being run; the evaluation model's
  training step likewise;
- code: a rule of the pipeline applied to the numbers (``pipeline/memory.step_bytes`` and its
  HEADROOM rule, ``pipeline/data/dataset.cache_tier``'s thresholds, ``backend.split_classes``,
  ``evaluate.eval_epochs``, the driver's sync and checkpoint schedule);
- formula: sizes from shapes (checkpoint = 2 x classes x ipc x C x H x W x 4 bytes + loss history);
- measured: by this command on this machine (encoder construction, per-class sampling, the
  synthetic-state copies of one step), or earlier, with the source named (BENCHMARKS.md,
  ../shared/reference/ENVIRONMENT.md);
- measured on a CPU, same networks: ``benchmarks/results/real_images.jsonl`` holds the CPU
  seconds of real condensation steps and evaluation epochs of the presets' own networks on real
  photographs (``python -m benchmarks.real_images step|eval|peak``); their counted FLOPs over
  those seconds give each network's achieved rate per core and its fraction of the core's fp32
  convolution peak. That fraction replaces the ConvNet-3 assumption for the network it was
  measured on, and the ``cpu_*`` fields project the condensation and evaluation in core-hours
  at that measured rate (``measured_cpu_rates``);
- assumed: everything else, listed in ``ASSUMPTIONS`` with why; ``--set NAME=VALUE`` changes one.

No data is read: the presets are composed with ``compose_config`` + ``to_run_config``.
``--override`` passes Hydra overrides to every preset (another shape or evaluation model).
Prints five Markdown tables; docs/scaling.md explains them.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.flops import count_flops
from benchmarks.record import RESULTS, git_commit, machine
from m3d_condense.models import create_model
from m3d_condense.pipeline.config.loader import compose_config, to_run_config
from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.data.dataset import DEVICE_CACHE_FRACTION
from m3d_condense.pipeline.evaluation.training import eval_epochs
from m3d_condense.pipeline.method.engine import Condenser, build_encoder
from m3d_condense.pipeline.method.memory import HEADROOM, activation_bytes_per_image, step_bytes
from m3d_condense.pipeline.method.spec import CondenseSpec
from m3d_condense.pipeline.orchestration.groups import split_classes

GiB, GB = 2**30, 1e9
DEFAULT_OUT = RESULTS / "cost_model.json"
MEASURED_CPU = RESULTS / "real_images.jsonl"  # real steps and epochs of the presets' networks on a CPU
DATASETS = {"imagenet100": "ImageNet-100", "imagenet1k": "ImageNet-1K"}


@dataclasses.dataclass(frozen=True)
class Assumption:
    value: float
    unit: str
    source: str


ASSUMPTIONS: dict[str, Assumption] = {
    "gpu_memory_gib": Assumption(80.0, "GiB", "assumed: an H100 SXM 80 GB, taken as 80 GiB"),
    "cuda_context_gib": Assumption(1.0, "GiB", "assumed: CUDA context, cuDNN workspace and encoder weights, held before "
                                               "the worker's tensors (so 79 GiB are free when the worker starts)"),
    "bf16_peak_tflops": Assumption(790.0, "TFLOP/s", "measured elsewhere: an H100's bf16 matmul at 8192^3 "
                                                     "(../shared/reference/ENVIRONMENT.md); the spec's dense peak is 989.4"),
    "tf32_to_bf16_peak": Assumption(0.5, "", "assumed: from the H100 SXM spec sheet, dense TF32 494.7 / dense BF16 989.4 "
                                             "TFLOP/s. fp32 runs (the presets' default) do their convolutions in TF32: "
                                             "PyTorch's default cudnn.allow_tf32=True, which the pipeline leaves as is"),
    "condense_fraction_bf16": Assumption(0.458, "of peak", "assumed: what the compiled bf16 engine reached on CPU, "
                                                           "45.8% of the CPU's measured bf16 convolution peak (BENCHMARKS.md, "
                                                           "Speed); no GPU measurement yet"),
    "condense_fraction_fp32": Assumption(0.470, "of peak", "assumed: what the compiled fp32 engine reached on CPU, 47.0% "
                                                           "of the fp32 peak (BENCHMARKS.md, Speed)"),
    "eval_fraction_bf16": Assumption(0.178, "of peak", "assumed: what compiled bf16 evaluation reached on CPU, 17.8% "
                                                       "(ConvNet-3, CIFAR-10 IPC 10, BENCHMARKS.md, Evaluation)"),
    "eval_fraction_fp32": Assumption(0.181, "of peak", "assumed: what compiled fp32 evaluation reached on CPU, 18.1% "
                                                       "(BENCHMARKS.md, Evaluation)"),
    "sync_ms_one_node": Assumption(2.0, "ms per driver stop", "measured: Ray adds ~2 ms per synced iteration, 2 actors on "
                                                              "one machine (BENCHMARKS.md, Workers)"),
    "sync_ms_multi_node": Assumption(10.0, "ms per driver stop", "assumed: not measured; 5x the one-node figure for "
                                                                 "actor calls across nodes"),
    "gpus_per_node": Assumption(8.0, "", "assumed: 8-GPU nodes (64 GPUs = 8 nodes)"),
    "store_mb_per_s": Assumption(200.0, "MB/s per worker", "assumed: object-store throughput of one worker writing or "
                                                           "reading its checkpoint (one fsspec stream); not measured"),
    "host_to_device_gb_per_s": Assumption(20.0, "GB/s", "assumed: a host-tier batch's copy to the GPU from pageable "
                                                        "(unpinned) memory, as ClassCache does it; not measured"),
    "decode_jpeg_per_s": Assumption(1630.0, "images/s per core", "measured: one core decodes 1,630 224-px JPEGs/s "
                                                                 "(BENCHMARKS.md, Data layer throughput)"),
    "imagenet100_train_per_class": Assumption(1300.0, "images", "given: ImageNet-100 has ~1300 train images per class"),
    "imagenet1k_train_per_class": Assumption(1281.0, "images", "given: ImageNet-1K has 1,281,167 train images, ~1281 "
                                                              "per class"),
    "test_per_class": Assumption(50.0, "images", "assumed: the test split is ImageNet's validation set, 50 per class"),
}


def preset_config(preset: str, ipc: int, overrides: tuple[str, ...] = ()) -> RunConfig:
    """The preset at ``ipc`` with ``overrides``, composed without reading data."""
    return to_run_config(compose_config(preset, [f"ipc={ipc}", *overrides]))


def pixel_bytes(cfg: RunConfig) -> int:
    """One fp32 image of the run's shape."""
    h, w = cfg.data.image_size
    return cfg.data.channels * h * w * 4


# ---------------------------------------------------------------------------------------------
# Counted: FLOPs
# ---------------------------------------------------------------------------------------------

def meta_condenser(cfg: RunConfig, per_class: int, classes: list[int] | None = None) -> Condenser:
    """The engine over ``classes`` (default all) of ``cfg`` on meta tensors, one forward for all."""
    classes = list(range(cfg.data.num_classes)) if classes is None else classes
    h, w = cfg.data.image_size
    meta = torch.device("meta")
    images = torch.empty(len(classes) * per_class, cfg.data.channels, h, w, dtype=torch.uint8, device=meta)
    cache = ClassCache(images, {c: per_class for c in classes}, meta)
    spec = dataclasses.replace(CondenseSpec.of(cfg), compile=False, chunk_classes=len(classes))
    condenser = Condenser(spec, cache, classes, meta)
    # torch.autocast refuses the meta device even when disabled; bf16 does not change the FLOPs.
    condenser._autocast = contextlib.nullcontext
    return condenser


def step_flops(cfg: RunConfig, per_class: int) -> int:
    """Matmul/conv FLOPs of one iteration over all classes: the no-grad real forward, the
    synthetic forward and its backward to the pixels, the MMD. ``losses_and_grad`` is all of a
    step's matmul/conv work (the update is elementwise); tests/test_cost_model.py checks that it
    equals a counted CPU ``step()`` at a small shape."""
    condenser = meta_condenser(cfg, per_class)
    return count_flops(lambda: condenser.losses_and_grad(condenser.images, 0))


def eval_flops_per_image(cfg: RunConfig, arch: str) -> tuple[int, int]:
    """(training, test) matmul/conv FLOPs per image of ``arch`` as evaluate.train_epoch (forward,
    cross-entropy, backward to the weights) and test_accuracy (forward) run it; augmentation and
    CutMix have none."""
    h, w = cfg.data.image_size
    net = create_model(arch, cfg.data.channels, cfg.data.num_classes, (h, w)).to("meta").train()
    x = torch.empty(2, cfg.data.channels, h, w, device="meta")
    y = torch.zeros(2, dtype=torch.long, device="meta")
    train = count_flops(lambda: F.cross_entropy(net(x), y).backward())
    with torch.no_grad():
        test = count_flops(lambda: net.eval()(x))
    return train // 2, test // 2


# ---------------------------------------------------------------------------------------------
# Measured on a CPU: the presets' own networks on real photographs (benchmarks/real_images.py)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MeasuredRate:
    """A network's achieved fp32 rate on one CPU core, from a recorded step or epoch."""

    what: str  # "step" (condensation, all classes) or "eval" (one training epoch)
    arch: str
    image_size: tuple[int, int]
    flops: int  # counted FLOPs of the measured step or epoch
    cpu_s: float  # its measured CPU seconds (one thread)
    fraction_of_peak: float | None  # of the core's fp32 convolution peak, where a peak row exists
    source: str

    @property
    def flop_per_cpu_s(self) -> float:
        return self.flops / self.cpu_s


def _row_config(row: dict) -> RunConfig:
    """The config of a recorded row, composed without its data (``data.root`` is not read)."""
    overrides = tuple(o for o in row["overrides"] if not o.startswith(("data.root=", "ipc=")))
    return preset_config(row["preset"], int(row["ipc"]), overrides)


def measured_cpu_rates(path: Path = MEASURED_CPU) -> dict[tuple[str, str, tuple[int, int]], MeasuredRate]:
    """(what, arch, image size) -> the newest recorded rate of that network on a CPU core. A step
    row's real batch is what its classes held (``real_images_cached`` over ``classes_timed``, at
    most ``batch_real``); an eval row's epoch trains ``train_images`` images."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    peaks = [r["conv_fp32_gflops_per_cpu_s"] * 1e9 for r in rows if r["benchmark"] == "real_images.peak"]
    peak = peaks[-1] if peaks else None
    out = {}
    for r in rows:
        if r["benchmark"] == "real_images.step":
            cfg = _row_config(r)
            per_class = min(cfg.batch_real, r["real_images_cached"] // r["classes_timed"])
            flops, cpu_s = step_flops(cfg, per_class), r["s_per_iteration_cpu_all_classes"]
            what = "step"
        elif r["benchmark"] == "real_images.eval":
            cfg = _row_config(r)
            flops, cpu_s = eval_flops_per_image(cfg, r["arch"])[0] * r["train_images"], 1 / r["epochs_per_s_cpu"]
            what = "eval"
        else:
            continue
        size = tuple(r["image_size"])
        out[(what, r["arch"], size)] = MeasuredRate(
            what, r["arch"], size, flops, cpu_s, flops / cpu_s / peak if peak else None,
            f"measured: {r['preset']} {what} of {r['arch']} at {size[0]} px on a CPU core, {cpu_s:.1f} CPU-s "
            f"for {flops / 1e12:.2f} TFLOP counted ({MEASURED_CPU.name}, commit {r.get('commit', '?')}, "
            f"{'eager' if not r.get('compiled') else 'compiled'})")
    return out


def with_measured_fractions(cfg: RunConfig, a: dict[str, float], cpu: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The assumptions for ``cfg``: its encoder's and evaluation network's measured fractions of
    peak replace the ConvNet-3 ones (fp32; bf16 keeps the assumption: the CPUs measured here
    emulate bf16); and where each fraction came from."""
    a = dict(a)
    sources = {"condense": ASSUMPTIONS["condense_fraction_fp32"].source, "eval": ASSUMPTIONS["eval_fraction_fp32"].source}
    size = tuple(cfg.data.image_size)
    for what, arch in (("step", cfg.encoder.arch), ("eval", cfg.eval.archs[0])):
        m = cpu.get((what, arch, size))
        if m is not None and m.fraction_of_peak is not None:
            key = "condense" if what == "step" else "eval"
            a[f"{key}_fraction_fp32"] = m.fraction_of_peak
            sources[key] = f"{m.source}: {100 * m.fraction_of_peak:.1f}% of the core's fp32 convolution peak"
    return a, sources


# ---------------------------------------------------------------------------------------------
# Measured here: host-side costs and the synthetic-state copies of one step
# ---------------------------------------------------------------------------------------------

def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encoder_build_seconds(cfg: RunConfig, repeats: int = 5) -> float:
    """Seconds to build one random encoder (``engine.build_encoder``, on the CPU as the engine does
    every ``ipm`` iterations), median on this machine."""
    index = iter(range(10**6))
    spec = CondenseSpec.of(cfg)
    return median_seconds(lambda: build_encoder(spec, next(index)), repeats)


def sample_seconds_per_class(cfg: RunConfig, per_class: int, classes: int = 200, repeats: int = 5) -> float:
    """Host seconds per class per iteration of drawing the real batch (``ClassCache.sample``: a
    seeded generator and a randperm per class on the CPU), on a meta cache so that only the
    host work is timed."""
    h, w = cfg.data.image_size
    meta = torch.device("meta")
    cache = ClassCache(torch.empty(classes * per_class, cfg.data.channels, h, w, dtype=torch.uint8, device=meta),
                       {c: per_class for c in range(classes)}, meta)
    t = iter(range(10**6))
    return median_seconds(lambda: cache.sample(list(range(classes)), cfg.batch_real, cfg.seed, next(t)), repeats) / classes


def host_gather_rate(cfg: RunConfig, per_class: int, repeats: int = 5) -> float:
    """Bytes/s of gathering a real batch out of a host-memory uint8 cache (``images[idx]``, what
    ClassCache does per iteration in the host tier before the copy to the GPU), on this machine."""
    h, w = cfg.data.image_size
    images = torch.zeros(per_class, cfg.data.channels, h, w, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    batch = min(cfg.batch_real, per_class)
    seconds = median_seconds(lambda: images[torch.randperm(per_class, generator=g)[:batch]], repeats)
    return batch * images[0].numel() / seconds


class _LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode that are still alive, after each op."""

    def __init__(self):
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}
        self.live, self.trace = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                storage = o.untyped_storage()
                if storage._cdata not in self.storages:
                    self.storages[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                    self.live += storage.nbytes()
        for key in [k for k, (ref, _) in self.storages.items() if ref.expired()]:
            self.live -= self.storages.pop(key)[1]
        self.trace.append(self.live)
        return out


def state_copies(update_mode: str = "reference") -> dict[str, float]:
    """Copies of the synthetic set (S = the worker's images in fp32) a CPU step holds, measured
    with a live-storage tracker at a tiny shape (the activations are freed by then): at the
    return of ``losses_and_grad`` and at the peak of the update, images and momentum included."""
    cfg = to_run_config(compose_config("imagenet100", [
        "data.num_classes=2", "data.image_size=[16,16]", "ipc=2", "batch_real=2", "encoder.width=4",
        "compile=false", "chunk_classes=1", f"update_mode={update_mode}"]))
    classes, per_class = list(range(2)), max(cfg.batch_real, cfg.ipc * cfg.factor**2)
    h, w = cfg.data.image_size
    images = torch.randint(0, 256, (len(classes) * per_class, cfg.data.channels, h, w), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    condenser = Condenser(CondenseSpec.of(cfg), ClassCache(images, {c: per_class for c in classes}), classes)
    condenser.step()
    tracker, returned = _LiveBytes(), {}
    inner = condenser.losses_and_grad

    def marked(at, t):
        out = inner(at, t)
        returned["op"] = len(tracker.trace)
        return out

    condenser.losses_and_grad = marked
    with tracker:
        condenser.step()
    s = condenser.images.numel() * condenser.images.element_size()
    i = returned["op"]
    return {"after_gradient": 2 + tracker.trace[i - 1] / s, "update_peak": 2 + max(tracker.trace[i:]) / s}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def checkpoint_bytes(classes: int, ipc: int, pixels: int, loss_rows: int) -> int:
    """A checkpoint of ``classes``: images and momentum in fp32 (``pixels`` bytes per image) and
    the fp32 loss history (``loss_rows`` logged iterations x classes); torch.save's framing and
    the list of logged iterations (a few kB per slice) are not counted."""
    return 2 * classes * ipc * pixels + 4 * loss_rows * classes


def logged_rows(cfg: RunConfig, until: int) -> int:
    """Loss-history rows a worker holds at iteration ``until`` (engine.step_until: every
    ``log_every``-th iteration and the run's last one)."""
    return sum(1 for t in range(until) if t % cfg.log_every == 0 or t + 1 == cfg.iterations)


def driver_stops(cfg: RunConfig) -> tuple[int, int]:
    """(stops, checkpoints) of the driver's lockstep loop over a fresh run (driver._next_stop):
    it syncs every ``log_every`` iterations and at every checkpoint, and checkpoints every
    ``checkpoint_every`` iterations and at the end."""
    every, n = cfg.checkpoint_every, cfg.iterations
    stops = set(range(cfg.log_every, n, cfg.log_every)) | {n}
    checkpoints = {n}
    if every > 0:
        checkpoints |= set(range(every, n, every))
        stops |= checkpoints
    return len(stops), len(checkpoints)


def tier_of(cfg: RunConfig, nbytes: int, free: float) -> str:
    """dataset.cache_tier for a GPU worker with ``free`` bytes free: device within
    DEVICE_CACHE_FRACTION of it, else host within data.cache_gb, else stream."""
    if str(cfg.data.cache) != "auto":
        return str(cfg.data.cache)
    if nbytes <= DEVICE_CACHE_FRACTION * free:
        return "device"
    return "host" if nbytes <= float(cfg.data.cache_gb) * GiB else "stream"


def chunk_of(per_class_step: int, classes: int, free: float) -> int:
    """memory.classes_per_forward with chunk_classes=0: the most classes whose step fits in
    HEADROOM x the free memory; 0 where not even one fits (the engine then refuses to start)."""
    budget = HEADROOM * free
    return 0 if per_class_step > budget else max(1, min(classes, int(budget // per_class_step)))


def rates(a: dict[str, float]) -> dict[str, float]:
    """Assumed achieved FLOP/s: condensation and evaluation, bf16 and fp32 (TF32 convolutions)."""
    peak = {"bf16": a["bf16_peak_tflops"] * 1e12, "fp32": a["bf16_peak_tflops"] * a["tf32_to_bf16_peak"] * 1e12}
    return {f"{what}_{p}": peak[p] * a[f"{what}_fraction_{p}"] for what in ("condense", "eval") for p in ("bf16", "fp32")}


@dataclasses.dataclass
class Counted:
    """What is counted or measured once per (preset, ipc), and on this machine once per run."""

    flops: int  # one iteration, all classes
    act_per_class: int  # memory.step_bytes(CondenseSpec.of(cfg), 1)
    eval_train_flops: int  # per image
    eval_test_flops: int  # per image
    eval_act_per_image: int  # the evaluation model's module outputs for one image (memory.activation_bytes_per_image)
    here: dict  # measured on this machine: encoder_build_s, sample_s_per_class, host_gather_bytes_per_s, state_copies


def count(cfg: RunConfig, per_class: int, here: dict) -> Counted:
    arch = cfg.eval.archs[0]
    train, test = eval_flops_per_image(cfg, arch)
    kept, _ = activation_bytes_per_image(arch, cfg.data.channels, cfg.data.num_classes, cfg.data.image_size, None)
    return Counted(step_flops(cfg, per_class), step_bytes(CondenseSpec.of(cfg), 1), train, test, kept, here)


# While a chunk's forward and backward run, the worker holds its images, momentum, ``at`` (the
# images after the pre-shift) and the gradients of the chunks done so far: at most 4 copies of its
# synthetic set beside the activations (engine.step). The update's peak is measured (state_copies).
FORWARD_STATE_COPIES = 4


def memory_fields(cfg: RunConfig, most: int, per_class_train: float, c: Counted, a: dict[str, float]) -> dict:
    """GPU memory of the worker with the most classes, as the worker sets itself up: the cache
    tier is chosen on the free memory, then the Condenser puts images and momentum on the device
    and sizes its chunk on what is left (memory.classes_per_forward)."""
    h, w = cfg.data.image_size
    free0 = (a["gpu_memory_gib"] - a["cuda_context_gib"]) * GiB
    cache = int(most * per_class_train) * cfg.data.channels * h * w  # uint8
    tier = tier_of(cfg, cache, free0)
    on_device = cache if tier == "device" else 0
    state = most * cfg.ipc * pixel_bytes(cfg)  # one fp32 copy of the worker's synthetic images
    chunk = chunk_of(c.act_per_class, most, free0 - on_device - 2 * state)
    activations = chunk * c.act_per_class
    update_copies = c.here["state_copies"]["update_peak"]
    step_peak = on_device + max(FORWARD_STATE_COPIES * state + activations, update_copies * state)
    # ClassCache.from_shards concatenates the per-class parts on the device: 2x the cache for a moment.
    peak = a["cuda_context_gib"] * GiB + max(2 * on_device, step_peak)
    status = ("engine refuses (MemoryBudgetError)" if chunk == 0 else
              "over GPU memory" if peak > a["gpu_memory_gib"] * GiB else "fits")
    return {"real_images_per_class": per_class_train, "cache_bytes_per_worker": cache, "cache_tier": tier,
            "cache_gb_for_host_tier": math.ceil(cache / GiB) if tier == "stream" else None,
            "activation_bytes_per_class": c.act_per_class, "classes_per_forward": chunk, "activation_bytes": activations,
            "synthetic_set_bytes_per_worker": state, "state_peak_bytes": update_copies * state,
            "peak_bytes_estimate": peak, "memory_status": status}


def checkpoint_fields(cfg: RunConfig, workers: int, most: int, a: dict[str, float]) -> dict:
    """Checkpoint size and object-store traffic: every slice written once per checkpoint; on
    resume each worker reads every slice (RunStore.restore as committed) or only the slices
    holding its classes (the fix in progress): same worker count, its own slice."""
    pixels, rows = pixel_bytes(cfg), logged_rows(cfg, cfg.iterations)
    ckpt = checkpoint_bytes(cfg.data.num_classes, cfg.ipc, pixels, rows)
    own = checkpoint_bytes(most, cfg.ipc, pixels, rows)
    _, n_ckpt = driver_stops(cfg)
    bw = a["store_mb_per_s"] * 1e6
    return {"checkpoint_bytes": ckpt, "checkpoint_slice_bytes_max": own, "loss_history_bytes": 4 * rows * cfg.data.num_classes,
            "checkpoints_per_run": n_ckpt, "checkpoint_written_bytes_per_run": n_ckpt * ckpt,
            "resume_read_bytes_per_worker_all_slices": ckpt, "resume_read_bytes_per_worker_own_slices": own,
            "resume_read_bytes_total_all_slices": workers * ckpt, "resume_read_bytes_total_own_slices": ckpt,
            "resume_read_s_all_slices": ckpt / bw, "resume_read_s_own_slices": own / bw,
            "checkpoint_write_s": n_ckpt * own / bw}


def condense_fields(cfg: RunConfig, gpus: int, most: int, tier: str, checkpoint_write_s: float, c: Counted,
                    a: dict[str, float]) -> dict:
    """Wall time of the condensation: the slowest worker's FLOPs at the assumed rate (the driver
    steps the workers in lockstep), plus what is not FLOPs; the step ends with the losses copied
    to the host (engine.step), so the host work of one iteration does not overlap the GPU's."""
    h, w = cfg.data.image_size
    r = rates(a)
    flops_worker = c.flops * most / cfg.data.num_classes
    stops, _ = driver_stops(cfg)
    # One GPU without a Ray cluster: one in-process worker (backend auto -> local), no actor calls.
    sync_ms = 0.0 if gpus == 1 else a["sync_ms_one_node"] if gpus <= a["gpus_per_node"] else a["sync_ms_multi_node"]
    batch_bytes = most * cfg.batch_real * cfg.data.channels * h * w  # uint8 real images per iteration
    per_byte = 1 / c.here["host_gather_bytes_per_s"] + 1 / (a["host_to_device_gb_per_s"] * GB)
    host_tier_s = cfg.iterations * batch_bytes * per_byte
    overhead = {
        "sync_s": stops * sync_ms / 1e3,
        "encoder_build_s": math.ceil(cfg.iterations / cfg.ipm) * c.here["encoder_build_s"],
        "sampling_s": cfg.iterations * most * c.here["sample_s_per_class"],
        "checkpoint_write_s": checkpoint_write_s,
        "stream_decode_s": cfg.iterations * most * cfg.batch_real / a["decode_jpeg_per_s"] if tier == "stream" else 0.0,
        "host_tier_transfer_s": host_tier_s if tier == "host" else 0.0,
    }
    compute = {p: cfg.iterations * flops_worker / r[f"condense_{p}"] for p in ("bf16", "fp32")}
    return {"flops_per_iteration_slowest_worker": flops_worker, "driver_stops": stops,
            "host_tier_transfer_s_if_host": host_tier_s, "compute_s_bf16": compute["bf16"],
            "compute_s_fp32": compute["fp32"], **overhead,
            **{f"condense_s_{p}": compute[p] + sum(overhead.values()) for p in ("bf16", "fp32")}}


def eval_fields(cfg: RunConfig, gpus: int, c: Counted, a: dict[str, float]) -> dict:
    """The evaluation: eval.runs x eval.archs tasks of one GPU each (ray.eval_gpus=1; in-process one
    after another on one GPU), each training on the decoded set, of which train_and_test keeps
    only the stored images on the GPU (fp32) and decodes a mini-batch at a time, and testing every
    eval.test_every epochs and at the end."""
    C, pixels = cfg.data.num_classes, pixel_bytes(cfg)
    per_class = cfg.ipc * cfg.factor**2
    epochs = eval_epochs(cfg, per_class)
    train_images, test_images = C * per_class, int(C * a["test_per_class"])
    tests = epochs // cfg.eval.test_every + (epochs % cfg.eval.test_every != 0)
    flops = epochs * train_images * c.eval_train_flops + tests * test_images * c.eval_test_flops
    tasks = cfg.eval.runs * len(cfg.eval.archs)
    waves = math.ceil(tasks / gpus)
    decoded, stored = train_images * pixels, C * cfg.ipc * pixels
    # a batch's kept activations and image copies, by step_bytes' rule for a forward with a backward,
    # and the factor^2 tiles decoded for each of its images (decode_rows decodes whole stored images)
    batch = cfg.eval.batch_size * (c.eval_act_per_image + (6 + cfg.factor**2) * pixels)
    device = a["cuda_context_gib"] * GiB + stored + batch
    r = rates(a)
    return {"eval_arch": cfg.eval.archs[0], "eval_epochs": epochs, "eval_train_images": train_images,
            "eval_test_images": test_images, "eval_tests_per_run": tests, "eval_train_flops_per_image": c.eval_train_flops,
            "eval_test_flops_per_image": c.eval_test_flops, "eval_flops_per_run": flops, "eval_tasks": tasks,
            "eval_waves": waves, "eval_decoded_bytes": decoded, "eval_stored_bytes": stored,
            "eval_device_bytes_estimate": device,
            "eval_memory_status": "fits" if device <= a["gpu_memory_gib"] * GiB else "over GPU memory",
            **{f"eval_s_{p}": waves * flops / r[f"eval_{p}"] for p in ("bf16", "fp32")}}


def cpu_fields(cfg: RunConfig, c: Counted, cpu: dict, a: dict[str, float], fraction_sources: dict[str, str]) -> dict:
    """The condensation (all classes, ``iterations``) and one evaluation run in CPU core-hours at
    the measured rate of the same network (None where it was not measured), and the fractions of
    peak the GPU times used, with their sources."""
    size = tuple(cfg.data.image_size)
    step, epoch = cpu.get(("step", cfg.encoder.arch, size)), cpu.get(("eval", cfg.eval.archs[0], size))
    runs = eval_fields(cfg, 1, c, a)["eval_flops_per_run"]
    return {"cpu_condense_core_h": cfg.iterations * c.flops / step.flop_per_cpu_s / 3600 if step else None,
            "cpu_eval_core_h_per_run": runs / epoch.flop_per_cpu_s / 3600 if epoch else None,
            "cpu_step_gflop_per_core_s": step.flop_per_cpu_s / 1e9 if step else None,
            "cpu_eval_gflop_per_core_s": epoch.flop_per_cpu_s / 1e9 if epoch else None,
            "condense_fraction_fp32_used": a["condense_fraction_fp32"], "eval_fraction_fp32_used": a["eval_fraction_fp32"],
            "condense_fraction_source": fraction_sources["condense"], "eval_fraction_source": fraction_sources["eval"]}


def record(cfg: RunConfig, gpus: int, c: Counted, a: dict[str, float]) -> dict:
    """One (dataset, IPC, GPU count) row of the model."""
    C = cfg.data.num_classes
    splits = split_classes(C, gpus)
    workers, most = len(splits), max(len(s) for s in splits)
    per_class_train = a.get(f"{cfg.preset}_train_per_class", a["imagenet1k_train_per_class"])
    row = {"dataset": DATASETS.get(cfg.preset, cfg.preset), "preset": cfg.preset, "ipc": cfg.ipc, "gpus": gpus,
           "num_classes": C, "factor": cfg.factor, "batch_real": cfg.batch_real, "iterations": cfg.iterations,
           "encoder": cfg.encoder.arch, "image_size": list(cfg.data.image_size), "workers": workers,
           "classes_per_worker_max": most, "classes_per_worker_min": min(len(s) for s in splits),
           "flops_per_iteration": c.flops, "flops_per_iteration_per_class": c.flops / C,
           "flops_condensation": c.flops * cfg.iterations}
    row.update(memory_fields(cfg, most, per_class_train, c, a))
    row.update(checkpoint_fields(cfg, workers, most, a))
    row.update(condense_fields(cfg, gpus, most, row["cache_tier"], row["checkpoint_write_s"], c, a))
    row.update(eval_fields(cfg, gpus, c, a))
    row["total_s_bf16"] = row["condense_s_bf16"] + row["eval_s_bf16"]
    row["total_s_fp32"] = row["condense_s_fp32"] + row["eval_s_fp32"]
    return row


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

# Where every field of a record comes from (tests/test_cost_model.py checks that each has one).
SOURCES = {
    "given: the preset and the command line": [
        "dataset", "preset", "ipc", "gpus", "num_classes", "factor", "batch_real", "iterations", "encoder", "image_size",
        "eval_arch"],
    "counted: benchmarks/flops.count_flops of the engine's / the evaluation model's own code on meta tensors": [
        "flops_per_iteration", "flops_per_iteration_per_class", "flops_per_iteration_slowest_worker", "flops_condensation",
        "eval_train_flops_per_image", "eval_test_flops_per_image", "eval_flops_per_run"],
    "code: a pipeline rule applied (split_classes, cache_tier, classes_per_forward, step_bytes, the driver's "
    "schedule, eval_epochs)": [
        "workers", "classes_per_worker_max", "classes_per_worker_min", "cache_tier", "cache_gb_for_host_tier",
        "activation_bytes_per_class", "classes_per_forward", "activation_bytes", "memory_status", "driver_stops",
        "checkpoints_per_run", "eval_epochs", "eval_tests_per_run", "eval_tasks", "eval_waves", "eval_memory_status"],
    "formula: sizes from shapes": [
        "cache_bytes_per_worker", "synthetic_set_bytes_per_worker", "checkpoint_bytes", "checkpoint_slice_bytes_max",
        "loss_history_bytes", "checkpoint_written_bytes_per_run", "resume_read_bytes_per_worker_all_slices",
        "resume_read_bytes_per_worker_own_slices", "resume_read_bytes_total_all_slices",
        "resume_read_bytes_total_own_slices", "eval_decoded_bytes", "eval_stored_bytes", "eval_train_images"],
    "assumed (ASSUMPTIONS)": ["real_images_per_class", "eval_test_images"],
    "measured here (state_copies) x formula + assumed CUDA context": ["state_peak_bytes", "peak_bytes_estimate",
                                                                      "eval_device_bytes_estimate"],
    "counted FLOPs / assumed rate": ["compute_s_bf16", "compute_s_fp32", "eval_s_bf16", "eval_s_fp32"],
    "formula / assumed object-store rate": ["resume_read_s_all_slices", "resume_read_s_own_slices", "checkpoint_write_s"],
    "code (driver stops) x measured (one node) or assumed (several nodes) sync cost; 0 in-process (1 GPU)": ["sync_s"],
    "measured here (this CPU, one thread) x code (how often)": ["encoder_build_s", "sampling_s"],
    "formula / measured JPEG decode rate": ["stream_decode_s"],
    "formula / (measured host gather rate + assumed host-to-device rate)": ["host_tier_transfer_s",
                                                                           "host_tier_transfer_s_if_host"],
    "sums of the above": ["condense_s_bf16", "condense_s_fp32", "total_s_bf16", "total_s_fp32"],
    "counted FLOPs / the measured CPU rate of the same network (real_images.jsonl); None where not measured": [
        "cpu_condense_core_h", "cpu_eval_core_h_per_run", "cpu_step_gflop_per_core_s", "cpu_eval_gflop_per_core_s"],
    "measured on a CPU for the same network where real_images.jsonl has it, else assumed (the *_source field "
    "says which)": ["condense_fraction_fp32_used", "eval_fraction_fp32_used", "condense_fraction_source",
                    "eval_fraction_source"],
}


def fmt_s(seconds: float) -> str:
    """Seconds as s, min or h."""
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def tables(records: list[dict]) -> str:
    """Five Markdown tables: per dataset and IPC; memory per worker; time; object-store traffic;
    the measured CPU rates of the same networks and the core-hours they project."""
    first = {(r["preset"], r["ipc"]): r for r in records if r["gpus"] == min(x["gpus"] for x in records)}
    out = ["| dataset | IPC | TFLOP / iteration (counted) | PFLOP / 1000 it | checkpoint GB | eval epochs "
           "| decoded eval set GB | eval PFLOP / run |", "|---|---|---|---|---|---|---|---|"]
    for r in first.values():
        out.append(f"| {r['dataset']} | {r['ipc']} | {r['flops_per_iteration'] / 1e12:,.1f} | "
                   f"{r['flops_condensation'] / 1e15:,.0f} | {r['checkpoint_bytes'] / GB:,.2f} | {r['eval_epochs']} | "
                   f"{r['eval_decoded_bytes'] / GB:,.1f} | {r['eval_flops_per_run'] / 1e15:,.0f} |")
    out += ["", "| dataset | IPC | GPUs | classes / worker | cache GiB | tier | classes / forward | activations GiB "
                "| synthetic set GiB (x8 in the update) | peak GiB (est.) | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        tier = r["cache_tier"] + (f" (host with data.cache_gb={r['cache_gb_for_host_tier']})"
                                  if r["cache_gb_for_host_tier"] else "")
        out.append(f"| {r['dataset']} | {r['ipc']} | {r['gpus']} | {r['classes_per_worker_max']} | "
                   f"{r['cache_bytes_per_worker'] / GiB:,.1f} | {tier} | {r['classes_per_forward']} | "
                   f"{r['activation_bytes'] / GiB:,.1f} | {r['synthetic_set_bytes_per_worker'] / GiB:,.2f} | "
                   f"{r['peak_bytes_estimate'] / GiB:,.1f} | {r['memory_status']} |")
    out += ["", "| dataset | IPC | GPUs | condense bf16 | condense fp32 (TF32) | of which not FLOPs | eval fp32 "
                "(GPUs used) | eval GPU memory | total fp32 | resume read per worker GB (all slices / own) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        runs, evaluates = r["memory_status"] == "fits", r["eval_memory_status"] == "fits"
        busy = min(r["eval_tasks"], r["gpus"])
        cells = [fmt_s(r["condense_s_bf16"]), fmt_s(r["condense_s_fp32"]), fmt_s(overhead_s(r))] if runs else \
            [f"({fmt_s(r['condense_s_bf16'])})", f"({fmt_s(r['condense_s_fp32'])})", "does not run"]
        cells.append(f"{fmt_s(r['eval_s_fp32'])} ({busy})" if evaluates else f"({fmt_s(r['eval_s_fp32'])}) does not run")
        cells.append(f"{r['eval_device_bytes_estimate'] / GiB:,.0f} GiB")
        cells.append(fmt_s(r["total_s_fp32"]) if runs and evaluates else "-")
        out.append(f"| {r['dataset']} | {r['ipc']} | {r['gpus']} | " + " | ".join(cells) +
                   f" | {r['resume_read_bytes_per_worker_all_slices'] / GB:,.2f} / "
                   f"{r['resume_read_bytes_per_worker_own_slices'] / GB:,.2f} |")
    out += ["", "| dataset | IPC | GPUs | checkpoint GB (written twice a run) | resume read, all slices: total GB "
                "(per worker s) | resume read, own slices: total GB (per worker s) |", "|---|---|---|---|---|---|"]
    for r in records:
        out.append(f"| {r['dataset']} | {r['ipc']} | {r['gpus']} | {r['checkpoint_bytes'] / GB:,.2f} | "
                   f"{r['resume_read_bytes_total_all_slices'] / GB:,.1f} ({fmt_s(r['resume_read_s_all_slices'])}) | "
                   f"{r['resume_read_bytes_total_own_slices'] / GB:,.1f} ({fmt_s(r['resume_read_s_own_slices'])}) |")
    out += ["", "| dataset | IPC | network (encoder / eval) | measured CPU GFLOP/s per core (step / epoch) "
                "| fraction of fp32 peak used (condense / eval) | condensation, core-h on CPU | one eval run, core-h on CPU |",
            "|---|---|---|---|---|---|---|"]
    for r in first.values():
        def num(v, f):
            return "not measured" if v is None else format(v, f)
        out.append(f"| {r['dataset']} | {r['ipc']} | {r['encoder']} / {r['eval_arch']} | "
                   f"{num(r['cpu_step_gflop_per_core_s'], '.1f')} / {num(r['cpu_eval_gflop_per_core_s'], '.1f')} | "
                   f"{100 * r['condense_fraction_fp32_used']:.1f}% / {100 * r['eval_fraction_fp32_used']:.1f}% | "
                   f"{num(r['cpu_condense_core_h'], ',.0f')} | {num(r['cpu_eval_core_h_per_run'], ',.0f')} |")
    return "\n".join(out)


OVERHEADS = ("sync_s", "encoder_build_s", "sampling_s", "checkpoint_write_s", "stream_decode_s", "host_tier_transfer_s")


def overhead_s(r: dict) -> float:
    """The part of a record's condensation time that is not FLOPs / rate."""
    return sum(r[k] for k in OVERHEADS)


def parse_list(text: str, cast=str) -> list:
    return [cast(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write")
    ap.add_argument("--presets", default="imagenet100,imagenet1k")
    ap.add_argument("--ipc", default="1,10,50")
    ap.add_argument("--gpus", default="1,8,64")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help=f"change an assumption, one of: {', '.join(ASSUMPTIONS)}")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a Hydra override of every preset (e.g. data.image_size=[32,32] for a small test shape)")
    return ap.parse_args(argv)


def assumptions_with(changes: list[str]) -> dict[str, float]:
    values = {k: v.value for k, v in ASSUMPTIONS.items()}
    for change in changes:
        name, _, value = change.partition("=")
        if name not in values:
            raise SystemExit(f"--set {change}: unknown assumption; choose from {', '.join(values)}")
        values[name] = float(value)
    return values


def run_model(args: argparse.Namespace) -> dict:
    """Count, measure and model every (preset, ipc, GPU count) of ``args``; the result as written."""
    a = assumptions_with(args.set)
    presets, ipcs, gpus = parse_list(args.presets), parse_list(args.ipc, int), parse_list(args.gpus, int)
    overrides = tuple(args.override)
    start = time.perf_counter()
    base = preset_config(presets[0], ipcs[0], overrides)
    per_class_first = int(a.get(f"{presets[0]}_train_per_class", a["imagenet1k_train_per_class"]))
    measured = {"state_copies": state_copies(), "encoder_build_s": encoder_build_seconds(base),
                "sample_s_per_class": sample_seconds_per_class(base, per_class_first),
                "host_gather_bytes_per_s": host_gather_rate(base, per_class_first)}
    cpu = measured_cpu_rates()
    records = []
    for preset in presets:
        per_class = int(a.get(f"{preset}_train_per_class", a["imagenet1k_train_per_class"]))
        for ipc in ipcs:
            cfg = preset_config(preset, ipc, overrides)
            counted = count(cfg, per_class, measured)
            a_cfg, fraction_sources = with_measured_fractions(cfg, a, cpu)
            on_cpu = cpu_fields(cfg, counted, cpu, a_cfg, fraction_sources)
            records += [{**record(cfg, n, counted, a_cfg), **on_cpu} for n in gpus]
    return {
        "model": "benchmarks/cost_model.py", "commit": git_commit(), "torch": torch.__version__,
        "machine": machine(), "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1),
        "assumptions": {k: {"value": a[k], "unit": v.unit, "source": v.source} for k, v in ASSUMPTIONS.items()},
        "code_constants": {"memory.HEADROOM": HEADROOM, "dataset.DEVICE_CACHE_FRACTION": DEVICE_CACHE_FRACTION,
                           "FORWARD_STATE_COPIES": FORWARD_STATE_COPIES},
        "rates_flop_per_s": rates(a), "measured_here": measured, "sources": SOURCES,
        "measured_cpu_rates": [dataclasses.asdict(m) for m in cpu.values()],
        "overrides": list(overrides), "records": records,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray actor's torch has one thread (BENCHMARKS.md, Workers): host work is timed so
    try:
        result = run_model(args)
    finally:
        torch.set_num_threads(threads)
    result["command"] = " ".join(["python -m benchmarks.cost_model", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(tables(result["records"]))
    print(f"\n{len(result['records'])} records -> {args.out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
