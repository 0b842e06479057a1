"""``python pipeline/run.py PRESET [key=value ...]``: condense, evaluate, write the run directory."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from models import decode
from pipeline import outputs
from pipeline.baselines import random_real
from pipeline.config import ConfigError, list_presets, load_config, validate
from pipeline.data import ManifestError, ShardError, StorageError, load_split, open_class_pool
from pipeline.data.loading import resolve_dataset
from pipeline.engine import Condenser, EngineSettings, condense
from pipeline.evaluate import EvalSettings, train_and_test
from pipeline.seeding import derive_seed

USAGE = """usage: python pipeline/run.py PRESET [key=value ...]

PRESET is one of: {presets}
Everything after it is a Hydra override, e.g. ipc=10 kernel=linear iterations=500 eval.runs=0.
Outputs go to OUT_DIR/RUN_NAME (defaults: runs/<preset>_<method>_<kernel>_ipc<ipc>_s<seed>)."""


def log(msg: str) -> None:
    print(f"[m3d] {msg}", file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def summarize_eval(arch: str, epochs: int, results) -> dict:
    accs = [r.accuracy for r in results]
    best = [r.best_accuracy for r in results]
    return {"arch": arch, "epochs": epochs, "runs": accs, "seeds": [r.seed for r in results],
            "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs),
            "best_epoch_accuracy_mean": statistics.fmean(best),  # selected on the test set, as the reference reports
            "seconds": [r.seconds for r in results]}


def run(cfg: DictConfig, progress: bool = True) -> dict:
    """Execute one configured run; returns the summary that is also written to summary.json."""
    device = resolve_device(cfg.device)
    resolve_dataset(cfg)  # a prepared dataset's manifest fills or checks the data.* keys
    validate(cfg)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    outputs.write_config(run_dir / "config.yaml", cfg)
    log(f"{cfg.preset}: method={cfg.method} kernel={cfg.kernel} ipc={cfg.ipc} factor={cfg.factor} "
        f"device={device} -> {run_dir}")

    classes = list(range(cfg.data.num_classes))
    pool = open_class_pool(cfg.data, classes, device, log=log, progress=progress)
    names = pool.class_names
    start = time.perf_counter()
    history: list = []
    if cfg.method == "m3d":
        condenser = Condenser(EngineSettings.from_config(cfg), pool, classes, device)
        history = condense(condenser, cfg.iterations, cfg.log_every, progress=progress)
        stored, labels, factor = condenser.images, condenser.labels, cfg.factor
    else:  # random real images: the selection baseline, stored without multi-formation
        stored, labels = random_real(pool, classes, cfg.ipc, cfg.seed)
        factor = 1
    condense_seconds = time.perf_counter() - start
    del pool
    outputs.save_synthetic(run_dir / "synthetic.pt", stored, labels, factor, names)
    images, labels = decode(stored, factor), labels.repeat_interleave(factor * factor)
    outputs.plot_grid(run_dir / "grid.png", images, labels, names)

    summary = {"preset": cfg.preset, "method": cfg.method, "ipc": cfg.ipc, "factor": factor, "kernel": cfg.kernel,
               "estimator": cfg.estimator, "update_mode": cfg.update_mode,
               "iterations": cfg.iterations if cfg.method == "m3d" else 0,
               "seed": cfg.seed, "device": str(device), "condense_seconds": condense_seconds,
               "final_loss": float(torch.tensor(history[-1][1]).mean()) if history else None,
               "loss_curve": [[t, sum(v) / len(v)] for t, v in history]}
    curves: dict = {}
    if cfg.eval.runs > 0:
        test = load_split(cfg.data, "test")
        settings = EvalSettings.from_config(cfg)
        evals = []
        for arch in cfg.eval.archs:
            results = []
            for r in range(cfg.eval.runs):
                res = train_and_test(images, labels, test, arch, settings, derive_seed(cfg.seed, "eval-run", r),
                                     device, progress=progress)
                log(f"eval {arch} run {r + 1}/{cfg.eval.runs}: last-epoch accuracy {100 * res.accuracy:.2f}% "
                    f"({res.seconds:.0f}s)")
                results.append(res)
            curves[arch] = [r.curve for r in results]
            evals.append(summarize_eval(arch, cfg.eval.epochs, results))
        summary["eval"], summary["evals"] = evals[0], evals
        e = evals[0]
        log(f"{e['arch']}: {100 * e['accuracy_mean']:.2f} ± {100 * e['accuracy_std']:.2f}% "
            f"(last epoch, {cfg.eval.runs} runs)")
    outputs.plot_curves(run_dir / "curves.png", history, curves)
    outputs.write_json(run_dir / "summary.json", summary)
    log(f"wrote {run_dir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = USAGE.format(presets=", ".join(list_presets()))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
        run(cfg)
    except (ConfigError, ManifestError, ShardError, StorageError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
