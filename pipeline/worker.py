"""One condensation worker: the synthetic images of a slice of the classes, stepped by the
engine and checkpointed. The in-process backend calls it directly; the Ray backend wraps it
in an actor (pipeline/ray_backend.py). It restores itself from the run's last complete
checkpoint when it starts, so a restarted actor continues without the driver's help."""
from __future__ import annotations

import os
import sys
import time

import torch
from omegaconf import OmegaConf

from pipeline.checkpoint import RunStore
from pipeline.data import open_class_pool
from pipeline.engine import Condenser, EngineSettings, condense


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


class ClassWorker:
    """Owns ``classes`` (sorted global indices) of the run configured by ``cfg`` (a plain dict)."""

    def __init__(self, cfg: dict, classes: list[int], run_url: str, log_prefix: str = ""):
        self.cfg = OmegaConf.create(cfg)
        self.classes = sorted(int(c) for c in classes)
        self.device = pick_device(self.cfg.device)
        self.store = RunStore(run_url)
        self.prefix = log_prefix
        start = time.perf_counter()
        pool = open_class_pool(self.cfg.data, self.classes, self.device, progress=False, log=self._log)
        self.condenser = Condenser(EngineSettings.from_config(self.cfg), pool, self.classes, self.device)
        self._log(f"{sum(pool.count.values())} real images ready in {time.perf_counter() - start:.1f} s; "
                  f"{self.condenser.chunk} classes per forward on {self.device}")
        self.times: list[int] = []
        self.losses: list[torch.Tensor] = []
        self.restored_from = 0
        run = self.store.read_run()
        if run and run.get("iteration", 0) > 0:
            self._restore(run)
            self._log(f"restored from the checkpoint of iteration {self.restored_from}")

    def _log(self, msg: str) -> None:
        span = f"{self.classes[0]}..{self.classes[-1]}"
        print(f"[m3d] {self.prefix or 'worker'} (classes {span}): {msg}", file=sys.stderr, flush=True)

    def _restore(self, run: dict) -> None:
        state = self.store.restore(run, self.classes)
        self.condenser.load_state_dict({k: state[k] for k in ("images", "momentum", "iteration", "classes")})
        self.times = list(state["times"])
        self.losses = list(state["losses"]) if len(state["times"]) else []
        self.restored_from = state["iteration"]

    def info(self) -> dict:
        return {"classes": self.classes, "iteration": self.condenser.iteration, "restored_from": self.restored_from,
                "device": str(self.device), "pid": os.getpid(), "host": os.uname().nodename, "node": _node_id(),
                "class_names": self.condenser.pool.class_names}

    def run_until(self, target: int, checkpoint: bool) -> dict:
        """Step to iteration ``target``; write this slice's checkpoint there if ``checkpoint``.
        Returns the iteration reached, the checkpoint's path (or None), the mean loss last
        logged and the seconds spent."""
        start = time.perf_counter()
        history = condense(self.condenser, target, self.cfg.log_every, progress=False, last=self.cfg.iterations)
        for t, losses in history:
            self.times.append(t)
            self.losses.append(torch.tensor(losses))
        rel = self.save() if checkpoint else None
        return {"iteration": self.condenser.iteration, "checkpoint": rel, "seconds": time.perf_counter() - start,
                "loss": sum(history[-1][1]) / len(history[-1][1]) if history else None}

    def save(self) -> str:
        return self.store.save_slice(self.condenser.iteration, self.classes, self.state())

    def state(self) -> dict:
        losses = torch.stack(self.losses) if self.losses else torch.zeros(0, len(self.classes))
        return {"classes": self.classes, "iteration": self.condenser.iteration, "images": self.condenser.images.cpu(),
                "momentum": self.condenser.momentum.cpu(), "times": list(self.times), "losses": losses}




def _node_id() -> str:
    """The Ray node this worker runs on (the host name outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return os.uname().nodename
