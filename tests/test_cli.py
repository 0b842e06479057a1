"""The one entry point, end to end: python pipeline/run.py PRESET [overrides]."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA, synthetic_classes, write_npz
from PIL import Image

from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.config.loader import list_presets, load_config
from m3d_condense.pipeline.config.schema import NAMED_METHODS, ConfigError
from m3d_condense.pipeline.results.synthetic import SyntheticSet, is_stored

RUN = REPO / "pipeline" / "run.py"
FAST = ["iterations=6", "eval.runs=1", "eval.epochs=2", "eval.test_every=1", "log_every=2", "workers=1"]


def run_cli(*args, cwd=None, script=RUN):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_digits_run_writes_every_output(tmp_path):
    proc = run_cli("digits", f"out_dir={tmp_path}", "run_name=demo", *FAST)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "demo"
    assert {p.name for p in run_dir.iterdir()} >= {"synthetic", "summary.json", "grid.png", "curves.png",
                                                     "config.yaml"}
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("preset", "ipc", "factor", "kernel", "iterations", "condense_seconds", "eval"):
        assert key in summary
    assert summary["preset"] == "digits" and summary["iterations"] == 6
    ev = summary["eval"]
    assert ev["arch"] == "convnet3" and ev["epochs"] == 2 and len(ev["runs"]) == 1
    assert all(0.0 <= a <= 1.0 for a in ev["runs"]) and 0.0 <= ev["accuracy_mean"] <= 1.0
    syn = SyntheticSet.load(run_dir)
    cfg = load_config("digits")
    assert syn.images.shape == (10 * cfg.ipc, 1, 16, 16) and syn.labels.tolist() == sorted(syn.labels.tolist())
    assert syn.images.min() >= 0 and syn.images.max() <= 1 and syn.factor == cfg.factor
    with Image.open(run_dir / "grid.png") as im:
        assert im.format == "PNG" and im.height > 10 * 16
    assert "ipc: 1" in (run_dir / "config.yaml").read_text()


def test_run_script_works_when_copied_elsewhere_like_ray_submit(tmp_path):
    script = tmp_path / "home" / "run.py"
    script.parent.mkdir()
    shutil.copy(RUN, script)
    proc = run_cli("digits", f"out_dir={tmp_path / 'out'}", "run_name=x", "eval.runs=0", "iterations=2",
                   cwd=tmp_path, script=script)
    assert proc.returncode == 0, proc.stderr
    assert is_stored(tmp_path / "out" / "x")


def test_eval_runs_zero_skips_evaluation(tmp_path):
    assert main(["digits", f"out_dir={tmp_path}", "run_name=r", "iterations=2", "eval.runs=0"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert "eval" not in summary and summary["iterations"] == 2


def test_unknown_preset_lists_the_valid_presets():
    proc = run_cli("imagenet7")
    assert proc.returncode == 2
    assert "unknown preset 'imagenet7'" in proc.stderr
    for name in ("digits", "mnist", "cifar10", "imagenet100"):
        assert name in proc.stderr


def test_unknown_key_lists_the_valid_keys(capsys):
    assert main(["digits", "ipcc=3"]) == 2
    err = capsys.readouterr().err
    assert "ipcc" in err and "valid keys:" in err and "batch_real" in err and "eval.epochs" in err


@pytest.mark.parametrize("override,fragment", [
    ("kernel=rbf", "gaussian, linear, polynomial"),
    ("update_mode=fast", "reference, batched"),
    ("device=tpu", "auto, cpu, cuda"),
    ("eval.archs=[vgg]", "convnet3"),
    ("ipc=0", "ipc=0 must be >= 1"),
])
def test_invalid_values_name_the_key_and_the_choices(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config("digits", [override])


def test_every_dataset_of_the_design_has_a_preset_with_paper_hyperparameters():
    assert set(list_presets()) >= {"digits", "mnist", "fashion_mnist", "svhn", "cifar10", "cifar100", "tinyimagenet",
                                   "imagenet10", "imagenet100", "imagenet1k"}
    for low_res in ("mnist", "fashion_mnist", "svhn", "cifar10", "cifar100"):
        cfg = load_config(low_res)
        lr = 1.0 if low_res == "mnist" else cfg.ipc  # test_presets_that_fix_the_lr_keep_it_at_every_ipc
        assert (cfg.iterations, cfg.factor, cfg.lr, cfg.ipm, cfg.batch_real) == (10000, 2, lr, 5, 128)
        assert cfg.encoder.arch == "convnet3" and cfg.eval.epochs == 1000
    for subset, classes in (("imagenet10", 10), ("imagenet100", 100), ("imagenet1k", 1000)):
        cfg = load_config(subset)
        batch_real = 128 if classes >= 100 else 64  # IDC raises it to >= 128 for 100 or more classes
        assert (cfg.iterations, cfg.factor, cfg.lr, cfg.batch_real, cfg.data.num_classes) == (1000, 3, 0.1, batch_real, classes)
        assert cfg.encoder.arch == "resnetap10" and list(cfg.data.image_size) == [224, 224]


def test_imagewoof_preset_follows_the_128px_subset_protocol_of_dance_and_ncfm():
    cfg = load_config("imagewoof", ["ipc=1"])
    assert (cfg.encoder.arch, list(cfg.eval.archs), list(cfg.data.image_size)) == ("convnet5", ["convnet5"], [128, 128])
    assert (cfg.factor, cfg.batch_real, cfg.iterations, cfg.data.num_classes) == (2, 128, 10000, 10)
    assert (cfg.eval.recipe, cfg.eval.cutmix_prob, cfg.eval.epochs, cfg.eval.lr) == ("dsa", 0.5, None, 0.01)


@pytest.mark.parametrize("preset", ["fashion_mnist", "svhn", "cifar10", "cifar100", "tinyimagenet", "imagewoof",
                                    "custom"])
def test_the_default_lr_is_the_ipc_unless_the_command_gives_one(preset):
    data = [] if preset != "custom" else ["data.num_classes=2", "data.channels=1", "data.image_size=[8,8]",
                                           "data.mean=[0.5]", "data.std=[0.5]"]
    assert [load_config(preset, [*data, f"ipc={ipc}"]).lr for ipc in (1, 10, 50)] == [1.0, 10.0, 50.0]
    assert load_config(preset, [*data, "ipc=50", "lr=2"]).lr == 2.0
    assert load_config(preset, [*data, "ipc=50", *NAMED_METHODS["dm"]]).lr == 0.1  # DM's own lr


def test_presets_that_fix_the_lr_keep_it_at_every_ipc():
    assert {load_config("digits", [f"ipc={ipc}"]).lr for ipc in (1, 10)} == {0.3}  # measured on the demo
    assert {load_config("mnist", [f"ipc={ipc}"]).lr for ipc in (1, 10, 50)} == {1.0}  # measured: lr = ipc over-steps
    assert {load_config("imagenet100", [f"ipc={ipc}"]).lr for ipc in (1, 10, 50)} == {0.1}  # the paper's


def test_overrides_of_the_issue_are_accepted():
    cfg = load_config("digits", ["ipc=3", "factor=1", "iterations=7", "ipm=2", "kernel=linear", "lr=0.5",
                                 "batch_real=8", "seed=5", "out_dir=/tmp/x", "eval.runs=2", "eval.epochs=3",
                                 "eval.archs=[convnet3,resnet10]", "device=cpu"])
    assert (cfg.ipc, cfg.factor, cfg.iterations, cfg.ipm, cfg.kernel, cfg.lr, cfg.batch_real, cfg.seed) == \
        (3, 1, 7, 2, "linear", 0.5, 8, 5)
    assert cfg.run_name == "digits_m3d_linear_ipc3_s5" and list(cfg.eval.archs) == ["convnet3", "resnet10"]


def test_cifar10_preset_runs_from_npz_files(tmp_path):
    root = tmp_path / "cifar10"
    write_npz(root, "train", synthetic_classes(num_classes=10, per_class=12, size=32, channels=3))
    write_npz(root, "test", synthetic_classes(num_classes=10, per_class=3, size=32, channels=3, seed=1))
    args = ["cifar10", f"data.root={root}", f"out_dir={tmp_path}", "run_name=c", "ipc=1", "batch_real=8",
            "encoder.width=16", *FAST]
    assert main(args) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["preset"] == "cifar10" and len(summary["eval"]["runs"]) == 1


def test_missing_or_mismatched_npz_gives_an_error_naming_the_file(tmp_path, capsys):
    assert main(["cifar10", f"data.root={tmp_path}", f"out_dir={tmp_path}"]) == 2
    assert f"{tmp_path}/train.npz" in capsys.readouterr().err
    write_npz(tmp_path, "train", synthetic_classes(num_classes=10, per_class=4, size=32, channels=1))
    assert main(["cifar10", f"data.root={tmp_path}", f"out_dir={tmp_path}"]) == 2
    assert "1 channels, data.channels=3" in capsys.readouterr().err
    assert main(["cifar10", f"out_dir={tmp_path}"]) == 2
    assert "data.root is not set" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "mnist" / "train.npz").exists(), reason="../shared/data not present")
def test_mnist_preset_runs_on_the_shared_npz(tmp_path):
    args = ["mnist", f"data.root={SHARED_DATA / 'mnist'}", f"out_dir={tmp_path}", "run_name=m", "ipc=1",
            "batch_real=16", "encoder.width=16", "iterations=3", "eval.runs=0", "workers=1"]
    assert main(args) == 0
    syn = SyntheticSet.load(tmp_path / "m")
    assert syn.images.shape == (10, 1, 28, 28) and syn.class_names[0] == "0"


def test_no_arguments_prints_usage_with_the_presets(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: python pipeline/run.py PRESET" in out and "fashion_mnist" in out
    assert main(["--help"]) == 0


def _prepared(tmp_path, **kw):
    from m3d_condense.pipeline.data.writer import PrepareOptions, prepare

    write_npz(tmp_path / "src", "train", synthetic_classes(**kw))
    write_npz(tmp_path / "src", "test", synthetic_classes(seed=1, **kw))
    return prepare(str(tmp_path / "src"), str(tmp_path / "ds"), PrepareOptions(progress=False), log=lambda m: None)


def test_custom_preset_takes_size_channels_classes_and_statistics_from_the_manifest(tmp_path):
    m = _prepared(tmp_path, num_classes=3, per_class=10, size=12, channels=3)
    args = ["custom", f"data.root={tmp_path / 'ds'}", f"out_dir={tmp_path}", "run_name=c", "ipc=1", "batch_real=8",
            "encoder.width=16", *FAST]
    assert main(args) == 0
    cfg = yaml_config(tmp_path / "c" / "config.yaml")
    assert (cfg["data"]["num_classes"], cfg["data"]["channels"], cfg["data"]["image_size"]) == (3, 3, [12, 12])
    assert cfg["data"]["mean"] == list(m.mean) and cfg["data"]["source"] == "shards"
    syn = SyntheticSet.load(tmp_path / "c")
    assert syn.class_names == ["class0", "class1", "class2"] and syn.images.shape == (3, 3, 12, 12)


def test_preset_that_disagrees_with_the_manifest_names_the_key_and_the_manifest(tmp_path, capsys):
    _prepared(tmp_path, num_classes=10, per_class=2, size=12)
    assert main(["mnist", f"data.root={tmp_path / 'ds'}", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"data.image_size=[28, 28] but {tmp_path / 'ds' / 'manifest.parquet'} holds [12, 12]" in err


def test_root_without_a_manifest_or_npz_names_both(tmp_path, capsys):
    assert main(["custom", f"data.root={tmp_path}", f"out_dir={tmp_path}"]) == 2
    assert f"{tmp_path}/manifest.parquet: no manifest" in capsys.readouterr().err


def yaml_config(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_one_worker_runs_in_process_without_a_ray_cluster(monkeypatch):
    from m3d_condense.pipeline.orchestration import groups as backend

    assert backend.ray_cluster_running("10.0.0.1:6379")  # a named cluster counts without connecting
    cfg = load_config("mnist")  # workers: null, backend: auto
    monkeypatch.setattr(backend, "ray_cluster_running", lambda address: False)
    assert backend.resolve_backend(cfg) == ("local", 1)


def test_a_stale_ray_session_file_is_not_a_running_cluster(tmp_path, monkeypatch):
    """Ray leaves its address in TMP/ray/ray_current_cluster; a cluster that died leaves it behind.
    Nothing must try to connect there (Ray's connect waits a minute before giving up)."""
    import socket

    from m3d_condense.pipeline.orchestration import groups as backend

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # as in a fresh driver: not connected to any Ray yet
    monkeypatch.setattr(backend.tempfile, "gettempdir", lambda: str(tmp_path))
    assert not backend.ray_cluster_running(None)  # no session file
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{listener.getsockname()[1]}\n")
        assert backend.ray_cluster_running(None)  # something answers there
    assert not backend.ray_cluster_running(None)  # the same file, nothing listening: stale


def test_a_value_of_the_wrong_type_is_refused_naming_the_key(capsys):
    assert main(["digits", "lr=abc"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "'abc'" in err and "key lr" in err and "Traceback" not in err


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch, tmp_path):
    """Only expected failures (RunError) become one line; a bug must not be hidden as one."""
    from m3d_condense.pipeline import cli

    def broken(cfg, progress=True):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "run_pipeline", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["digits", f"out_dir={tmp_path}"])


def test_tqdm_disable_turns_the_progress_bars_off_and_they_show_without_it(tmp_path, capsys, monkeypatch):
    args = ["digits", f"out_dir={tmp_path}", "iterations=4", "eval.runs=1", "eval.epochs=1", "encoder.width=16",
            "batch_real=16", "workers=1", "diagnostics.moments=false"]
    for disable, shown in (("1", False), (None, True)):
        if disable:
            monkeypatch.setenv("TQDM_DISABLE", disable)  # e.g. the log of a scheduled run
        else:
            monkeypatch.delenv("TQDM_DISABLE", raising=False)
        assert main([*args, f"run_name=bars{shown}"]) == 0
        err = capsys.readouterr().err
        assert ("condense (1 workers)" in err) == shown and ("eval convnet3:" in err) == shown, err[-2000:]
        assert "\r" not in err  # stderr is no terminal here: plain progress lines, not a tqdm bar's refreshes
