"""The paper protocol's building blocks (pipeline/results/paper.py, pipeline/reproduce.py): evaluation
runs recorded one by one, snapshots for the released selection, a cell that resumes from any
stage, its row and table, and the published uint8 set. On the built-in digits, tiny settings."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import REPO

from m3d_condense.pipeline.config.loader import compose_config, load_config, to_run_config
from m3d_condense.pipeline.config.schema import NAMED_METHODS
from m3d_condense.pipeline.evaluation.records import EvalRecords
from m3d_condense.pipeline.orchestration import driver
from m3d_condense.pipeline.orchestration.driver import run_pipeline, snapshot_url
from m3d_condense.pipeline.orchestration.worker import ClassWorker
from m3d_condense.pipeline.reproduce import main as reproduce
from m3d_condense.pipeline.results.paper import Cell, cell_row, read_rows, run_cell, score_snapshots, table_markdown, with_runs
from m3d_condense.pipeline.results.synthetic import SyntheticSet

TINY = ["encoder.width=16", "batch_real=16", "log_every=2", "device=cpu", "workers=1", "diagnostics.moments=false",
        "eval.epochs=2", "eval.test_every=1"]


class Killed(Exception):
    """Stands for the process being killed mid-run."""


def count_trainings(monkeypatch, kill_at: int | None = None) -> list[int]:
    """Count the evaluation trainings the driver starts; with ``kill_at``, the ``kill_at``-th (1-based)
    is killed before it ends, as a killed process would be."""
    calls, real = [], driver.train_and_test

    def train_and_test(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "train_and_test", train_and_test)
    return calls


def test_each_evaluation_run_is_recorded_as_it_ends_and_a_rerun_trains_only_the_runs_left(tmp_path, monkeypatch):
    args = ["iterations=4", "eval.runs=3", *TINY]
    whole = run_pipeline(load_config("digits", [*args, f"out_dir={tmp_path}", "run_name=whole"]), progress=False)
    cfg = load_config("digits", [*args, f"out_dir={tmp_path}", "run_name=killed"])
    count_trainings(monkeypatch, kill_at=2)
    with pytest.raises(Killed):
        run_pipeline(cfg, progress=False)
    records = EvalRecords(tmp_path / "killed", cfg)
    assert records.read("convnet3", 0) is not None and records.read("convnet3", 1) is None
    calls = count_trainings(monkeypatch)
    resumed = run_pipeline(cfg, progress=False)
    assert len(calls) == 2  # runs 2 and 3; run 1 was read from its record
    assert resumed["eval"]["runs"] == whole["eval"]["runs"]
    assert resumed["eval"]["best_epoch_runs"] == whole["eval"]["best_epoch_runs"]


def test_records_are_kept_apart_by_evaluation_settings(tmp_path, monkeypatch):
    run_pipeline(load_config("digits", ["iterations=2", "eval.runs=1", *TINY, f"out_dir={tmp_path}", "run_name=r"]),
                 progress=False)
    calls = count_trainings(monkeypatch)
    changed = load_config("digits", ["iterations=2", "eval.runs=1", *TINY, "eval.epochs=3", f"out_dir={tmp_path}",
                                     "run_name=r", "reevaluate=true"])
    summary = run_pipeline(changed, progress=False)
    assert len(calls) == 1 and summary["eval"]["epochs"] == 3  # 2-epoch record not read as a 3-epoch one


def test_a_snapshot_is_the_set_of_its_iteration(tmp_path):
    common = [*TINY, "eval.runs=0", f"out_dir={tmp_path}"]
    run_pipeline(load_config("digits", ["iterations=6", "snapshot_every=2", "run_name=long", *common]), progress=False)
    run_pipeline(load_config("digits", ["iterations=4", "run_name=short", *common]), progress=False)
    snapshot = SyntheticSet.load(snapshot_url(str(tmp_path / "long"), 4))
    assert torch.equal(snapshot.images, SyntheticSet.load(tmp_path / "short").images)
    assert not (tmp_path / "long" / "snapshots" / "it0000006").exists()  # the final set is stored anyway
    assert (tmp_path / "long" / "snapshots" / "it0000002" / "synthetic" / "index.json").exists()


def cell(**kw) -> Cell:
    return Cell("digits", 1, runs=2, select_every=2, overrides=["iterations=6", *TINY], **kw)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    """The row of the tiny cell run start to end in one go."""
    return run_cell(cell(), str(tmp_path_factory.mktemp("fresh")), progress=False)


def test_a_stopped_cell_continues_where_it_stopped_and_gives_the_row_of_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                                                  fresh):
    out = str(tmp_path / "stopped")
    count_trainings(monkeypatch, kill_at=4)  # final runs 1 and 2, snapshot 2, killed at snapshot 4
    with pytest.raises(Killed):
        run_cell(cell(), out, progress=False)
    assert not (tmp_path / "stopped" / "rows").exists()  # no row before every stage has ended
    calls = count_trainings(monkeypatch)
    row = run_cell(cell(), out, progress=False)
    assert len(calls) == 1  # only the snapshot of iteration 4: nothing condensed or evaluated twice
    same = ("accuracy_mean", "accuracy_std", "accuracy_runs", "best_epoch_mean", "selected_accuracy",
            "selected_iteration", "snapshot_scores")
    assert {k: row[k] for k in same} == {k: fresh[k] for k in same}
    assert row["selected_from"] == 3 and row["selected_accuracy"] == max(row["snapshot_scores"].values())
    assert json.loads((tmp_path / "stopped" / "rows" / "digits_m3d_ipc1.json").read_text())["cell"] == "digits_m3d_ipc1"
    calls = count_trainings(monkeypatch)
    more = run_cell(Cell("digits", 1, runs=3, select_every=2, overrides=["iterations=6", *TINY]), out, progress=False)
    assert len(calls) == 1 and more["runs"] == 3 and more["accuracy_runs"][:2] == row["accuracy_runs"]


def test_the_table_command_prints_every_recorded_row_and_publish_stores_a_uint8_set(tmp_path, capsys):
    out = str(tmp_path / "out")
    common = ["digits", "1", "--runs", "2", "--select-every", "3", "--out", out, "--no-progress", "iterations=6", *TINY]
    assert reproduce(["publish", *common, "--dest", str(tmp_path / "sets")]) == 2
    assert "has no row" in capsys.readouterr().err
    assert reproduce(["cell", *common]) == 0
    assert reproduce(["table", out]) == 0
    table = capsys.readouterr().out
    row = read_rows(out)[0]
    assert table == table_markdown([row]) + "\n"
    assert f"| digits | 1 | M3D | {100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f} (2 runs) |" in table
    assert reproduce(["publish", *common, "--dest", str(tmp_path / "sets"), "--eval-runs", "1"]) == 0
    published = tmp_path / "sets" / "digits_m3d_ipc1"
    stored = torch.load(next((published / "synthetic").glob("*.pt")), weights_only=True)
    assert stored["images"].dtype == torch.uint8
    floats = SyntheticSet.load(tmp_path / "out" / "runs" / "digits_m3d_ipc1")
    assert (SyntheticSet.load(published).images - floats.images).abs().max() <= 0.5 / 255 + 1e-6
    summary = json.loads((published / "summary.json").read_text())
    assert summary["published"]["runs"][0] > 0.1 and summary["command"].startswith("python pipeline/reproduce.py cell")


def test_a_row_carries_the_papers_number_for_its_dataset_ipc_and_method():
    summary = {"condense_seconds": 1.0, "eval": {"epochs": 1000, "runs": [0.6, 0.62], "seconds": [1.0, 1.0],
                                                 "accuracy_mean": 0.61, "accuracy_std": 0.01,
                                                 "best_epoch_accuracy_mean": 0.62}}
    selection = {"accuracy": 0.63, "iteration": 9500, "snapshots": 20, "seconds": 5.0, "scores": {}}
    for method, kernel, paper in (("m3d", "gaussian", 63.5), ("dm", "linear", 48.9)):
        cfg = to_run_config(compose_config("cifar10", NAMED_METHODS[method]))
        row = cell_row(Cell("cifar10", 10, method), cfg, summary, selection)
        assert (row["paper"], row["kernel"], row["cell"]) == (paper, kernel, f"cifar10_{method}_ipc10")
        assert row["init"] == "mix_first" and row["iterations"] == 10000 and row["epochs"] == 1000


@pytest.mark.parametrize("preset", ["mnist", "fashion_mnist", "svhn", "cifar10", "cifar100"])
def test_low_resolution_presets_start_from_the_released_init(preset):
    assert compose_config(preset).init == "mix_first"


def test_a_second_process_can_score_the_snapshots_while_the_cell_condenses(tmp_path):
    cfg = cell().config(str(tmp_path))
    run_url = str(tmp_path / "runs" / cfg.run_name)
    follower = {}
    thread = threading.Thread(target=lambda: follower.update(score_snapshots(cfg, run_url, 2, False, follow=True,
                                                                             poll_s=0.2)))
    thread.start()  # before the run exists: it waits for snapshots until the run has condensed
    run_pipeline(with_runs(cfg, 0), progress=False)
    thread.join(timeout=600)
    assert sorted(follower) == [2, 4]
    shutil.rmtree(tmp_path / "runs" / cfg.run_name / "snapshots" / "it0000002" / "synthetic")
    again = score_snapshots(cfg, run_url, 2, False)  # read back from the records, nothing trained
    assert {t: acc for t, (acc, _) in again.items()} == {t: acc for t, (acc, _) in follower.items()}


def test_a_cell_saved_with_paper_state_continues_on_another_disk_with_the_same_row(tmp_path, monkeypatch, fresh):
    first, second, kept = tmp_path / "first", tmp_path / "second", tmp_path / "kept"
    count_trainings(monkeypatch, kill_at=4)  # stopped while scoring the snapshot of iteration 4
    with pytest.raises(Killed):
        run_cell(cell(), str(first), progress=False)
    env = {**os.environ, "PAPER_STATE_DIR": str(kept)}
    state = [sys.executable, "-m", "benchmarks.paper_state"]
    subprocess.run([*state, "save", str(first)], check=True, env=env, capture_output=True, cwd=REPO)
    saved = kept / "state" / "digits_m3d_ipc1"
    assert (saved / "run.json").exists() and not (saved / "snapshots" / "it0000002" / "synthetic").exists()
    assert (saved / "snapshots" / "it0000004" / "synthetic" / "index.json").exists()  # not scored yet: kept
    subprocess.run([*state, "restore", str(second)], check=True, env=env, capture_output=True, cwd=REPO)
    calls = count_trainings(monkeypatch)
    row = run_cell(cell(), str(second), progress=False)
    assert len(calls) == 1 and row["snapshot_scores"] == fresh["snapshot_scores"]
    assert (row["accuracy_runs"], row["selected_accuracy"]) == (fresh["accuracy_runs"], fresh["selected_accuracy"])


def test_condensing_seconds_add_up_over_the_processes_that_resumed_a_run(tmp_path, monkeypatch):
    cfg = load_config("digits", ["iterations=4", "checkpoint_every=2", "eval.runs=0", *TINY, f"out_dir={tmp_path}",
                                 "run_name=r"])
    clock, offset, real_step = time.perf_counter, [0.0], ClassWorker.run_until
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + offset[0])

    def run_until(self, target, *args):
        if target > 2:
            raise Killed
        offset[0] += 1000.0  # the first process spends 1000 s up to its checkpoint
        return real_step(self, target, *args)

    monkeypatch.setattr(ClassWorker, "run_until", run_until)
    with pytest.raises(Killed):
        run_pipeline(cfg, progress=False)
    first = json.loads((tmp_path / "r" / "run.json").read_text())["condense_seconds"]
    assert first >= 1000
    monkeypatch.setattr(ClassWorker, "run_until", real_step)
    summary = run_pipeline(cfg, progress=False)
    assert first < summary["condense_seconds"] < first + 600
