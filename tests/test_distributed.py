"""The Ray pipeline on a real local Ray head: N-worker equality, killed actors and drivers,
resume, resource errors, failing workers, job submission and a multi-node cluster."""
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
from conftest import RAY_ENV, REPO, synthetic_classes, write_npz

from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.results.synthetic import SyntheticSet, is_stored

TINY = ["encoder.width=16", "batch_real=16", "eval.runs=0", "log_every=5", "device=cpu"]


def _synthetic(out, name):
    return SyntheticSet.load(out / name).images


def _ray(address, workers, *extra):
    return ["backend=ray", f"workers={workers}", f"ray.address={address}", *extra]


def _cmd(tmp_path, name, address, *extra):
    return [sys.executable, str(REPO / "pipeline" / "run.py"), "digits", f"out_dir={tmp_path}", f"run_name={name}",
            *TINY, *_ray(address, 2), *extra]


def _wait_for_checkpoint(run_dir, at_least, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        try:
            run = json.loads((run_dir / "run.json").read_text())
            if run["iteration"] >= at_least:
                return run["iteration"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint at {at_least} in {run_dir}")


@contextmanager
def _driver_held_after_checkpoint(run_dir, at_least, proc):
    """Stop the driver process once it has checkpointed ``at_least`` and let it go on when the
    block ends. The workers step in lockstep with it (a few iterations per call), so whatever
    the block does to them lands mid-run however fast the run is: a 60-iteration run can end
    within a second, sooner than Ray can list actors and remove a node."""
    _wait_for_checkpoint(run_dir, at_least, proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def uninterrupted(ray_head, tmp_path_factory):
    """The reference result: 60 iterations, 2 workers, no interruption."""
    out = tmp_path_factory.mktemp("straight")
    assert main(["digits", f"out_dir={out}", "run_name=ref", "iterations=60", *TINY,
                 *_ray(ray_head[0], 2)]) == 0
    return _synthetic(out, "ref")


def test_one_two_and_three_workers_give_a_bit_identical_synthetic_set(ray_head, tmp_path, uninterrupted):
    for n in (1, 3):
        assert main(["digits", f"out_dir={tmp_path}", f"run_name=w{n}", "iterations=60", *TINY,
                     *_ray(ray_head[0], n)]) == 0
        assert torch.equal(_synthetic(tmp_path, f"w{n}"), uninterrupted), f"{n} workers differ from 2"
    summary = json.loads((tmp_path / "w3" / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["workers"] == 3
    assert len(summary["loss_curve"]) == 13  # t = 0, 5, ..., 55 and the last, 59


def test_sigkilled_actor_is_restarted_from_its_checkpoint_and_the_run_ends_identical(ray_head, tmp_path,
                                                                                      uninterrupted):
    import ray
    from ray.util.state import list_actors

    proc = subprocess.Popen(_cmd(tmp_path, "k", ray_head[0], "iterations=60", "checkpoint_every=10"),
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **RAY_ENV})
    with _driver_held_after_checkpoint(tmp_path / "k", 10, proc):
        if not ray.is_initialized():
            ray.init(address=ray_head[0])
        victims = [a for a in list_actors(filters=[("state", "=", "ALIVE")], address=ray_head[0])
                   if a.class_name == "ClassWorker"]
        assert victims, "no live worker actor found"
        os.kill(victims[0].pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "restored from the checkpoint of iteration" in err
    assert torch.equal(_synthetic(tmp_path, "k"), uninterrupted)


def test_actor_that_dies_more_often_than_allowed_is_reported_with_its_classes(ray_head, tmp_path):
    import ray
    from ray.util.state import list_actors

    if not ray.is_initialized():
        ray.init(address=ray_head[0])
    proc = subprocess.Popen(_cmd(tmp_path, "x", ray_head[0], "iterations=60", "checkpoint_every=10",
                                 "ray.max_restarts=0"), stderr=subprocess.PIPE, text=True, env={**os.environ, **RAY_ENV})
    with _driver_held_after_checkpoint(tmp_path / "x", 10, proc):
        victims = [a for a in list_actors(filters=[("state", "=", "ALIVE")], address=ray_head[0])
                   if a.class_name == "ClassWorker"]
        os.kill(victims[0].pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "died and was restarted ray.max_restarts times" in err and "(classes " in err
    assert json.loads((tmp_path / "x" / "run.json").read_text())["status"] == "running"
    assert not is_stored(tmp_path / "x")


def test_sigkilled_driver_rerun_resumes_from_the_last_checkpoint_and_ends_identical(ray_head, tmp_path,
                                                                                    uninterrupted):
    cmd = _cmd(tmp_path, "d", ray_head[0], "iterations=60", "checkpoint_every=10")
    env = {**os.environ, **RAY_ENV}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_checkpoint(tmp_path / "d", 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not is_stored(tmp_path / "d")
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed at iteration" in rerun.stderr
    assert torch.equal(_synthetic(tmp_path, "d"), uninterrupted)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "finished earlier; nothing to do" in again.stderr


@pytest.mark.parametrize("wait_s", [0, 3])
def test_asking_for_gpus_the_cluster_lacks_fails_within_seconds(ray_head, tmp_path, capsys, wait_s):
    # wait_s > 0: the autoscaling wait (ray.wait_for_gpus_s) runs out, then the same error, naming the wait.
    start = time.monotonic()
    assert main(["digits", f"out_dir={tmp_path}", "run_name=g", *TINY[:-1], "device=cuda",
                 f"ray.wait_for_gpus_s={wait_s}", *_ray(ray_head[0], 2)]) == 2
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert "device=cuda with workers=2 needs 2 GPUs, the Ray cluster has 0" in err
    assert (f"after waiting ray.wait_for_gpus_s={wait_s} s for GPU nodes" in err) == (wait_s > 0)
    assert wait_s <= seconds < wait_s + 30
    assert not (tmp_path / "g" / "summary.json").exists()


def test_a_failing_worker_is_reported_with_its_classes_and_error(ray_head, tmp_path, capsys):
    from m3d_condense.pipeline.data.writer import PrepareOptions, prepare

    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=4, per_class=10))
    write_npz(tmp_path / "src", "test", synthetic_classes(num_classes=4, per_class=2))
    m = prepare(str(tmp_path / "src"), str(tmp_path / "ds"), PrepareOptions(progress=False), log=lambda m: None)
    shard = tmp_path / "ds" / m.shards("train", 3)[0].shard
    shard.write_bytes(shard.read_bytes()[:700])
    assert main(["custom", f"data.root={tmp_path / 'ds'}", f"out_dir={tmp_path}", "run_name=f", "ipc=1",
                 "iterations=4", *TINY, *_ray(ray_head[0], 2)]) == 2
    err = capsys.readouterr().err
    assert "worker 1 (classes 2..3) failed: ShardError" in err and str(shard) in err
    # Nothing was computed: no run.json, so a corrected command is not refused as "a different config".
    assert not (tmp_path / "f" / "run.json").exists() and not is_stored(tmp_path / "f")


def test_workers_store_their_own_slices_and_evaluation_tasks_read_the_set_without_the_driver(
        ray_head, tmp_path, monkeypatch):
    from m3d_condense.pipeline.data import storage
    from m3d_condense.pipeline.orchestration import driver

    read_here = []  # what this process (the driver) reads; actors and tasks are other processes
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda url: read_here.append(url) or real_read(url))
    monkeypatch.setattr(driver, "GRID_CLASSES", 3)  # grid.png shows classes 0..2: worker 0's slice only
    assert main(["digits", f"out_dir={tmp_path}", "run_name=e", "iterations=4", "encoder.width=16",
                 "batch_real=16", "eval.runs=2", "eval.epochs=2", "eval.test_every=1", "device=cpu",
                 *_ray(ray_head[0], 2)]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert len(summary["eval"]["runs"]) == 2 and summary["backend"] == "ray"
    slices = sorted(p.name for p in (tmp_path / "e" / "synthetic").iterdir())
    assert slices == ["classes-00000-00004.pt", "classes-00005-00009.pt", "index.json"]
    slice_reads = [u.rsplit("/", 1)[-1] for u in read_here if "/synthetic/classes-" in u]
    assert slice_reads == ["classes-00000-00004.pt"], "the driver read more of the set than grid.png shows"
    syn = SyntheticSet.load(tmp_path / "e")
    assert syn.labels.tolist() == sorted(syn.labels.tolist()) and len(syn) == summary["train_images"]


def test_ray_job_submit_of_a_small_preset_to_the_local_head(ray_head, tmp_path):
    env = {**os.environ, **RAY_ENV}
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_cli, "job", "submit", "--address", ray_head[1], "--working-dir", str(REPO), "--",
           "python", "pipeline/run.py", "digits", f"out_dir={tmp_path}", "run_name=job", "iterations=10", *TINY,
           "workers=2", "backend=ray"]
    for _ in range(10):  # the head's job agent can take a while to register ("try again later")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        if "No available agent to submit job" not in proc.stderr:
            break
        time.sleep(6)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr)
    assert is_stored(tmp_path / "job")


def test_workers_sharing_a_cpu_node_size_their_steps_for_their_share_of_its_memory(ray_head, tmp_path, capsys):
    """Two workers of 2 CPUs each on the 4-CPU head: each sizes its step (classes per forward)
    for half the free memory it sees, not all of it, so the two cannot together need twice it."""
    assert main(["digits", f"out_dir={tmp_path}", "run_name=shared", "iterations=10", *TINY,
                 *_ray(ray_head[0], 2, "ray.worker_cpus=2")]) == 0
    assert "steps sized for 0.5 of a node's free memory" in capsys.readouterr().err


def test_an_in_process_worker_of_a_driver_connected_to_ray_sizes_its_step_for_all_the_free_memory(ray_head):
    import ray

    from m3d_condense.pipeline.orchestration.placement import memory_share

    if not ray.is_initialized():
        ray.init(address=ray_head[0])
    assert memory_share(torch.device("cpu")) == 1.0  # a driver is no actor: Ray placed nothing beside it


def test_workers_spread_over_the_nodes_of_a_multi_node_cluster_give_the_same_set(tmp_path, uninterrupted, capsys):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave the session's head; connect to a cluster of three raylets instead
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert main(["digits", f"out_dir={tmp_path}", "run_name=multi", "iterations=60", *TINY,
                     *_ray(cluster.address, 2, "ray.worker_cpus=1")]) == 0
        err = capsys.readouterr().err
        assert "2 worker(s) on 2 node(s)" in err
        assert "of a node's free memory" not in err  # a whole node's CPUs each: no neighbour can share it
        assert torch.equal(_synthetic(tmp_path, "multi"), uninterrupted)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_evaluation_tasks_read_the_test_split_themselves_so_the_driver_does_not_grow_with_it(ray_head, tmp_path):
    """The driver's peak memory with a 60k-image test split (45 MiB of uint8, MNIST-sized) is that
    with a 2k-image one: it never loads the split (it used to hold it about three times over)."""
    import numpy as np

    g = np.random.default_rng(0)
    peaks = {}
    for n_test in (2000, 60000):
        root = tmp_path / f"mnist{n_test}"
        write_npz(root, "train", synthetic_classes(num_classes=10, per_class=8, size=28, channels=1))
        np.savez(root / "test.npz", x=g.integers(0, 256, (n_test, 28, 28, 1), dtype=np.uint8),
                 y=g.integers(0, 10, n_test), class_names=np.array([f"class{c}" for c in range(10)]))
        cmd = [sys.executable, str(REPO / "pipeline" / "run.py"), "mnist", f"data.root={root}", f"out_dir={tmp_path}",
               f"run_name=m{n_test}", "ipc=1", "iterations=2", "batch_real=8", "encoder.width=16", "eval.runs=1",
               "eval.epochs=1", "diagnostics.moments=false", "device=cpu", *_ray(ray_head[0], 1)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **RAY_ENV}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / f"m{n_test}" / "summary.json").read_text())
        assert summary["backend"] == "ray" and len(summary["eval"]["runs"]) == 1
        peaks[n_test] = summary["driver_peak_bytes"] / 2**20
    assert peaks[60000] - peaks[2000] < 15, peaks  # the split is 45 MiB; held three times it added ~135


def test_losing_a_whole_node_mid_run_ends_with_the_same_synthetic_set(tmp_path, uninterrupted):
    """A spot node goes away with its actor: Ray restarts the actor on a node that is left, it
    reloads its slice of the last checkpoint, and the run ends as if nothing happened."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        proc = subprocess.Popen(_cmd(tmp_path, "n", cluster.address, "iterations=60", "checkpoint_every=10"),
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **RAY_ENV})
        with _driver_held_after_checkpoint(tmp_path / "n", 10, proc):
            actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], address=cluster.address)
                      if a.class_name == "ClassWorker"]
            (lost,) = [n for n in nodes if n.node_id == actors[0].node_id]
            cluster.remove_node(lost, allow_graceful=False)  # the node and every process on it, at once
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        summary = json.loads((tmp_path / "n" / "summary.json").read_text())
        assert summary["worker_restarts"] >= 1, err  # restored from a checkpoint, not recomputed from scratch
        assert torch.equal(_synthetic(tmp_path, "n"), uninterrupted)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_worker_whose_lost_node_cannot_be_replaced_fails_naming_what_it_needs(tmp_path):
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        cmd = _cmd(tmp_path, "p", cluster.address, "iterations=60", "checkpoint_every=10", "ray.worker_cpus=1",
                   "ray.restart_wait_s=5")
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **RAY_ENV})
        with _driver_held_after_checkpoint(tmp_path / "p", 10, proc):
            actor = next(a for a in list_actors(filters=[("state", "=", "ALIVE")], address=cluster.address)
                         if a.class_name == "ClassWorker")
            cluster.remove_node(next(n for n in nodes if n.node_id == actor.node_id), allow_graceful=False)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        assert "lost its node and Ray could not place it again within ray.restart_wait_s=5 s" in err
        assert "'num_cpus': 1" in err and "rerun with fewer workers" in err
        assert json.loads((tmp_path / "p" / "run.json").read_text())["iteration"] >= 10  # resumable
    finally:
        ray.shutdown()
        cluster.shutdown()
