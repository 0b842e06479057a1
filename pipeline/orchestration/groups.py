"""Where a run's work happens: one worker in this process, or Ray actors and tasks.

Both backends give the driver the same worker group (``WorkerGroup``,
``orchestration/protocol.py``): each method runs that ``ClassWorker`` method on every worker
and returns their answers in worker order; ``stop`` releases them. The Ray group and its
placement are in ``orchestration/ray_group.py``.
"""
from __future__ import annotations

import os
import socket
import tempfile

import torch

from m3d_condense.pipeline.config.schema import ConfigError, RunConfig
from m3d_condense.pipeline.orchestration.placement import connected_ray
from m3d_condense.pipeline.orchestration.protocol import MomentGaps, Step, StoredSlice, WorkerGroup, WorkerInfo
from m3d_condense.pipeline.orchestration.worker import ClassWorker


class LocalWorkers:
    """The in-process backend: the same ClassWorker, called directly."""

    def __init__(self, cfg: RunConfig, splits: list[list[int]], run_url: str):
        self.splits = splits
        self.workers = [ClassWorker(cfg, s, run_url) for s in splits]

    def info(self) -> list[WorkerInfo]:
        return [w.info() for w in self.workers]

    def run_until(self, target: int, checkpoint: bool, snapshot_url: str | None = None) -> list[Step]:
        return [w.run_until(target, checkpoint, snapshot_url) for w in self.workers]

    def select(self) -> list[StoredSlice]:
        return [w.select() for w in self.workers]

    def finish(self) -> list[StoredSlice]:
        return [w.finish() for w in self.workers]

    def moments(self) -> list[MomentGaps]:
        return [w.moments() for w in self.workers]

    def stop(self) -> None:
        self.workers = []


def split_classes(num_classes: int, workers: int) -> list[list[int]]:
    """Contiguous, nearly equal slices: 10 classes over 3 workers -> 4, 3, 3."""
    workers = max(1, min(workers, num_classes))
    base, extra = divmod(num_classes, workers)
    out, start = [], 0
    for w in range(workers):
        n = base + (w < extra)
        out.append(list(range(start, start + n)))
        start += n
    return out


def start_workers(cfg: RunConfig, backend: str, workers: int, run_url: str) -> WorkerGroup:
    """``workers`` workers of ``backend``, the dataset's classes split over them (``split_classes``)."""
    splits = split_classes(cfg.data.num_classes, workers)
    if backend == "ray":
        from m3d_condense.pipeline.orchestration.ray_group import RayWorkers

        return RayWorkers(cfg, splits, run_url)
    return LocalWorkers(cfg, splits, run_url)


def resolve_backend(cfg: RunConfig) -> tuple[str, int]:
    """(backend, workers). ``workers`` None means one per GPU of the Ray cluster; with no Ray
    cluster running and at most one local GPU, that is one in-process worker (a Ray actor there
    would only add start-up time and get fewer CPU threads)."""
    backend = str(cfg.backend)
    if backend == "auto":
        single = cfg.workers == 1 or (cfg.workers is None and torch.cuda.device_count() <= 1
                                      and not ray_cluster_running(cfg.ray.address))
        backend = "local" if single else "ray"
    if backend == "local":
        if cfg.workers not in (None, 1):
            raise ConfigError(f"backend=local runs one worker; workers={cfg.workers} needs backend=ray")
        return "local", 1
    from m3d_condense.pipeline.orchestration import ray_group

    ray_group.init(cfg.ray.address)
    if cfg.workers is not None:
        return "ray", int(cfg.workers)
    import ray

    return "ray", max(1, int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 1)


def ray_cluster_running(address: str | None) -> bool:
    """True if ``address`` names a cluster, or a Ray cluster on this machine (``ray start``,
    ``ray up``) answers at the address it left in RAY_ADDRESS or Ray's session file. Checked with
    a plain TCP connection: nothing connects to Ray, and a stale session file costs no timeout."""
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return True
    if connected_ray() is not None:  # a cluster this process is already connected to
        return True
    session = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
    try:
        with open(session) as f:
            host, _, port = f.read().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False
