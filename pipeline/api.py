"""The library API: condense any dataset from Python, and evaluate any training set under our
protocol. Both run exactly what the command line runs (``pipeline/orchestration/driver.py``).

    from m3d_condense import condense, evaluate
    syn = condense(train_dataset, ipc=10, test_dataset=test_dataset, iterations=1000)
    records = evaluate(syn, test_dataset, runs=3)

Keyword overrides are the command line's ``key=value`` pairs; a section takes a dict:
``condense(ds, ipc=10, lr=10, eval={"runs": 2, "epochs": 300}, workers=4)``.
"""
from __future__ import annotations

import hashlib
import multiprocessing
from typing import Any

import numpy as np

from m3d_condense.pipeline.config.loader import hydra_overrides, load_config, training_config
from m3d_condense.pipeline.config.schema import ConfigError
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.arrays import dataset_arrays, labeled_split
from m3d_condense.pipeline.data.manifest import FILENAME
from m3d_condense.pipeline.data.sources import arrays_source
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.logs import log, setup_logging
from m3d_condense.pipeline.method.compute import pick_device
from m3d_condense.pipeline.orchestration.driver import run_evaluations, run_pipeline
from m3d_condense.pipeline.results.synthetic import SyntheticSet, is_stored


def condense(dataset: Any, ipc: int = 10, *, test_dataset: Any = None, preset: str = "custom",
             class_names: list[str] | None = None, out_dir: str = "runs", run_name: str | None = None,
             progress: bool = True, **overrides: Any) -> SyntheticSet:
    """Condense ``dataset`` to ``ipc`` stored images per class; returns the run's ``SyntheticSet``.

    ``dataset`` (and ``test_dataset``): a map-style dataset of (image, label), a Hugging Face
    dataset, ``(x uint8 (N, H, W, C), y)`` arrays, or a local folder ``pipeline/prepare.py`` reads
    (``pipeline/data/arrays.py``). It is written once as shards under
    ``OUT_DIR/datasets/<content hash>/``; image size, channels, classes and the normalisation
    (mean and std measured on it) come from there unless ``data={...}`` gives them. The run goes
    to ``OUT_DIR/RUN_NAME`` (default: ``<preset>_<hash>_<method>_<kernel>_ipc<ipc>_s<seed>``), so
    calling again with the same data and settings resumes or returns the finished set, as the
    command line does. Without ``test_dataset`` nothing is evaluated (``eval.runs=0``); with
    one, summary.json holds the evaluation. ``workers`` > 1 runs on Ray."""
    setup_logging()
    refuse_in_spawned_child("condense")
    x, y, names = dataset_arrays(dataset, class_names, progress)
    splits = {"train": (x, y)}
    if test_dataset is not None:
        splits["test"] = dataset_arrays(test_dataset, names, progress)[:2]
    digest = content_hash(splits, names)
    root = prepared_root(splits, names, storage.join(out_dir, "datasets", digest))
    args = [f"data.root={root}", f"ipc={ipc}", f"out_dir={out_dir}",
            f"run_name={run_name or preset + '_' + digest + '_${method}_${kernel}_ipc${ipc}_s${seed}'}"]
    flat = hydra_overrides(overrides)
    if test_dataset is None:
        if any(o.startswith("eval.runs=") and o != "eval.runs=0" for o in flat):
            raise ConfigError("eval.runs > 0 needs test_dataset: the evaluation tests on it")
        args.append("eval.runs=0")
    cfg = load_config(preset, [*args, *flat])
    run_pipeline(cfg, progress=progress)
    return SyntheticSet.load(storage.join(cfg.out_dir, cfg.run_name))


