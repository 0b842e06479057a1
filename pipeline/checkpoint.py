"""A run's durable state at ``OUT_DIR/RUN_NAME`` (any fsspec URL).

Every ``checkpoint_every`` iterations each worker writes its slice — synthetic images,
momentum, iteration, loss history of its classes — to ``checkpoints/it<t>/classes-<a>-<b>.pt``
(temporary name, then move). Only when every slice of iteration t is written does the driver
write ``run.json`` naming them: a checkpoint is complete exactly when run.json points to it.
A worker restores the rows of *its* classes from whichever slices hold them, so a resumed run
may use a different number of workers.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import torch
from m3d_condense.pipeline.data import storage
from omegaconf import DictConfig, OmegaConf

RUN_FILE = "run.json"
# Keys that change where or how a run executes, or what is done after condensation, but not
# the synthetic set: a run may resume with different values of these.
NOT_IN_FINGERPRINT = ("eval", "out_dir", "run_name", "workers", "backend", "checkpoint_every", "device", "reevaluate",
                      "chunk_classes", "diagnostics",
                      "ray", "log_every", "data.root", "data.cache", "data.cache_gb", "data.read_workers", "data.verify",
                      "data.source")


class ResumeError(ValueError):
    """An existing run directory cannot be continued with this config."""


def condensation_config(cfg: DictConfig) -> dict:
    """The part of the config that determines the synthetic set."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IN_FINGERPRINT:
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return d


def fingerprint(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(condensation_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class RunStore:
    """Reads and writes run.json and the checkpoint slices under ``run_url``."""

    def __init__(self, run_url: str):
        self.url = str(run_url)

    def path(self, rel: str) -> str:
        return storage.join(self.url, rel)

    # run.json --------------------------------------------------------------------------
    def read_run(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.path(RUN_FILE)))
        except FileNotFoundError:
            return None

    def write_run(self, run: dict) -> None:
        storage.write_bytes_atomic(self.path(RUN_FILE), (json.dumps(run, indent=2) + "\n").encode())

    def check_compatible(self, run: dict, cfg: DictConfig) -> None:
        """ResumeError naming the differing keys if ``run`` was started with another config."""
        if run.get("fingerprint") == fingerprint(cfg):
            return
        old, new = _flat(run.get("condensation_config", {})), _flat(condensation_config(cfg))
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise ResumeError(f"{self.path(RUN_FILE)}: this run was started with a different config "
                          f"(differs in: {', '.join(diff) or '?'}); use a new run_name or the original settings")

    # slices ----------------------------------------------------------------------------
    def save_slice(self, iteration: int, classes: list[int], state: dict[str, Any]) -> str:
        rel = f"checkpoints/it{iteration:07d}/classes-{classes[0]:05d}-{classes[-1]:05d}.pt"
        buf = io.BytesIO()
        torch.save(state, buf)
        storage.write_bytes_atomic(self.path(rel), buf.getvalue())
        return rel

    def load_slice(self, rel: str) -> dict[str, Any]:
        return torch.load(io.BytesIO(storage.read_bytes(self.path(rel))), weights_only=True, map_location="cpu")

    def restore(self, run: dict, classes: list[int]) -> dict[str, Any]:
        """The state of ``classes`` at run["iteration"], gathered from the slices run.json lists:
        images and momentum rows in class order, and the loss history of those classes."""
        rows_img, rows_mom, cols, found = {}, {}, {}, set()
        times = None
        for rel in run["slices"]:
            sl = self.load_slice(rel)
            per = len(sl["images"]) // len(sl["classes"])
            for i, c in enumerate(sl["classes"]):
                if c in classes:
                    rows_img[c], rows_mom[c] = sl["images"][i * per:(i + 1) * per], sl["momentum"][i * per:(i + 1) * per]
                    cols[c] = sl["losses"][:, i] if len(sl["losses"]) else torch.zeros(0)
                    times = sl["times"]
                    found.add(c)
        missing = sorted(set(classes) - found)
        if missing:
            raise ResumeError(f"{self.path(RUN_FILE)}: checkpoint of iteration {run['iteration']} lacks classes "
                              f"{missing[:10]}")
        return {"iteration": int(run["iteration"]), "classes": list(classes),
                "images": torch.cat([rows_img[c] for c in classes]), "momentum": torch.cat([rows_mom[c] for c in classes]),
                "times": list(times or []), "losses": torch.stack([cols[c] for c in classes], dim=1)}

    def remove_checkpoints_except(self, keep: str) -> None:
        """Delete checkpoint folders other than ``keep`` (e.g. ``checkpoints/it0000500``)."""
        fs, root = storage.filesystem(self.path("checkpoints"))
        try:
            folders = fs.ls(root, detail=False)
        except FileNotFoundError:
            return
        for folder in folders:
            if folder.rstrip("/").rsplit("/", 1)[-1] != keep.rsplit("/", 1)[-1]:
                fs.rm(folder, recursive=True)
