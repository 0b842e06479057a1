"""Experiment tracking (``tracking.*``, pipeline/results/tracking.py): real runs, their TensorBoard event
files and MLflow store read back with the backends' own readers and compared to summary.json."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.results.tracking import TrackingError, check_tracking, track_run

TINY = ["iterations=4", "log_every=1", "eval.runs=1", "eval.epochs=2", "eval.test_every=1", "encoder.width=16",
        "batch_real=16", "backend=local", "diagnostics.encoders=1", "diagnostics.real_per_class=32"]
ALLOW = "MLFLOW_ALLOW_FILE_STORE"  # MLflow 3 opens a file store only with it (pipeline/results/tracking.py)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One digits run with both backends on: (run directory, its summary.json)."""
    out = tmp_path_factory.mktemp("tracked")
    env_before = os.environ.get(ALLOW)
    assert main(["digits", f"out_dir={out}", "run_name=t", *TINY, "tracking.tensorboard=true",
                 "tracking.mlflow=true"]) == 0
    assert os.environ.get(ALLOW) == env_before  # the opt-in was only set while logging
    run_dir = out / "t"
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def test_tensorboard_holds_the_loss_curve_the_eval_curves_and_the_grid(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, summary = tracked
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    loss = events.Scalars("condense/mmd2")
    assert len(summary["loss_curve"]) == 4
    assert [e.step for e in loss] == [t for t, _ in summary["loss_curve"]]
    assert [e.value for e in loss] == pytest.approx([v for _, v in summary["loss_curve"]], rel=1e-6)
    curve = events.Scalars("eval/convnet3/run0/test_accuracy")
    assert [e.step for e in curve] == [1, 2]  # the tested epochs
    assert curve[-1].value == pytest.approx(summary["evals"][0]["runs"][0], rel=1e-6)  # the last-epoch accuracy
    mean = events.Scalars("eval/convnet3/accuracy_mean")
    assert [(e.step, e.value) for e in mean] == [(2, pytest.approx(summary["evals"][0]["accuracy_mean"], rel=1e-6))]
    assert events.Scalars("summary/final_loss")[0].value == pytest.approx(summary["final_loss"], rel=1e-6)
    moment = events.Scalars("moments/synthetic/variance")[0].value
    assert moment == pytest.approx(summary["moments"]["synthetic"]["variance"], rel=1e-6)
    images = events.Images("synthetic/grid")
    with Image.open(run_dir / "grid.png") as grid:
        assert [(i.width, i.height) for i in images] == [grid.size]


def test_mlflow_run_holds_the_loss_curve_the_config_and_the_artifacts(tracked, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, summary = tracked
    monkeypatch.setenv(ALLOW, "true")  # a reader of the file store opts in as the writer did
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("digits")  # tracking.experiment unset: the preset
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "t" and run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "condense/mmd2"), key=lambda m: m.step)
    assert [m.step for m in history] == [t for t, _ in summary["loss_curve"]]
    assert [m.value for m in history] == pytest.approx([v for _, v in summary["loss_curve"]])
    assert run.data.metrics["eval/convnet3/accuracy_mean"] == pytest.approx(summary["evals"][0]["accuracy_mean"])
    params = run.data.params
    assert (params["ipc"], params["eval.epochs"], params["iterations"], params["tracking.mlflow"]) == ("1", "2", "4", "true")
    assert params["data.image_size"] == "[16, 16]"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "config.yaml", "grid.png"}
    logged = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert json.loads(open(logged).read()) == summary


def test_a_run_directory_on_an_object_store_gets_its_event_files_uploaded(tracked, s3_bucket, tmp_path, monkeypatch):
    """SummaryWriter writes local files only: they go through a temporary folder to s3://.../tensorboard.
    MLflow, given a store of its own, reads its artifacts from the remote run directory."""
    import fsspec
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    local_run, summary = tracked
    run_url = f"{s3_bucket}/runs/r"
    for name in ("summary.json", "config.yaml", "grid.png"):  # what the driver wrote before track_run
        storage.write_bytes_atomic(f"{run_url}/{name}", (local_run / name).read_bytes())
    store = (tmp_path / "store").as_uri()
    cfg = load_config("digits", [f"out_dir={s3_bucket}/runs", "run_name=r", "tracking.tensorboard=true",
                                 "tracking.mlflow=true", f"tracking.mlflow_uri={store}", "tracking.experiment=remote"])
    check_tracking(cfg)
    written = track_run(cfg, run_url, summary, {"convnet3": [[(1, 0.5), (2, 0.75)]]})
    assert len(written) == 2 and f"{run_url}/tensorboard" in written[0]
    fsspec.filesystem("s3").get(f"{run_url}/tensorboard/", str(tmp_path / "tb"), recursive=True)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/convnet3/run0/test_accuracy")] == [(1, 0.5), (2, 0.75)]
    assert [e.step for e in events.Scalars("condense/mmd2")] == [t for t, _ in summary["loss_curve"]]
    assert len(events.Images("synthetic/grid")) == 1
    monkeypatch.setenv(ALLOW, "true")
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("remote").experiment_id])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "config.yaml", "grid.png"}
    assert run.data.tags["m3d.run_dir"] == run_url


