"""Where a run's work happens: one worker in this process, or Ray actors and tasks.

Both backends give the driver the same worker-group protocol (``WorkerGroup``): ``call`` runs
a ``ClassWorker`` method on every worker and returns their results in worker order; ``stop``
releases them. The Ray placement itself is in ``pipeline/ray_backend.py``.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
from typing import Any, Protocol

import torch

from m3d_condense.pipeline.config import ConfigError, RunConfig
from m3d_condense.pipeline.worker import ClassWorker


class WorkerGroup(Protocol):
    splits: list[list[int]]  # the classes of each worker, in worker order

    def call(self, method: str, *args: Any) -> list[Any]:
        """``ClassWorker.<method>(*args)`` on every worker; results in worker order."""

    def call_each(self, method: str, args: list[tuple]) -> list[Any]:
        """``ClassWorker.<method>(*args[i])`` on worker i; results in worker order."""

    def stop(self) -> None:
        """Release the workers."""


class LocalWorkers:
    """The in-process backend: the same ClassWorker, called directly."""

    def __init__(self, cfg: RunConfig, splits: list[list[int]], run_url: str):
        self.splits = splits
        self.workers = [ClassWorker(cfg, s, run_url) for s in splits]

    def call(self, method: str, *args: Any) -> list[Any]:
        return self.call_each(method, [args] * len(self.workers))

    def call_each(self, method: str, args: list[tuple]) -> list[Any]:
        return [getattr(w, method)(*a) for w, a in zip(self.workers, args, strict=True)]

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
        from m3d_condense.pipeline.ray_backend import RayWorkers

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
    from m3d_condense.pipeline import ray_backend

    ray_backend.init(cfg.ray.address)
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
    ray = sys.modules.get("ray")  # a cluster this process is already connected to
    if ray is not None and ray.is_initialized():
        return True
    session = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
    try:
        with open(session) as f:
            host, _, port = f.read().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False
