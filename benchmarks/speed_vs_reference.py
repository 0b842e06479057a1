"""Iterations per second of our engine vs the released loop's structure, on identical work,
with the FLOPs of one step and this machine's measured peak beside every speed.

    python -m benchmarks.speed_vs_reference [--classes 10 --size 32 --channels 3 --ipc 10 --factor 2
                                           --batch-real 128 --iterations 3 --rounds 3 --device auto]

Every loop runs the same settings, data (random uint8 images of the given shape: timing does
not depend on content), encoders and random draws. The loops take turns in one process
(``--rounds`` rounds of ``--iterations`` steps each, after one warm-up step, and compiling,
outside the timing) and each speed is the median over rounds, so machine noise hits all of
them alike. The reference is ``tests/reference_loop.py`` (the released loop's structure).
Modes of ours: eager fp32, compiled fp32, compiled bf16 (``--modes``).

FLOPs are matmul/convolution FLOPs of one step (``benchmarks/flops.py``); the reference does
more (its backward also computes the encoder's weight gradients). "of peak" divides a loop's
achieved FLOP/s by the measured convolution peak of its precision.

Evaluation (``--eval-modes``, empty to skip): ``--eval-runs`` ConvNet-3 models trained from
scratch, one after another as the driver does, on a synthetic set of ``--ipc`` x factor^2
decoded images per class with the released recipe (DSA, CutMix, SGD), for ``--eval-epochs``
epochs per round. The baseline is eager fp32, the released evaluation's structure (IDC's
``train``: augment, CutMix, forward, backward, step per mini-batch); the other modes change
only the arithmetic (``eval.compile``, ``eval.precision``). Speeds are evaluation epochs per
second of all ``--eval-runs`` models together (median over rounds, compiling outside).

Prints a table and, as the last stdout line, one JSON object with at least ours_it_per_s,
reference_it_per_s, ratio, device, shape, flops_per_step and peaks, and eval_epochs_per_s,
eval_ratios, eval_flops_per_epoch and eval_fraction_of_peak when evaluation is timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from benchmarks.flops import count_flops, measured_peaks
from m3d_condense.pipeline.config.schema import DataConfig, EncoderConfig, EvalConfig, RunConfig
from m3d_condense.pipeline.data import ClassCache, LabeledImages
from m3d_condense.pipeline.evaluation.training import train_and_test
from m3d_condense.pipeline.method.compute import synchronize
from m3d_condense.pipeline.method.engine import Condenser
from m3d_condense.pipeline.method.spec import CondenseSpec
from tests.reference_loop import ReferenceLoop  # the test oracle (tests/), run from the repository root

MODES = {"eager": dict(compile=False), "compiled": dict(compile=True),
         "compiled_bf16": dict(compile=True, precision="bf16")}  # changes of the condensation's spec
EVAL_MODES = {"eager": dict(compile=False), "compiled": dict(compile=True), "eager_bf16": dict(precision="bf16"),
              "compiled_bf16": dict(compile=True, precision="bf16")}  # changes of its eval section


def with_eval(cfg: RunConfig, **changes) -> RunConfig:
    """``cfg`` with ``changes`` to its ``eval`` section."""
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **changes))


def random_dataset(classes: int, per_class: int, channels: int, size: int) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, channels, size, size), generator=g, dtype=torch.uint8)
    return LabeledImages(images, torch.arange(classes).repeat_interleave(per_class), [str(c) for c in range(classes)])


def timed_steps(loop, iterations: int, device: torch.device) -> float:
    """Iterations per second of ``iterations`` consecutive steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        loop.step()
    synchronize(device)
    return iterations / (time.perf_counter() - start)


