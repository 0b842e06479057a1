"""A run's durable state at ``OUT_DIR/RUN_NAME`` (any fsspec URL), owned by ``RunStore``.

Every ``checkpoint_every`` iterations each worker writes its slice — the slice format of the
stored set (``results/synthetic.py``) with the optimiser's state added: momentum, iteration,
loss history of its classes — to ``checkpoints/it<t>/synthetic/classes-<a>-<b>.pt`` (temporary
name, then move). Only when every slice of iteration t is written does the driver
record it in ``run.json``: a checkpoint is complete exactly when run.json points to it, and
the older ones are then deleted. A worker restores the rows of *its* classes from whichever
slices hold them, so a resumed run may use a different number of workers.

run.json is first written with the first complete checkpoint (or the condensed set), so a
run that fails before it leaves nothing that would refuse a corrected command.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from m3d_condense.pipeline.config.loader import hydra_overrides
from m3d_condense.pipeline.config.schema import RunConfig, dotted, fingerprint, shaping_values
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.orchestration.lease import RunLease
from m3d_condense.pipeline.results.synthetic import FOLDER, SyntheticSet, read_slice, slice_classes

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


class ResumeError(RunError, ValueError):
    """An existing run directory cannot be continued with this config."""


class Status(str, Enum):
    running = "running"  # condensing; ``iteration`` is the last complete checkpoint
    condensed = "condensed"  # the synthetic set is stored; evaluation and reports remain
    finished = "finished"  # summary.json and the report are written


@dataclass
class RunState:
    """What run.json holds: where the run is, and what it was started with."""

    fingerprint: str
    condensation_config: dict  # the keys that shape the synthetic set (config.shaping_values)
    iterations: int
    status: Status = Status.running
    iteration: int = 0  # of the last complete checkpoint
    slices: list[str] = field(default_factory=list)  # that checkpoint's files, relative to the run
    # Wall seconds spent condensing up to the last checkpoint (then the whole condensation),
    # summed over every process that worked on the run: a resumed run counts all its parts.
    condense_seconds: float | None = None
    condense_it_per_s: float | None = None  # steady state: after the workers started
    # Control plane: median seconds per driver sync beyond the slowest worker's compute; bytes
    # of the last checkpoint (all slices); bytes the workers read to resume (0: a fresh start).
    sync_overhead_s: float | None = None
    checkpoint_bytes: int = 0
    resume_read_bytes: int = 0
    worker_restarts: int = 0  # actors Ray restarted during the last condensation loop
    loss_curve: list[list[float]] = field(default_factory=list)  # [iteration, mean loss]

    @classmethod
    def new(cls, cfg: RunConfig) -> "RunState":
        return cls(fingerprint=fingerprint(cfg), condensation_config=shaping_values(cfg), iterations=cfg.iterations)

    def to_json(self) -> bytes:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return (json.dumps(d, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "RunState":
        try:
            d = json.loads(raw)
            known = {f.name for f in dataclasses.fields(cls)}
            state = cls(**{k: v for k, v in d.items() if k in known})
            state.status = Status(state.status)
            return state
        except (ValueError, TypeError) as e:
            raise ResumeError(f"{where}: not a run state this version can read ({e}); use a new run_name") from None


def changed_keys(old: dict, cfg: RunConfig) -> list[str]:
    """Dotted keys whose value differs between a stored condensation config and ``cfg``. A key
    the stored config lacks counts as changed only if ``cfg`` sets it away from the schema's
    default: a key added to the schema later, at its default, means what the code did before."""
    old_flat, new_flat = dotted(old), dotted(shaping_values(cfg))
    default_flat = dotted(shaping_values(RunConfig()))
    diff = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if key not in old_flat and new_flat.get(key) == default_flat.get(key):
            continue
        if old_flat.get(key) != new_flat.get(key):
            diff.append(key)
    return diff


class RunStore:
    """Reads and writes run.json and the checkpoint slices under ``run_url``."""

    def __init__(self, run_url: str, lease: RunLease | None = None):
        self.url = str(run_url)
        self.lease = lease  # the driver's: every write of run.json first checks it is still held
        self.bytes_written = 0  # checkpoint slices this store wrote, and read (control-plane telemetry)
        self.bytes_read = 0

    def path(self, rel: str) -> str:
        return storage.join(self.url, rel)

    # run.json --------------------------------------------------------------------------
    def read(self) -> RunState | None:
        try:
            return RunState.from_json(storage.read_bytes(self.path(RUN_FILE)), self.path(RUN_FILE))
        except FileNotFoundError:
            return None

    def write(self, state: RunState) -> None:
        if self.lease is not None:
            self.lease.check()
        storage.write_bytes_atomic(self.path(RUN_FILE), state.to_json())

    def open(self, cfg: RunConfig) -> RunState:
        """The state to continue from: run.json's if this directory holds a compatible run
        (ResumeError naming the differing keys otherwise), else a new one (not yet written)."""
        state = self.read()
        if state is None:
            return RunState.new(cfg)
        if state.fingerprint != fingerprint(cfg):
            diff = changed_keys(state.condensation_config, cfg)
            if diff:  # its own values, as overrides: a changed default is then one paste away
                old = dotted(state.condensation_config)
                was = " ".join(hydra_overrides({k: old[k] for k in diff if k in old}))
                raise ResumeError(f"{self.path(RUN_FILE)}: this run was started with a different config "
                                  f"(differs in: {', '.join(diff)}); it ran with {was or 'those keys unset'}: "
                                  "give those to resume it, or use a new run_name")
            state.fingerprint, state.condensation_config = fingerprint(cfg), shaping_values(cfg)
        return state

    def record_checkpoint(self, state: RunState, iteration: int, slices: list[str]) -> None:
        """Make the slices of ``iteration`` the run's checkpoint, then delete every older one."""
        state.status, state.iteration, state.slices = Status.running, iteration, list(slices)
        self.write(state)  # from here on, this checkpoint is the one to resume from
        self._remove_checkpoints_except(_checkpoint_dir(iteration))

    def record_condensed(self, state: RunState, seconds: float, it_per_s: float | None,
                         loss_curve: list[list[float]]) -> None:
        state.status, state.condense_seconds, state.condense_it_per_s = Status.condensed, seconds, it_per_s
        state.loss_curve = loss_curve
        self.write(state)

    def record_finished(self, state: RunState) -> None:
        state.status = Status.finished
        self.write(state)

    # slices ----------------------------------------------------------------------------
    def write_checkpoint_slice(self, iteration: int, condensed: SyntheticSet, classes: list[int],
                               state: dict[str, Any]) -> str:
        """Store the set ``condensed`` of ``classes`` with the optimiser ``state`` (momentum,
        iteration, times, losses) as their slice of the checkpoint of ``iteration``; returns its
        path relative to the run."""
        folder = _checkpoint_dir(iteration)
        entry = condensed.write_slice(self.path(folder), classes, state=state)
        self.bytes_written += entry["bytes"]
        return f"{folder}/{FOLDER}/{entry['file']}"

    def read_checkpoint_slice(self, rel: str) -> dict[str, Any]:
        payload, size = read_slice(self.path(rel), listed_in=self.path(RUN_FILE))
        self.bytes_read += size
        return payload

    def restore(self, state: RunState, classes: list[int]) -> dict[str, Any]:
        """The state of ``classes`` at the run's checkpoint, gathered from its slices: images and
        momentum rows in class order, and the loss history of those classes. Only the slices
        whose class range (in their names) meets ``classes`` are read, so a worker reads about its
        share of a checkpoint, also when the run resumes with another number of workers."""
        rows_img, rows_mom, cols, found = {}, {}, {}, set()
        times = None
        wanted = set(classes)
        for rel in state.slices:
            first, last = slice_classes(rel)
            if not wanted.intersection(range(first, last + 1)):
                continue
            sl = self.read_checkpoint_slice(rel)
            if "momentum" not in sl:
                raise ResumeError(f"{self.path(rel)}: a set's slice without the optimiser state, not a checkpoint slice")
            per = len(sl["images"]) // len(sl["classes"])
            for i, c in enumerate(sl["classes"]):
                if c in classes:
                    rows_img[c], rows_mom[c] = sl["images"][i * per:(i + 1) * per], sl["momentum"][i * per:(i + 1) * per]
                    cols[c] = sl["losses"][:, i] if len(sl["losses"]) else torch.zeros(0)
                    times = sl["times"]
                    found.add(c)
        missing = sorted(set(classes) - found)
        if missing:
            raise ResumeError(f"{self.path(RUN_FILE)}: checkpoint of iteration {state.iteration} lacks classes "
                              f"{missing[:10]}")
        return {"iteration": int(state.iteration), "classes": list(classes),
                "images": torch.cat([rows_img[c] for c in classes]), "momentum": torch.cat([rows_mom[c] for c in classes]),
                "times": list(times or []), "losses": torch.stack([cols[c] for c in classes], dim=1)}

    def _remove_checkpoints_except(self, keep: str) -> None:
        fs, root = storage.filesystem(self.path(CHECKPOINTS))
        try:
            folders = fs.ls(root, detail=False)
        except FileNotFoundError:
            return
        for folder in folders:
            if folder.rstrip("/").rsplit("/", 1)[-1] != keep.rsplit("/", 1)[-1]:
                fs.rm(folder, recursive=True)


def _checkpoint_dir(iteration: int) -> str:
    return f"{CHECKPOINTS}/it{iteration:07d}"