def test_a_reevaluated_run_replaces_its_tensorboard_events_and_its_mlflow_run(tmp_path, monkeypatch):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["digits", f"out_dir={tmp_path}", "run_name=r", *TINY, "eval.epochs=1", "diagnostics.moments=false",
            "tracking.tensorboard=true", "tracking.mlflow=true"]
    assert main(args) == 0
    assert main([*args, "reevaluate=true"]) == 0
    run_dir = tmp_path / "r"
    summary = json.loads((run_dir / "summary.json").read_text())
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("condense/mmd2")] == [t for t, _ in summary["loss_curve"]]  # once
    assert len([f for f in os.listdir(run_dir / "tensorboard") if f.startswith("events.out.tfevents.")]) == 1
    monkeypatch.setenv(ALLOW, "true")
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("digits").experiment_id
    [run] = client.search_runs([experiment])
    assert run.data.metrics["eval/convnet3/accuracy_mean"] == pytest.approx(summary["evals"][0]["accuracy_mean"])
    [deleted] = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)  # the first log, restorable
    assert deleted.data.tags["m3d.run_dir"] == run.data.tags["m3d.run_dir"] and deleted.info.run_id != run.info.run_id


def test_tracking_is_off_by_default(tmp_path):
    assert main(["digits", f"out_dir={tmp_path}", "run_name=off", "iterations=1", "eval.runs=0",
                 "diagnostics.moments=false", "encoder.width=16", "batch_real=16", "backend=local"]) == 0
    run_dir = tmp_path / "off"
    assert (run_dir / "summary.json").exists()
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "mlruns").exists()


def test_a_tracking_store_that_fails_at_the_end_leaves_the_run_finished_with_a_warning(tmp_path, capsys):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the MLflow store's folder would go")
    args = ["digits", f"out_dir={tmp_path}", "run_name=f", "iterations=1", "eval.runs=0", "diagnostics.moments=false",
            "encoder.width=16", "batch_real=16", "backend=local", "tracking.mlflow=true",
            f"tracking.mlflow_uri=file:{blocked}"]
    assert main(args) == 0
    assert "tracking failed (" in capsys.readouterr().err
    assert json.loads((tmp_path / "f" / "run.json").read_text())["status"] == "finished"


# The packages made unimportable for real: a None entry in sys.modules makes `import x` raise
# ImportError, as when x is not installed.
MISSING = """
import json, sys
sys.modules["tensorboard"] = None
sys.modules["mlflow"] = None
from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.results.tracking import check_tracking
out, result = sys.argv[1], {}
for key in ("tensorboard", "mlflow"):
    try:
        check_tracking(load_config("digits", [f"tracking.{key}=true"]))
    except RunError as e:
        result[key] = str(e)
    result[key + "_exit"] = main(["digits", f"out_dir={out}", f"run_name={key}", f"tracking.{key}=true"])
print(json.dumps(result))
"""


def test_a_missing_package_is_named_before_condensing(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MISSING, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    for key in ("tensorboard", "mlflow"):
        expected = f'tracking.{key}=true needs the {key} package: pip install "m3d-condense[tracking]"'
        assert result[key].startswith(expected)
        assert result[f"{key}_exit"] == 2 and f"error: {expected}" in proc.stderr
        assert not (tmp_path / key / "synthetic").exists()  # refused before condensing


def test_a_remote_run_directory_needs_an_explicit_mlflow_uri():
    cfg = load_config("digits", ["out_dir=s3://bucket/runs", "tracking.mlflow=true"])
    with pytest.raises(TrackingError, match="tracking.mlflow_uri") as e:
        check_tracking(cfg)
    assert isinstance(e.value, RunError)  # the command line prints it as one line, exit status 2
    check_tracking(load_config("digits", ["out_dir=s3://bucket/runs", "tracking.mlflow=true",
                                          "tracking.mlflow_uri=http://mlflow.example:5000"]))
