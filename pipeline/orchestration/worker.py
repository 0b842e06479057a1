"""One condensation worker: the synthetic images of a slice of the classes, stepped by the
engine and checkpointed. The in-process backend calls it directly; the Ray backend wraps it
in an actor (pipeline/orchestration/ray_group.py). It restores itself from the run's last complete
checkpoint when it starts, so a restarted actor continues without the driver's help."""
from __future__ import annotations

import os
import time

import torch

from m3d_condense.models import decode
from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.data import StreamingClassCache, open_class_cache
from m3d_condense.pipeline.data.labeled import class_major_labels
from m3d_condense.pipeline.logs import log, setup_logging
from m3d_condense.pipeline.method.baselines import select_real
from m3d_condense.pipeline.method.compute import pick_device
from m3d_condense.pipeline.method.diagnostics import moment_report
from m3d_condense.pipeline.method.engine import Condenser, initial_images, step_until
from m3d_condense.pipeline.method.spec import CondenseSpec
from m3d_condense.pipeline.orchestration.placement import check_assigned_gpus, memory_share, node_id, ray_gpu_ids, where
from m3d_condense.pipeline.orchestration.protocol import MomentGaps, SliceEntry, Step, StoredSlice, WorkerInfo
from m3d_condense.pipeline.orchestration.run_store import RunStore
from m3d_condense.pipeline.results.synthetic import SyntheticSet


