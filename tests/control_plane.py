"""The control plane at ImageNet-1K's class count, on one machine: 1000 classes of tiny images.

    python -m tests.control_plane [--classes 1000 --per-class 20 --size 8 --workers 1,2,4,8
                                        --iterations 20]

Prepares a 1000-class dataset (generated, ``--size`` px, ``--per-class`` train images) into
shards and starts a local multi-node Ray cluster (``ray.cluster_utils``: a head without CPUs and
two worker nodes). Then, as a user would, it runs ``pipeline/run.py custom`` against it:
- for each worker count: condensation with a sync every iteration and a checkpoint at half
  way, measuring the driver's peak memory, the median time per sync beyond the slowest worker's
  compute (the control plane's own cost) and the bytes of one checkpoint;
- with the most workers: the driver is SIGKILLed after its first checkpoint and the command
  rerun (the bytes the workers read to resume), and in a separate run one worker node is
  removed mid-run (its actors restart on the other node from the checkpoint), then evaluated.
Each part must end with the synthetic set of an uninterrupted run. Appends one JSON object per
measurement to benchmarks/results/control_plane.jsonl and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.record import RESULTS, append, git_commit, machine
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.results.synthetic import SyntheticSet

OUT = RESULTS / "control_plane.jsonl"
RUN = Path(__file__).resolve().parent.parent / "pipeline" / "run.py"
NODES, CPUS_PER_NODE = 2, 4  # logical CPUs: actors hold 0.25 each, so one node can host 8 (after a loss)


def make_dataset(root: Path, classes: int, per_class: int, size: int) -> Path:
    """``classes`` classes of ``size`` px RGB images (a class-specific colour plus noise), as npz
    then prepared into shards under ``root``/shards; returns the shards' root."""
    g = np.random.default_rng(0)
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    colours = g.integers(0, 256, (classes, 1, 1, 3))
    for split, n in (("train", per_class), ("test", 2)):
        noise = g.integers(-40, 41, (classes, n, size, size, 3))
        x = np.clip(colours[:, None] + noise, 0, 255).astype(np.uint8).reshape(-1, size, size, 3)
        np.savez(src / f"{split}.npz", x=x, y=np.repeat(np.arange(classes), n),
                 class_names=np.array([f"c{c:04d}" for c in range(classes)]))
    prepare(str(src), str(root / "shards"), PrepareOptions(progress=False, workers=2), log=lambda m: None)
    return root / "shards"


def command(data: Path, out: Path, name: str, address: str, workers: int, iterations: int, *extra: str,
            checkpoint_every: int | None = None) -> list[str]:
    """``pipeline/run.py custom`` on the prepared set: IPC 1, a sync every iteration, a checkpoint
    at half way (or every ``checkpoint_every``)."""
    every = checkpoint_every or iterations // 2
    return [sys.executable, str(RUN), "custom", f"data.root={data}", f"out_dir={out}", f"run_name={name}",
            "ipc=1", "factor=1", f"iterations={iterations}", "log_every=1", f"checkpoint_every={every}",
            "batch_real=4", "encoder.width=8", "device=cpu", "backend=ray", f"workers={workers}",
            f"ray.address={address}", "ray.worker_cpus=0.25", "ray.eval_cpus=1", "diagnostics.moments=false",
            "eval.runs=0", *extra]


def run_driver(cmd: list[str], kill_after_checkpoint: Path | None = None, on_checkpoint=None) -> tuple[int, str]:
    """Run the driver; returns (exit code, stderr). With
    ``kill_after_checkpoint`` (a run folder) the driver is SIGKILLed, or ``on_checkpoint()`` is
    called, as soon as its run.json names the first checkpoint."""
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        if kill_after_checkpoint is not None:
            wait_for_checkpoint(kill_after_checkpoint, proc)
            if on_checkpoint is None:
                proc.send_signal(signal.SIGKILL)
            else:
                on_checkpoint()
        proc.wait()
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace")


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before its first checkpoint (exit {proc.returncode})")
        try:
            if json.loads((run_dir / "run.json").read_text())["iteration"] > 0:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint in {run_dir}")


