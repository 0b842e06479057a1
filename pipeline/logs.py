"""The ``m3d`` logger every part of a run writes to, and its one-line stderr format."""
from __future__ import annotations

import logging
import sys

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