class ClassWorker:
    """Owns ``classes`` (sorted global indices) of the run configured by ``cfg``."""

    def __init__(self, cfg: RunConfig, classes: list[int], run_url: str, log_prefix: str = ""):
        setup_logging()  # a Ray actor is a fresh process
        self.cfg = cfg
        self.spec = CondenseSpec.of(cfg)  # what the engine, the baselines and the diagnostics read
        self.classes = sorted(int(c) for c in classes)
        self.prefix = log_prefix
        # Shown by the driver, which reads them from info() as soon as the actors are up.
        self.warnings = [w for w in [check_assigned_gpus(self.cfg.device, self._who())] if w]
        self.device = pick_device(self.cfg.device)
        self.memory_share = memory_share(self.device)
        self.run_url = run_url
        self.store = RunStore(run_url)
        start = time.perf_counter()
        self.cache = open_class_cache(self.cfg.data, self.classes, self.device, progress=False, log=self._log)
        if isinstance(self.cache, StreamingClassCache) and self.cfg.data.cache == "auto":
            self.warnings.append(
                f"{self._who()}: its classes fit neither half the free GPU memory nor data.cache_gb="
                f"{self.cfg.data.cache_gb:g}, so every iteration reads and decodes its real batches from the shards "
                "(slow); raise data.cache_gb, use more workers, or set data.cache=stream to accept it")
        self._log(f"{sum(self.cache.count.values())} real images ready in {time.perf_counter() - start:.1f} s "
                  f"on {self.device}")
        self._condenser: Condenser | None = None  # see the condenser property
        self.times: list[int] = []
        self.losses: list[torch.Tensor] = []
        self.restored_from = 0

    @property
    def condenser(self) -> Condenser:
        """The M3D engine of this worker's classes, restored from the run's last checkpoint. Built on
        first use: a worker started for the selection baselines, or for the diagnostics of a run
        that has condensed, never tunes an engine or reads a checkpoint."""
        if self._condenser is None:
            self._condenser = Condenser(self.spec, self.cache, self.classes, self.device, self.memory_share)
            bound = f" (sized for {self.memory_share:.2g} of this node's free memory)" if self.memory_share < 1 else ""
            self._log(f"{self._condenser.chunk} classes per forward{bound}")
            run = self.store.read()
            if run and run.iteration > 0:
                self._restore(run)
                self._log(f"restored from the checkpoint of iteration {self.restored_from}")
        return self._condenser

    def _who(self) -> str:
        return f"{self.prefix or 'worker'} (classes {self.classes[0]}..{self.classes[-1]})"

    def _log(self, msg: str) -> None:
        log.info(f"{self._who()}: {msg}")

    def _restore(self, run) -> None:
        state = self.store.restore(run, self.classes)
        self.condenser.load_state_dict({k: state[k] for k in ("images", "momentum", "iteration", "classes")})
        self.times = list(state["times"])
        self.losses = list(state["losses"]) if len(state["times"]) else []
        self.restored_from = state["iteration"]

    def info(self) -> WorkerInfo:
        return WorkerInfo(classes=self.classes, iteration=self.condenser.iteration if self.cfg.method == "m3d" else 0,
                          restored_from=self.restored_from, restored_bytes=self.store.bytes_read,
                          device=str(self.device), pid=os.getpid(), host=os.uname().nodename, node=node_id(),
                          class_names=self.cache.class_names, where=where(), gpu_ids=ray_gpu_ids(),
                          cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                          memory_share=self.memory_share, warnings=self.warnings)

    def run_until(self, target: int, checkpoint: bool, snapshot_url: str | None = None) -> Step:
        """Step to iteration ``target``; write this slice's checkpoint there if ``checkpoint``,
        and its slice of the set at ``snapshot_url`` if given (``snapshot_every``). Returns the
        iteration reached, the checkpoint's path (or None), the snapshot slice's index entry (or
        None), the mean loss last logged and the seconds spent."""
        start, written = time.perf_counter(), self.store.bytes_written
        history = step_until(self.condenser, target, self.cfg.log_every, last=self.cfg.iterations)
        for t, losses in history:
            self.times.append(t)
            self.losses.append(torch.tensor(losses))
        rel = self.save() if checkpoint else None
        snapshot = self.condensed().write_slice(snapshot_url, self.classes) if snapshot_url else None
        return Step(iteration=self.condenser.iteration, checkpoint=rel, snapshot=snapshot,
                    seconds=time.perf_counter() - start, checkpoint_bytes=self.store.bytes_written - written,
                    loss=sum(history[-1][1]) / len(history[-1][1]) if history else None)

    def condensed(self) -> SyntheticSet:
        """This worker's classes of the set as it stands."""
        return SyntheticSet(self.condenser.images.detach().cpu(), class_major_labels(self.classes, self.cfg.ipc),
                            self.cfg.factor, self.cache.class_names)

    def save(self) -> str:
        return self.store.write_checkpoint_slice(self.condenser.iteration, self.condensed(), self.classes,
                                                 self.state())

    def select(self) -> StoredSlice:
        """Store the images the baseline ``cfg.method`` picks from this worker's classes (real
        images; for ``init`` M3D's starting set, at the factor) as its slice of the run's synthetic
        set; returns the slice's index entry."""
        images, labels = select_real(self.cfg.method, self.spec, self.cache, self.classes, self.device)
        picked = SyntheticSet(images.cpu(), labels.cpu(), self.cfg.stored_factor, self.cache.class_names)
        return StoredSlice(picked.write_slice(self.run_url, self.classes), self.cache.class_names)

    def moments(self) -> MomentGaps:
        """Moment gaps to this worker's real images of its classes' part of the stored synthetic
        set (decoded) and, for M3D, of the initial set; averaged over its classes."""
        images, labels = SyntheticSet.load(self.run_url, self.classes).decoded()
        sets = {"synthetic": (images, labels)}
        if self.cfg.method == "m3d":
            initial = initial_images(self.cache, self.classes, self.spec)
            sets["initial"] = (decode(initial, self.cfg.factor), labels)
        d = self.cfg.diagnostics
        gaps = moment_report(sets, self.cache, self.classes, self.spec, d.encoders, d.real_per_class, self.device)
        return MomentGaps(gaps, len(self.classes))

    def finish(self) -> StoredSlice:
        """Store this worker's condensed images as its slice of the run's synthetic set; returns the
        slice's index entry and the loss history (the images stay here: no process gathers the
        whole set)."""
        stored: SliceEntry = self.condensed().write_slice(self.run_url, self.classes)
        return StoredSlice(stored, self.cache.class_names, **self._history(), restored_from=self.restored_from)

    def state(self) -> dict:
        """What a checkpoint slice holds beside the set's own keys: the optimiser's momentum, the
        iteration and the loss history of this worker's classes."""
        engine = self.condenser.state_dict()
        return {"momentum": engine["momentum"], "iteration": engine["iteration"], **self._history()}

    def _history(self) -> dict:
        losses = torch.stack(self.losses) if self.losses else torch.zeros(0, len(self.classes))
        return {"times": list(self.times), "losses": losses}
