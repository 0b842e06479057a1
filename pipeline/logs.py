"""The ``m3d`` logger every part of a run writes to, its one-line stderr format, and the
progress bars of long steps."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("m3d")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (notebooks and tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"[m3d] {level}{record.getMessage()}"


def setup_logging(level: int = logging.INFO) -> None:
    """Show the ``m3d`` logger's records on stderr as ``[m3d] message`` (once per process; a
    handler the user attached to it instead is left alone)."""
    if log.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(_Format())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (a widget in notebooks), off when ``progress`` is False or the environment
    has ``TQDM_DISABLE=1`` (e.g. the log of a scheduled run). tqdm itself reads TQDM_DISABLE
    only when it is imported and only for calls that do not pass ``disable``; read it here at
    each call instead, so that setting it later (a notebook, a test) works too."""
    if not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
