"""GPU placement under Ray, tested without GPUs: a Ray node may declare GPUs it does not have
(``ray start --num-gpus=N``), so a one-node cluster with 2 fake GPUs shows how the run places
its actors and evaluation tasks. Torch on such a node sees no CUDA device, which is exactly the
case of a GPU node with a broken driver or a CPU-only torch: it warns (device=auto) or fails
(device=cuda), naming the worker and its node."""
import contextlib
import io
import json
import os
import socket

import pytest
import torch
from conftest import RAY_ENV

from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import ConfigError
from m3d_condense.pipeline.orchestration.groups import resolve_backend, split_classes
from m3d_condense.pipeline.orchestration.placement import check_assigned_gpus
from m3d_condense.pipeline.orchestration.run_store import fingerprint
from m3d_condense.pipeline.results.synthetic import is_stored

# Small runs: the digits preset, a narrow encoder, few iterations, evaluation of 1 epoch.
TINY = ["iterations=4", "encoder.width=16", "batch_real=16", "log_every=2", "diagnostics.moments=false",
        "eval.epochs=1", "eval.test_every=1"]
HOST = socket.gethostname()

no_cuda_here = pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a real CUDA device on this machine")


@pytest.fixture(scope="module")
def fake_gpus():
    """The address of a one-node Ray cluster that declares 2 GPUs (this machine has none)."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.update(RAY_ENV)
    ray.shutdown()  # leave any cluster an earlier test connected to
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 2})
    try:
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def _digits(address, *extra):
    return load_config("digits", [f"ray.address={address}", *TINY, *extra])


def test_workers_null_resolves_to_one_worker_per_gpu_of_the_ray_cluster(fake_gpus):
    assert resolve_backend(_digits(fake_gpus, "workers=null")) == ("ray", 2)
    assert resolve_backend(_digits(fake_gpus, "workers=null", "device=cuda")) == ("ray", 2)
    assert resolve_backend(_digits(fake_gpus, "workers=null", "device=cpu")) == ("ray", 1)  # GPUs unused


def test_each_actor_holds_its_own_gpu_with_a_distinct_cuda_visible_devices(fake_gpus, tmp_path):
    from m3d_condense.pipeline.orchestration.ray_group import RayWorkers

    cfg = _digits(fake_gpus, "workers=2", "backend=ray", f"out_dir={tmp_path}")
    cache = RayWorkers(cfg, split_classes(10, 2), str(tmp_path / "run"))
    try:
        infos = cache.info()
    finally:
        cache.stop()
    ids = [i.gpu_ids for i in infos]
    assert all(len(i) == 1 for i in ids) and ids[0] != ids[1], ids
    assert sorted(i.cuda_visible_devices for i in infos) == sorted(i[0] for i in ids)  # what torch would see


@pytest.fixture(scope="module")
def auto_run(fake_gpus, tmp_path_factory):
    """device=auto, workers=null, 2 evaluations sharing GPUs (ray.eval_gpus=0.5) on the fake-GPU
    cluster: (exit code, the driver's stderr, the run directory)."""
    out = tmp_path_factory.mktemp("auto")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["digits", f"out_dir={out}", "run_name=auto", "workers=null", f"ray.address={fake_gpus}", *TINY,
                     "device=auto", "eval.runs=2", "ray.eval_gpus=0.5"])
    return code, err.getvalue(), out / "auto"


def test_workers_null_condenses_with_one_actor_per_gpu_of_the_cluster(auto_run):
    code, err, run = auto_run
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["workers"] == 2
    assert "2 worker(s) on 1 node(s)" in err


@no_cuda_here
def test_actor_given_a_gpu_its_torch_cannot_see_warns_naming_worker_and_node_and_runs_on_cpu(auto_run):
    code, err, run = auto_run
    assert code == 0, err
    for worker, classes in (("worker 0", "0..4"), ("worker 1", "5..9")):
        line = next((ln for ln in err.splitlines() if ln.startswith(f"[m3d] WARNING: {worker} (classes {classes})")),
                    None)
        assert line is not None, err
        assert f"on node {HOST} (127.0.0.1, Ray node " in line and "holds GPU " in line
        assert "CPU-only build" in line and line.endswith("it runs on the CPU (device=auto)")
    assert is_stored(run) and json.loads((run / "run.json").read_text())["status"] == "finished"


@no_cuda_here
def test_evaluation_tasks_hold_the_configured_share_of_a_gpu(auto_run):
    code, err, _ = auto_run
    assert code == 0, err
    for k in (1, 2):
        result = next(ln for ln in err.splitlines() if ln.startswith(f"[m3d] eval convnet3 run {k}/2:"))
        assert "; 0.5 of GPU " in result, result  # ray.get_gpu_ids() and the assigned resources of the task
        assert f"[m3d] WARNING: evaluation convnet3 run {k} on node {HOST} (127.0.0.1" in err


@no_cuda_here
def test_device_cuda_on_a_gpu_its_torch_cannot_see_fails_naming_worker_and_node(fake_gpus, tmp_path, capsys):
    assert main(["digits", f"out_dir={tmp_path}", "run_name=cuda", "workers=2", "backend=ray", "device=cuda",
                 f"ray.address={fake_gpus}", *TINY, "eval.runs=0"]) == 2
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    assert line.startswith("error: worker 0 (classes 0..4) failed: GPUUnavailableError: worker 0 (classes 0..4) on "
                           f"node {HOST} (127.0.0.1, Ray node "), line
    assert "device=cuda cannot run there" in line
    assert not is_stored(tmp_path / "cuda")


@no_cuda_here
def test_evaluation_task_with_device_cuda_on_a_gpu_its_torch_cannot_see_fails_naming_it_and_its_node(
        fake_gpus, tmp_path, capsys):
    # method=whole reads the training set on the driver (no workers), so only the evaluation task meets the GPU.
    assert main(["digits", f"out_dir={tmp_path}", "run_name=ev", "method=whole", "workers=2", "backend=ray",
                 "device=cuda", f"ray.address={fake_gpus}", *TINY, "eval.runs=1"]) == 2
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: "))
    assert line.startswith("error: evaluation convnet3 run 1 failed: GPUUnavailableError: evaluation convnet3 run 1 "
                           f"on node {HOST} (127.0.0.1, Ray node "), line
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_a_gpu_not_assigned_by_ray_is_not_checked(monkeypatch):
    # In the driver or in-process, CUDA_VISIBLE_DEVICES is the user's business, whatever torch sees.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert check_assigned_gpus("auto", "worker") is None
    assert check_assigned_gpus("cuda", "worker") is None


def test_eval_gpus_must_be_a_share_of_one_gpu_and_leaves_the_run_fingerprint_alone():
    default = load_config("digits")
    assert default.ray.eval_gpus == 1
    assert fingerprint(load_config("digits", ["ray.eval_gpus=0.5"])) == fingerprint(default)
    for bad in ("0", "1.5", "-1"):
        with pytest.raises(ConfigError, match=r"ray.eval_gpus=.* must be in \(0, 1\]"):
            load_config("digits", [f"ray.eval_gpus={bad}"])
