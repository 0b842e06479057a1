"""The ``m3d`` logger every part of a run writes to, its one-line stderr format, and the
progress bars of long steps (plain progress lines where stderr is a file)."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as _auto_tqdm  # already imported, without its warning, by tqdm.auto
from tqdm.std import tqdm as _std_tqdm

log = logging.getLogger("m3d")
IN_NOTEBOOK = _auto_tqdm is not _std_tqdm  # tqdm.auto shows widgets there (stderr is no terminal in a kernel)
PLAIN_PROGRESS_INTERVAL_S = 30.0


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


class PlainProgress:
    """What stands in for a tqdm bar where stderr is not a terminal (a file: cron, systemd, a Ray
    job's log), where every refresh of a bar would become a line: one plain line
    ``desc:  40% 40/100 [00:12<00:18, 3.25it/s, postfix]`` at most every ``interval`` seconds,
    and the last one when the bar closes. Lines go to ``file`` if given, else to the ``m3d``
    logger where it (or an ancestor) has a handler, else to stderr. Takes tqdm's arguments (those
    that only shape a terminal bar are ignored) and offers what the callers use of a bar:
    iteration, ``update``, ``set_postfix``, ``set_description``, ``close`` and ``with``."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: float | None = None,
                 *, initial: float = 0, unit: str = "it", file: TextIO | None = None,
                 interval: float = PLAIN_PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 **_terminal_options: Any):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "", total, unit
        self.n = self.initial = initial
        self.file, self.interval, self.clock = file, interval, clock
        self.postfix, self.closed = "", False
        self.start = self.last_line = clock()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:  # type: ignore[union-attr]
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.clock() - self.last_line >= self.interval:
            self._line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()

    def _line(self) -> None:
        self.last_line = now = self.clock()
        known = self.total is not None and self.total > 0
        bar_format = ("{desc}{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
                      if known else "{desc}{n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]")
        line = _std_tqdm.format_meter(self.n, self.total if known else None, now - self.start,
                                      prefix=f"{self.desc}: " if self.desc else "", unit=self.unit,
                                      postfix=self.postfix or None, bar_format=bar_format, initial=self.initial)
        if self.file is not None:
            self.file.write(f"{line}\n")
            self.file.flush()
        elif log.hasHandlers():
            log.info(line)
        else:
            sys.stderr.write(f"[m3d] {line}\n")
            sys.stderr.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> tqdm | PlainProgress:
    """A tqdm bar on a terminal (a widget in notebooks); where stderr (or ``file``) is not a
    terminal, e.g. a log file, a ``PlainProgress`` that writes a plain line every
    PLAIN_PROGRESS_INTERVAL_S seconds and at the end instead of every refresh. Off when
    ``progress`` is False or the environment has ``TQDM_DISABLE=1``. tqdm itself reads
    TQDM_DISABLE only when it is imported and only for calls that do not pass ``disable``; read
    it here at each call instead, so that setting it later (a notebook, a test) works too."""
    if not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        kwargs["disable"] = True
        return tqdm(iterable, **kwargs)
    if IN_NOTEBOOK or _is_terminal(kwargs.get("file") or sys.stderr):
        return tqdm(iterable, **kwargs)
    return PlainProgress(iterable, **kwargs)
