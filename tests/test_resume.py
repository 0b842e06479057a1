"""Checkpoints and resume without Ray (backend=local), with the run directory on local disk
or on S3: a rerun continues exactly, skips finished work, and refuses a changed config."""
import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import torch
from conftest import REPO

from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.results.synthetic import SyntheticSet

TINY = ["encoder.width=16", "batch_real=16", "log_every=5", "device=cpu", "workers=1"]


def _args(out, name, *extra):
    return ["digits", f"out_dir={out}", f"run_name={name}", *TINY, *extra]


def test_rerun_of_a_finished_run_does_nothing_unless_asked_to_reevaluate(tmp_path, capsys):
    args = _args(tmp_path, "r", "iterations=5", "eval.runs=1", "eval.epochs=1")
    assert main(args) == 0
    first = json.loads((tmp_path / "r" / "summary.json").read_text())
    mtime = (tmp_path / "r" / "synthetic" / "index.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "finished earlier; nothing to do" in capsys.readouterr().err
    assert (tmp_path / "r" / "synthetic" / "index.json").stat().st_mtime_ns == mtime
    assert main([*args, "reevaluate=true", "eval.runs=2"]) == 0
    err = capsys.readouterr().err
    assert "condensed earlier; evaluating" in err and "eval convnet3 run 2/2" in err
    second = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(second["eval"]["runs"]) == 2 and second["eval"]["runs"][0] == first["eval"]["runs"][0]
    # The diagnostics read the stored set: the same gaps, and no engine built nor checkpoint read for them.
    assert second["moments"] == first["moments"] and "moment gaps" in err
    assert "classes per forward" not in err and "restored from the checkpoint" not in err


def test_rerun_with_a_different_condensation_config_is_refused_naming_the_keys(tmp_path, capsys):
    assert main(_args(tmp_path, "c", "iterations=3", "eval.runs=0")) == 0
    assert main(_args(tmp_path, "c", "iterations=3", "eval.runs=0", "ipc=2", "lr=0.5")) == 2
    err = capsys.readouterr().err
    assert "run.json: this run was started with a different config (differs in: ipc, lr)" in err
    assert "it ran with ipc=1 lr=0.3: give those to resume it" in err  # digits' values, as overrides


def test_a_run_refused_for_a_changed_default_resumes_with_the_values_the_message_gives(tmp_path, capsys):
    assert main(_args(tmp_path, "c", "iterations=3", "eval.runs=0", "lr=1")) == 0  # as if lr 1 were the default
    assert main(_args(tmp_path, "c", "iterations=3", "eval.runs=0")) == 2
    given = capsys.readouterr().err.split("it ran with ", 1)[1].split(":", 1)[0].split()
    assert given == ["lr=1.0"]
    assert main(_args(tmp_path, "c", "iterations=3", "eval.runs=0", *given)) == 0
    assert "finished earlier" in capsys.readouterr().err


def test_sigkilled_local_run_with_its_run_directory_on_s3_resumes_to_the_identical_set(tmp_path, s3_bucket):
    assert main(_args(s3_bucket, "straight", "iterations=40", "eval.runs=0")) == 0
    cmd = [sys.executable, str(REPO / "pipeline" / "run.py"),
           *_args(s3_bucket, "killed", "iterations=40", "eval.runs=0", "checkpoint_every=10")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    fs = fsspec.filesystem("s3")
    run_json = f"{s3_bucket}/killed/run.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if fs.exists(run_json) and json.loads(fs.cat(run_json))["iteration"] >= 10:
            break
        fs.invalidate_cache()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed at iteration" in rerun.stderr
    assert torch.equal(SyntheticSet.load(f"{s3_bucket}/killed").images, SyntheticSet.load(f"{s3_bucket}/straight").images)
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/killed/checkpoints")] == ["it0000040"]
    assert json.loads(fs.cat(run_json))["status"] == "finished"


def test_a_run_that_fails_before_its_first_checkpoint_does_not_refuse_the_corrected_command(tmp_path, capsys):
    common = [f"out_dir={tmp_path}", "run_name=r", "eval.runs=0", "iterations=2", "diagnostics.moments=false"]
    assert main(["digits", "ipc=100", *common]) == 2  # digits classes hold ~130 training images, not 400
    assert "class 0 (0) has 133 images, 400 are needed" in capsys.readouterr().err
    assert not (tmp_path / "r" / "run.json").exists()
    assert main(["digits", "ipc=1", *common]) == 0


def test_a_run_json_from_before_a_key_was_added_resumes_while_the_key_keeps_its_default(tmp_path, capsys):
    """Old run directories hold the condensation config of their day. A key the schema gained
    since, at its default, means what the code did then: the run is accepted; set away from the
    default, it is a different config and is refused naming it."""
    args = _args(tmp_path, "old", "iterations=3", "eval.runs=0", "diagnostics.moments=false")
    assert main(args) == 0
    run_json = tmp_path / "old" / "run.json"
    state = json.loads(run_json.read_text())
    del state["condensation_config"]["augment"]["rotate_degrees"]  # as if written before the key existed
    state["fingerprint"] = "0" * 16
    run_json.write_text(json.dumps(state))
    capsys.readouterr()
    assert main([*args, "augment.rotate_degrees=30"]) == 2
    assert "differs in: augment.rotate_degrees)" in capsys.readouterr().err
    assert main([*args, "reevaluate=true"]) == 0  # at its default: accepted, and run.json takes the new fingerprint
    assert json.loads(run_json.read_text())["fingerprint"] != "0" * 16
