"""Experiment tracking of a run, off by default (``tracking.*``): TensorBoard event files and/or
an MLflow run, fed from the records the run directory already holds: summary.json's loss curve
and evaluation records, the evaluation curves curves.png plots, and grid.png.

Both backends are optional extras (``pip install "m3d-condense[tracking]"``), imported only when
switched on. ``check_tracking`` runs at the start of a run, so a missing package or a store with
no place to go fails before condensation, not after hours of it; ``track_run`` runs once at the
end, after summary.json and grid.png are written.

A run directory logged again (``reevaluate=true``) replaces its records, so the loss curve is not
shown twice: its old TensorBoard event files are removed, and its earlier MLflow runs (those
tagged with its run directory) are marked deleted (MLflow keeps them restorable until
``mlflow gc``).

TensorBoard: RUN_DIR/tensorboard/. SummaryWriter writes local files only (s3 would need extra
packages), so the event files are written to a local temporary folder, then copied next to the
run's other outputs, wherever the run directory is.

MLflow: a local file store, RUN_DIR/mlruns (no server), unless ``tracking.mlflow_uri`` names
another store. MLflow 3 keeps the file store in maintenance mode and refuses to open one unless
MLFLOW_ALLOW_FILE_STORE=true; its replacement, sqlite, needs SQLAlchemy, which mlflow-skinny does
not install. So this module sets that variable while it logs (unless the user set it) and
removes it again; whoever reads the store back needs it too
(``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file:RUN_DIR/mlruns``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from fsspec.implementations.local import LocalFileSystem

from m3d_condense.pipeline.config.loader import to_dict
from m3d_condense.pipeline.config.schema import RunConfig, dotted
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError

if TYPE_CHECKING:
    import numpy as np

INSTALL = 'pip install "m3d-condense[tracking]"'
ARTIFACTS = ("summary.json", "config.yaml", "grid.png")  # logged to MLflow, read from the run directory
# summary.json's run-level numbers, logged as summary/<key> (absent or None: skipped)
RUN_SCALARS = ("final_loss", "condense_seconds", "condense_it_per_s", "sync_overhead_s", "checkpoint_bytes",
               "resume_read_bytes", "worker_restarts", "train_images", "driver_peak_bytes")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
EVENT_FILES = "events.out.tfevents."  # how SummaryWriter's files are named
RUN_DIR_TAG = "m3d.run_dir"  # the MLflow tag naming the run directory a run was logged from


class TrackingError(RunError):
    """Tracking is switched on but cannot work: its package is missing, or its store has no place."""


class Scalar(NamedTuple):
    """One logged number: TensorBoard's tag and global step, MLflow's metric key and step."""

    tag: str
    value: float
    step: int


# checks, before the run's expensive work -----------------------------------------------------
def check_tracking(cfg: RunConfig) -> None:
    """Raise TrackingError, naming the key, if a switched-on backend could not log at the end of
    the run: its package is not importable, or MLflow has no store to write to. Imports nothing
    when tracking is off."""
    if cfg.tracking.tensorboard:
        _summary_writer_class()
    if cfg.tracking.mlflow:
        _mlflow_client_class()
        _check_store_driver(mlflow_uri(cfg, storage.join(cfg.out_dir, cfg.run_name)))


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's module imports tensorboard at once
        raise TrackingError(f"tracking.tensorboard=true needs the tensorboard package: {INSTALL} ({e})") from e
    return SummaryWriter


def _mlflow_client_class() -> type:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise TrackingError(f"tracking.mlflow=true needs the mlflow package: {INSTALL} ({e})") from e
    return MlflowClient


def _check_store_driver(uri: str) -> None:
    """A database store (sqlite:///mlflow.db) needs SQLAlchemy, which mlflow-skinny lacks: MLflow
    would only say "unsupported URI" when the run is over."""
    from mlflow.store.db.db_types import DATABASE_ENGINES

    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme in DATABASE_ENGINES and importlib.util.find_spec("sqlalchemy") is None:
        raise TrackingError(f"tracking.mlflow_uri={uri} is a database store, which needs SQLAlchemy: "
                            "pip install mlflow (or sqlalchemy), or leave tracking.mlflow_uri unset for a file store")


def mlflow_uri(cfg: RunConfig, run_url: str) -> str:
    """``tracking.mlflow_uri``, else the file store RUN_DIR/mlruns (a local run directory only:
    MLflow's file store cannot live on an object store)."""
    if cfg.tracking.mlflow_uri:
        return cfg.tracking.mlflow_uri
    local = _local_path(run_url)
    if local is None:
        raise TrackingError(f"tracking.mlflow=true: the default store RUN_DIR/mlruns needs a local run directory, "
                            f"not {run_url}; set tracking.mlflow_uri (an MLflow server http://..., or file:/a/local/path)")
    return Path(local, "mlruns").absolute().as_uri()


def _local_path(url: str) -> str | None:
    """The path of ``url`` on this machine's disk, None for a remote store (s3://, gs://, ...)."""
    fs, path = storage.filesystem(url)
    return path if isinstance(fs, LocalFileSystem) else None


# the records -----------------------------------------------------------------------------------
def track_run(cfg: RunConfig, run_url: str, summary: dict, eval_curves: dict) -> list[str]:
    """Log the finished run at ``run_url`` to the backends ``cfg.tracking`` switches on: the
    condensation loss and evaluation curves, summary.json's final numbers and grid.png. Returns
    one line per backend saying what it wrote (nothing when tracking is off)."""
    if not (cfg.tracking.tensorboard or cfg.tracking.mlflow):
        return []
    scalars = collect_scalars(summary, eval_curves)
    written = []
    if cfg.tracking.tensorboard:
        written.append(write_tensorboard(run_url, scalars))
    if cfg.tracking.mlflow:
        written.append(log_mlflow(cfg, run_url, scalars))
    return written


def collect_scalars(summary: dict, eval_curves: dict) -> list[Scalar]:
    """Every number to log, from summary.json's records and the evaluation curves:
    condense/mmd2 per recorded iteration, eval/ARCH/runK/test_accuracy per tested epoch, and the
    final numbers (summary/KEY, eval/ARCH/KEY at the evaluation's last epoch, moments/SET/ORDER)."""
    return [*_loss_scalars(summary), *_curve_scalars(eval_curves), *_eval_scalars(summary), *_run_scalars(summary)]


def _loss_scalars(summary: dict) -> list[Scalar]:
    """summary.json's loss_curve: [iteration, mean per-class MMD^2] (empty for the baselines)."""
    return [Scalar("condense/mmd2", float(v), int(t)) for t, v in summary.get("loss_curve") or []]


def _curve_scalars(eval_curves: dict) -> list[Scalar]:
    """{arch: [one curve per run, each [(epoch, test accuracy)]]}; runs counted from 0, as curves.png."""
    return [Scalar(f"eval/{arch}/run{k}/test_accuracy", float(acc), int(epoch))
            for arch, runs in eval_curves.items() for k, curve in enumerate(runs) for epoch, acc in curve]


def _eval_scalars(summary: dict) -> list[Scalar]:
    """The numbers of summary.json's evaluation records (accuracy_mean, accuracy_std, ...),
    absent when eval.runs=0."""
    return [Scalar(f"eval/{rec['arch']}/{key}", float(v), int(rec["epochs"]))
            for rec in summary.get("evals") or [] for key, v in rec.items() if key != "epochs" and _is_number(v)]


def _run_scalars(summary: dict) -> list[Scalar]:
    run = [Scalar(f"summary/{key}", float(summary[key]), 0) for key in RUN_SCALARS if _is_number(summary.get(key))]
    moments = [Scalar(f"moments/{name}/{order}", float(v), 0)
               for name, gaps in (summary.get("moments") or {}).items() for order, v in gaps.items() if _is_number(v)]
    return run + moments


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# TensorBoard -----------------------------------------------------------------------------------
def write_tensorboard(run_url: str, scalars: list[Scalar]) -> str:
    """Event files in RUN_DIR/tensorboard: the scalars and grid.png as an image. SummaryWriter
    writes local files, so they are written to a temporary folder and then copied there (a run
    directory may be remote); the event files of an earlier log are removed after the copy, so a
    failed log leaves the earlier one in place."""
    summary_writer = _summary_writer_class()
    target = storage.join(run_url, "tensorboard")
    names = (url.rsplit("/", 1)[-1] for url in storage.list_files(target, ""))
    earlier = {name for name in names if name.startswith(EVENT_FILES)}
    with tempfile.TemporaryDirectory(prefix="m3d-tensorboard-") as folder:
        writer = summary_writer(log_dir=folder)
        try:
            for s in scalars:
                writer.add_scalar(s.tag, s.value, global_step=s.step)
            writer.add_image("synthetic/grid", grid_pixels(run_url), global_step=0, dataformats="HWC")
        finally:
            writer.close()
        written = _upload_folder(folder, target)
    for name in earlier - written:
        storage.remove(storage.join(target, name))
    return f"TensorBoard: {len(scalars)} scalars and grid.png in {target}"


def grid_pixels(run_url: str) -> np.ndarray:
    """RUN_DIR/grid.png as an (H, W, 3) uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(storage.join(run_url, "grid.png")))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _upload_folder(folder: str, url: str) -> set[str]:
    """Copy every file under ``folder`` to the same place under ``url``; returns their relative paths."""
    names = set()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        storage.write_bytes_atomic(storage.join(url, name), path.read_bytes())
        names.add(name)
    return names


# MLflow ----------------------------------------------------------------------------------------
def log_mlflow(cfg: RunConfig, run_url: str, scalars: list[Scalar]) -> str:
    """One MLflow run named ``run_name`` in experiment ``tracking.experiment`` (default: the
    preset), replacing the run directory's earlier ones: the config as params, the scalars as
    metrics, summary.json, config.yaml and grid.png as artifacts. Uses a client bound to the
    store's URI: the caller's MLflow state is untouched."""
    uri = mlflow_uri(cfg, run_url)
    experiment = cfg.tracking.experiment or cfg.preset
    with _file_store_allowed():
        client = _mlflow_client_class()(tracking_uri=uri)
        experiment_id = _experiment_id(client, experiment)
        earlier = _runs_logged_from(client, experiment_id, run_url)
        run_id = client.create_run(experiment_id, run_name=cfg.run_name, tags={RUN_DIR_TAG: run_url}).info.run_id
        try:
            _log_records(client, run_id, cfg, run_url, scalars)
        except BaseException:
            client.set_terminated(run_id, "FAILED")  # a half-logged run must not look complete
            raise
        client.set_terminated(run_id, "FINISHED")
        for old in earlier:  # only once the new run is complete: a failed log keeps the old one
            client.delete_run(old)
    replaced = f", replacing {len(earlier)} earlier" if earlier else ""
    return f"MLflow: run {run_id} in experiment {experiment!r} at {uri}{replaced}"


def _runs_logged_from(client: Any, experiment_id: str, run_url: str) -> list[str]:
    """The ids of the active runs of the experiment tagged with the run directory ``run_url``."""
    quote = '"' if "'" in run_url else "'"  # MLflow's filter strings take either quote, no escapes
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = {quote}{run_url}{quote}")
    return [r.info.run_id for r in runs]


@contextlib.contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE=true (see the module's
    docstring). Set while logging, unless the user set it either way; removed afterwards."""
    if ALLOW_FILE_STORE in os.environ:
        yield
        return
    os.environ[ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        os.environ.pop(ALLOW_FILE_STORE, None)


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def _log_records(client: Any, run_id: str, cfg: RunConfig, run_url: str, scalars: list[Scalar]) -> None:
    from mlflow.entities import Metric, Param

    now_ms = int(time.time() * 1000)
    metrics = [Metric(s.tag, s.value, now_ms, s.step) for s in scalars]
    params = [Param(k, v) for k, v in flatten_params(to_dict(cfg)).items()]
    client.log_batch(run_id, metrics=metrics, params=params)  # the client splits it into MLflow's batch limits
    with tempfile.TemporaryDirectory(prefix="m3d-mlflow-") as folder:
        for name in ARTIFACTS:  # read through storage: the run directory may be remote
            Path(folder, name).write_bytes(storage.read_bytes(storage.join(run_url, name)))
        client.log_artifacts(run_id, folder)


def flatten_params(tree: dict) -> dict[str, str]:
    """The config as MLflow params: dotted keys (``eval.epochs``, as on the command line; all far
    below MLflow's 250 characters), values as strings, non-strings as JSON ([32, 32], true, null),
    cut to MLflow's 6000 characters."""
    texts = {key: value if isinstance(value, str) else json.dumps(value) for key, value in dotted(tree).items()}
    return {key: text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."
            for key, text in texts.items()}
