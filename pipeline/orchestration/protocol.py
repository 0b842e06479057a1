"""The worker protocol: what the driver asks a group of workers (``WorkerGroup``) and what each
worker answers, as dataclasses. ``ClassWorker`` (``orchestration/worker.py``) implements one
worker; ``LocalWorkers`` (``orchestration/groups.py``) and ``RayWorkers``
(``orchestration/ray_group.py``) run a group of them in this process or as Ray actors, each
method on every worker, results in worker order."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

SliceEntry = dict[str, Any]  # a stored slice's entry in the set's index (``SyntheticSet.write_slice``)


@dataclass
class WorkerInfo:
    """A started worker: its classes, where it runs and how far it has condensed."""

    classes: list[int]
    iteration: int  # the iteration it resumed at (0: fresh, or not condensing)
    restored_from: int
    restored_bytes: int  # checkpoint bytes it read to resume
    device: str
    pid: int
    host: str
    node: str  # the Ray node id (the host name outside Ray)
    class_names: list[str]  # of every class of the dataset
    where: str
    gpu_ids: list[str]
    cuda_visible_devices: str | None
    memory_share: float = 1.0  # of its node's free memory its steps are sized for (placement.memory_share)
    warnings: list[str] = field(default_factory=list)  # shown by the driver


@dataclass
class Step:
    """A worker stepped to an iteration (``run_until``)."""

    iteration: int
    checkpoint: str | None  # the checkpoint slice written there (relative path), if asked for
    snapshot: SliceEntry | None  # the snapshot slice stored there, if asked for
    seconds: float
    checkpoint_bytes: int
    loss: float | None  # the mean loss last logged


@dataclass
class StoredSlice:
    """A worker's classes of the set, stored (``select``, ``finish``), with the loss history of
    a condensation (empty for a selection)."""

    slice: SliceEntry
    class_names: list[str]
    times: list[int] = field(default_factory=list)
    losses: torch.Tensor | None = None  # (len(times), classes)
    restored_from: int = 0


@dataclass
class MomentGaps:
    """Moment gaps of a worker's classes of the set to its real images, averaged over them."""

    gaps: dict[str, dict[str, float]]  # set name -> moment -> gap
    classes: int


@dataclass(frozen=True)
class EvalJob:
    """One evaluation run: a network of ``arch`` trained from ``seed`` (run ``run`` of its arch)."""

    arch: str
    run: int
    seed: int


@dataclass
class EvalPlacement:
    """What a Ray evaluation task held: its GPUs and resources, and a GPU warning (or None)."""

    gpu_ids: list[str]
    resources: dict[str, float]
    warning: str | None


class WorkerGroup(Protocol):
    """Workers that each own a slice of the classes (``splits``); every method runs on all of
    them and returns their answers in worker order."""

    splits: list[list[int]]

    def info(self) -> list[WorkerInfo]: ...

    def run_until(self, target: int, checkpoint: bool, snapshot_url: str | None = None) -> list[Step]: ...

    def select(self) -> list[StoredSlice]: ...

    def finish(self) -> list[StoredSlice]: ...

    def moments(self) -> list[MomentGaps]: ...

    def stop(self) -> None: ...