def compare(loops: dict, iterations: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median it/s of each loop over ``rounds`` turns, after one warm-up step each (which also
    compiles: a compiled loop's second step compiles its backward, so two warm-ups)."""
    for loop in loops.values():
        loop.step()
        loop.step()
    speeds = {name: [] for name in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            speeds[name].append(timed_steps(loop, iterations, device))
    return {name: statistics.median(v) for name, v in speeds.items()}


class EvalLoop:
    """``runs`` evaluations of ``arch`` (train from scratch, test once at the end), each with a
    new seed, per ``step``, as the driver runs them one after another."""

    def __init__(self, settings: RunConfig, images: torch.Tensor, labels: torch.Tensor, test: LabeledImages,
                 runs: int, device: torch.device, arch: str = "convnet3"):
        self.s, self.images, self.labels, self.test, self.runs, self.device = settings, images, labels, test, runs, device
        self.arch, self.seed = arch, 0

    def step(self) -> None:
        for _ in range(self.runs):
            self.seed += 1
            train_and_test(self.images, self.labels, self.test, self.arch, self.s, self.seed, self.device)


def eval_comparison(args, cfg: RunConfig, device: torch.device, modes: list[str]) -> dict:
    """Epochs/s of each evaluation mode (all runs together), their ratios to eager fp32, and
    the FLOPs of one training epoch of one model, on the dataset of ``cfg``."""
    n = args.ipc * args.factor**2
    g = torch.Generator().manual_seed(1)
    images = torch.rand(args.classes * n, args.channels, args.size, args.size, generator=g)
    labels = torch.arange(args.classes).repeat_interleave(n)
    test = random_dataset(args.classes, 1, args.channels, args.size)  # the timing is training's: a token test set
    base = dataclasses.replace(cfg, eval=EvalConfig(epochs=args.eval_epochs, test_every=10**9, compile=False))
    loops = {m: EvalLoop(with_eval(base, **EVAL_MODES[m]), images, labels, test, args.eval_runs, device)
             for m in ["eager", *[m for m in modes if m != "eager"]]}
    rates = compare(loops, 1, args.rounds, device)  # rounds of one step = runs x eval_epochs epochs
    epochs_per_s = {m: r * args.eval_epochs for m, r in rates.items()}
    one_epoch = with_eval(base, epochs=1)
    flops = count_flops(lambda: train_and_test(images, labels, test, "convnet3", one_epoch, 0, device))
    return {"eval_epochs_per_s": epochs_per_s, "eval_ratios": {m: v / epochs_per_s["eager"] for m, v in epochs_per_s.items()},
            "eval_flops_per_epoch": flops * args.eval_runs, "eval_runs": args.eval_runs, "eval_epochs": args.eval_epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--batch-real", type=int, default=128)
    ap.add_argument("--encoder", default="convnet3")
    ap.add_argument("--iterations", type=int, default=3, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-classes", type=int, default=0, help="ours: classes per forward (0: auto-tuned)")
    ap.add_argument("--modes", default="eager,compiled,compiled_bf16", help=f"modes of ours, from {sorted(MODES)}")
    ap.add_argument("--eval-modes", default="eager,compiled,eager_bf16,compiled_bf16",
                    help=f"evaluation modes, from {sorted(EVAL_MODES)} (eager fp32 is the baseline; empty: skip)")
    ap.add_argument("--eval-runs", type=int, default=3, help="models per evaluation (eval.runs)")
    ap.add_argument("--eval-epochs", type=int, default=2, help="epochs per model per timed round")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="time per peak measurement (0: skip peaks)")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    real = random_dataset(args.classes, max(args.batch_real, args.ipc * args.factor**2) + 8, args.channels, args.size)
    data = DataConfig(num_classes=args.classes, channels=args.channels, image_size=[args.size, args.size],
                      mean=[0.5] * args.channels, std=[0.25] * args.channels)
    s = RunConfig(ipc=args.ipc, factor=args.factor, batch_real=args.batch_real, compile=False,
                  chunk_classes=args.chunk_classes, encoder=EncoderConfig(arch=args.encoder), data=data)
    classes = list(range(args.classes))
    cache = ClassCache.from_labeled(real, classes, device)
    modes = [m for m in args.modes.split(",") if m]
    eval_modes = [m for m in args.eval_modes.split(",") if m]
    for given, valid in ((modes, MODES), (eval_modes, EVAL_MODES)):
        if set(given) - set(valid):
            ap.error(f"unknown modes {sorted(set(given) - set(valid))}; choose from {sorted(valid)}")
    spec = CondenseSpec.of(s)
    settings = {m: dataclasses.replace(spec, **MODES[m]) for m in modes}
    loops = {"reference": ReferenceLoop(spec, cache, classes, device),
             **{m: Condenser(settings[m], cache, classes, device) for m in modes}}
    speeds = compare(loops, args.iterations, args.rounds, device)
    flops = {"reference": count_flops(ReferenceLoop(spec, cache, classes, device).step),
             "ours": count_flops(Condenser(dataclasses.replace(spec, compile=False), cache, classes, device).step)}
    peaks = measured_peaks(device, args.peak_seconds) if args.peak_seconds > 0 else {}
    ref = speeds["reference"]

    def of_peak(name: str) -> float | None:
        precision = "bf16" if settings.get(name) and settings[name].precision == "bf16" else "fp32"
        peak = peaks.get(f"conv_{precision}_gflops")
        work = flops["reference" if name == "reference" else "ours"]
        return speeds[name] * work / 1e9 / peak if peak else None

    shape = f"{args.classes} classes x {args.channels}x{args.size}x{args.size}, ipc {args.ipc}, factor {args.factor}, " \
            f"real batch {args.batch_real}, {args.encoder}"
    chunks = {m: loops[m].chunk for m in modes}
    print(f"{shape} on {device} (torch threads: {torch.get_num_threads()}; median of {args.rounds} rounds of "
          f"{args.iterations} steps; classes per forward {chunks})")
    print(f"FLOPs per step: ours {flops['ours'] / 1e9:.1f} G, reference {flops['reference'] / 1e9:.1f} G; peaks (GFLOP/s): "
          + ", ".join(f"{k.removesuffix('_gflops')} {v:.0f}" for k, v in peaks.items()))
    for name in ["reference", *modes]:
        frac = of_peak(name)
        print(f"{name:15s} {speeds[name]:8.3f} it/s  {speeds[name] / ref:5.2f}x  "
              + (f"{100 * frac:5.1f}% of peak" if frac is not None else ""))
    ev = eval_comparison(args, s, device, eval_modes) if eval_modes else {}
    if ev:
        model_epoch_gflop = ev["eval_flops_per_epoch"] / args.eval_runs / 1e9
        ev["eval_fraction_of_peak"] = {
            m: v * model_epoch_gflop / peaks[f"conv_{EVAL_MODES[m].get('precision', 'fp32')}_gflops"]
            for m, v in ev["eval_epochs_per_s"].items()} if peaks else {}
        print(f"evaluation: {args.eval_runs} x convnet3 on {args.classes} x {args.ipc * args.factor**2} images, "
              f"{model_epoch_gflop:.1f} GFLOP per model-epoch")
        for m, v in ev["eval_epochs_per_s"].items():
            frac = ev["eval_fraction_of_peak"].get(m)
            print(f"eval {m:15s} {v:8.3f} epochs/s  {ev['eval_ratios'][m]:5.2f}x  "
                  + (f"{100 * frac:5.1f}% of peak" if frac is not None else ""))
    best = max(modes, key=lambda m: speeds[m]) if modes else "reference"
    print(json.dumps({**ev, "ours_it_per_s": speeds[best], "reference_it_per_s": ref, "ratio": speeds[best] / ref,
                      "best_mode": best, "it_per_s": speeds, "ratios": {m: speeds[m] / ref for m in modes},
                      "fraction_of_peak": {n: of_peak(n) for n in speeds}, "flops_per_step": flops, "peaks": peaks,
                      "chunk_classes": chunks, "device": str(device), "shape": shape, "iterations": args.iterations,
                      "rounds": args.rounds, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