def synthetic(run_dir: Path) -> torch.Tensor:
    return SyntheticSet.load(str(run_dir)).images


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def start_cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=CPUS_PER_NODE) for _ in range(NODES)]
    cluster.wait_for_nodes()
    return cluster, nodes


def measure(classes: int, per_class: int, size: int, worker_counts: list[int], iterations: int,
            work: Path) -> list[dict]:
    """Every measurement of the module docstring; raises if a part does not end as it should."""
    from ray.util.state import list_actors

    data = make_dataset(work / "data", classes, per_class, size)
    cluster, nodes = start_cluster()
    rows = []
    try:
        for w in worker_counts:
            name = f"w{w}"
            code, err = run_driver(command(data, work, name, cluster.address, w, iterations))
            if code != 0:
                raise RuntimeError(f"{w} workers failed:\n{err[-3000:]}")
            s = summary(work / name)
            rows.append({"part": "sync", "classes": classes, "workers": w, "iterations": iterations,
                         "driver_peak_mib": s["driver_peak_bytes"] / 2**20, "sync_overhead_ms": 1000 * s["sync_overhead_s"],
                         "it_per_s": s["condense_it_per_s"], "checkpoint_bytes": s["checkpoint_bytes"]})
        w = max(worker_counts)
        reference = synthetic(work / f"w{w}")
        # The driver dies after its first checkpoint; the same command resumes.
        cmd = command(data, work, "resume", cluster.address, w, iterations)
        run_driver(cmd, kill_after_checkpoint=work / "resume")
        code, err = run_driver(cmd)
        if code != 0 or not torch.equal(synthetic(work / "resume"), reference):
            raise RuntimeError(f"the resumed run did not end with the uninterrupted set (exit {code}):\n{err[-3000:]}")
        s = summary(work / "resume")
        rows.append({"part": "resume", "classes": classes, "workers": w, "driver_peak_mib": s["driver_peak_bytes"] / 2**20,
                     "checkpoint_bytes": s["checkpoint_bytes"], "resume_read_bytes": s["resume_read_bytes"]})

        # A worker node is lost mid-run; its actors restart on the other node; then evaluation.
        def lose_a_node() -> None:
            actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], address=cluster.address)
                      if a.class_name == "ClassWorker"]
            (lost,) = [n for n in nodes if n.node_id == actors[0].node_id]
            cluster.remove_node(lost, allow_graceful=False)
            rows.append({"part": "node_lost", "classes": classes, "workers": w,
                         "actors_on_lost_node": sum(a.node_id == lost.node_id for a in actors)})

        # An early first checkpoint, so that the node goes while most of the iterations remain.
        cmd = command(data, work, "node", cluster.address, w, iterations, "eval.runs=1", "eval.epochs=1",
                      checkpoint_every=max(1, iterations // 10))
        code, err = run_driver(cmd, kill_after_checkpoint=work / "node", on_checkpoint=lose_a_node)
        if code != 0 or not torch.equal(synthetic(work / "node"), reference):
            raise RuntimeError(f"the run that lost a node did not end with the uninterrupted set (exit {code}):\n"
                               f"{err[-3000:]}")
        s = summary(work / "node")
        rows[-1].update(driver_peak_mib=s["driver_peak_bytes"] / 2**20, accuracy=s["eval"]["accuracy_mean"],
                        worker_restarts=s["worker_restarts"])
        if s["worker_restarts"] < rows[-1]["actors_on_lost_node"]:
            raise RuntimeError(f"{rows[-1]['actors_on_lost_node']} actors lost their node, {s['worker_restarts']} restored")
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = measure(args.classes, args.per_class, args.size, [int(w) for w in args.workers.split(",")],
                       args.iterations, Path(work))
    for row in rows:
        append(args.out, {**row, "machine": machine(), "commit": git_commit()})
    print("| part | workers | driver peak (MiB) | sync overhead (ms) | checkpoint (MiB) | read to resume (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r['driver_peak_mib']:.0f}" if "driver_peak_mib" in r else "–",
                 f"{r['sync_overhead_ms']:.1f}" if "sync_overhead_ms" in r else "–",
                 *(f"{r[k] / 2**20:.2f}" if k in r else "–" for k in ("checkpoint_bytes", "resume_read_bytes"))]
        print(f"| {r['part']} | {r['workers']} | " + " | ".join(cells) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