def evaluate(train: Any, test: Any, *, preset: str = "custom", archs: list[str] | None = None,
             runs: int | None = None, epochs: int | None = None, device: str = "auto", seed: int = 0,
             progress: bool = True, **overrides: Any) -> list[dict]:
    """Train networks from scratch on ``train`` and test them on ``test``, with the evaluation
    protocol of ``preset`` (README, "Evaluation"); returns one record per architecture, as
    summary.json's ``evals`` (``accuracy_mean``, ``accuracy_std``, ``runs``, ...; fractions).

    ``train``: a ``SyntheticSet``, a run directory, a prepared data root or a local folder (its
    train split), or any dataset ``condense`` accepts (real images, e.g. another method's set or
    a coreset). ``test``: a prepared data root or local folder (its test split) or any dataset.
    Normalisation: the preset's mean and std, else those a condensed set carries (its real
    training data's), else those measured on ``test``."""
    setup_logging()
    refuse_in_spawned_child("evaluate")
    test_images = labeled_split(test, "test")
    train_set = training_set(train, test_images.class_names)
    if len(train_set.class_names) != len(test_images.class_names):
        raise ConfigError(f"the training set has {len(train_set.class_names)} classes, the test set "
                          f"{len(test_images.class_names)}")
    shapes = ["x".join(map(str, s.images.shape[1:])) for s in (train_set, test_images)]
    if shapes[0] != shapes[1]:  # else the network fails deep inside, naming neither set
        raise ConfigError(f"the training images are {shapes[0]}, the test images {shapes[1]} (channels x height "
                          "x width): prepare both at one size and channel count")

    def test_stats() -> dict:
        pixels = test_images.images.float().div_(255.0)
        return {"mean": pixels.mean(dim=(0, 2, 3)).tolist(), "std": pixels.std(dim=(0, 2, 3)).tolist()}

    evals = {k: v for k, v in (("archs", archs), ("runs", runs), ("epochs", epochs)) if v is not None}
    args = hydra_overrides({"seed": seed, "device": device, "eval": evals}) + hydra_overrides(overrides)
    cfg = training_config(preset, train_set, args, fallback_stats=test_stats)
    evals, _ = run_evaluations(cfg, train_set, "local", pick_device(cfg.device), progress, test=test_images)
    return evals


# ---------------------------------------------------------------------------------------------
def refuse_in_spawned_child(name: str) -> None:
    """Stop a call made while a process the pipeline spawned (shard decoding) re-imports the user's
    script: without an ``if __name__ == "__main__":`` guard the script's top level, this call
    included, runs again there. Fails at once with the fix instead of repeating the work."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # the flag Python's own check reads
        raise RunError(f"{name}() was called at the top level of a script that a worker process re-imports; put the "
                       "call under `if __name__ == \"__main__\":`")


def content_hash(splits: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str]) -> str:
    """12 hex digits of sha256 over the images, labels and class names: the dataset's identity."""
    h = hashlib.sha256(repr(names).encode())
    for split in sorted(splits):
        x, y = splits[split]
        h.update(f"{split}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).data)
        h.update(np.ascontiguousarray(y, dtype=np.int64).data)
    return h.hexdigest()[:12]


def prepared_root(splits: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], root: str) -> str:
    """``root`` holding ``splits`` as shards and manifest; written once (the path is the content's
    hash, and the manifest is written last, so an existing manifest means a complete copy)."""
    if not storage.exists(storage.join(root, FILENAME)):
        log.info(f"writing the dataset ({', '.join(f'{k} {len(v[1])}' for k, v in splits.items())} images) to {root}")
        prepare(arrays_source(splits, names, "dataset"), root, PrepareOptions(progress=False, image_format="png"),
                log=lambda m: None)
    return root


def training_set(train: Any, class_names: list[str]) -> SyntheticSet:
    """``train`` as a SyntheticSet: a condensed set as it is, real images with factor 1."""
    if isinstance(train, SyntheticSet) or (isinstance(train, str) and is_stored(train)):
        return SyntheticSet.of(train)
    real = labeled_split(train, "train", None if isinstance(train, str) else class_names)
    return SyntheticSet(real.images.float().div_(255.0), real.labels.long(), 1, list(real.class_names))
