"""Evaluation runs recorded one by one, so a killed evaluation loses only the run in progress.

Beside a stored set (a run directory, or one of its snapshots), every evaluation run writes
its result when it ends::

    evals/<settings>/<arch>-run<k>.json     EvalResult of run k of architecture arch

``<settings>`` is a hash of everything that decides the run's outcome apart from its index:
the evaluation section of the config (recipe, epochs, lr, precision, compile, ...) without
``runs`` and ``archs``, and the run seed. A rerun with the same settings reads the runs that
ended instead of training them again (``eval.runs=10`` after 5 trains 5 more); other settings
have a folder of their own, so a record is never read under settings it was not made with.
Delete ``evals/`` to evaluate from scratch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.evaluation.training import EvalResult

FOLDER = "evals"


class EvalRecordError(RunError, ValueError):
    """A recorded evaluation run cannot be read."""


def settings_key(cfg: RunConfig) -> str:
    """12 hex digits naming the evaluation settings of ``cfg`` (see the module docstring)."""
    from m3d_condense.pipeline.config.loader import to_dict  # Hydra: only when a run records its evaluation

    settings = {k: v for k, v in to_dict(cfg)["eval"].items() if k not in ("runs", "archs")}
    settings["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class EvalRecords:
    """The recorded evaluation runs of the set stored at ``set_url`` under ``cfg``'s settings."""

    def __init__(self, set_url: str, cfg: RunConfig):
        self.url = storage.join(str(set_url), FOLDER, settings_key(cfg))

    def path(self, arch: str, run: int) -> str:
        return storage.join(self.url, f"{arch}-run{run}.json")

    def read(self, arch: str, run: int) -> EvalResult | None:
        """Run ``run`` of ``arch`` if it ended earlier, else None. A record that does not parse
        (a write cut short cannot happen: writes are atomic) is an error naming the file."""
        path = self.path(arch, run)
        try:
            raw = storage.read_bytes(path)
        except FileNotFoundError:
            return None
        try:
            d = json.loads(raw)
            d["curve"] = [tuple(point) for point in d["curve"]]
            return EvalResult(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise EvalRecordError(f"{path}: not an evaluation record ({e}); delete it to run that evaluation again") from None

    def write(self, result: EvalResult, run: int) -> str:
        return write_record(self.path(result.arch, run), result)


def write_record(path: str, result: EvalResult) -> str:
    """Record ``result`` at ``path`` (atomically: a reader finds the whole record or none)."""
    storage.write_bytes_atomic(path, json.dumps(dataclasses.asdict(result)).encode())
    return path
