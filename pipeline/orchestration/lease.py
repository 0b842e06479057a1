"""One driver per run directory: ``RUN_DIR/lease.json`` names the process driving the run.

A scheduled rerun (cron, a systemd timer) can start while the previous one still runs; two
drivers on one run directory would write the same checkpoints and run.json. So the driver takes
the run's lease before it reads run.json and holds it to the end:

- taking it: refused (``RunInUseError``, naming the file and the holder) while another live
  process holds it. A holder is live when its heartbeat is younger than ``stale_after_s``
  (10 minutes) and, on this same host, its process still exists (the same process: its pid
  and start time); so a driver killed on this host (SIGKILL, a reboot, a restarted container
  whose new driver got the old pid) is taken over at once, one on another host after 10 minutes.
- holding it: a daemon thread rewrites the heartbeat every ``heartbeat_s`` (60 s), also while
  the driver waits on long evaluations. Before every write of run.json, ``RunStore`` asks
  ``check()``, which fails if the lease now names another process (this one stalled past the
  stale limit and was taken over): the newer driver owns the run and this one stops.
- releasing it: the file is deleted when the driver ends, failed or not, if it is still ours.

This is a best-effort guard on any fsspec store (no store here offers compare-and-swap to all
of them): two drivers started within the same second may both pass, which the read-back after
the write narrows to a few milliseconds. Hosts are compared by name and clocks are trusted to
agree within minutes (NTP), as on any cluster.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.logs import log

LEASE_FILE = "lease.json"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class RunInUseError(RunError):
    """Another live process drives this run directory."""


@dataclass(frozen=True)
class Holder:
    """Who holds a run's lease; ``started`` and ``heartbeat`` are Unix seconds."""

    token: str
    host: str
    pid: int
    started: float
    heartbeat: float
    process: str = ""  # which process had that pid (process_identity), so a reused pid is not taken for it

    def to_json(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "Holder":
        try:
            d = json.loads(raw)
            return cls(str(d["token"]), str(d["host"]), int(d["pid"]), float(d["started"]), float(d["heartbeat"]),
                       str(d.get("process", "")))
        except (ValueError, KeyError, TypeError) as e:
            raise RunError(f"{where}: not a run lease ({type(e).__name__}: {e}); if no process drives this "
                           "run, delete the file") from e

    def describe(self, now: float) -> str:
        return f"pid {self.pid} on host {self.host}, heartbeat {now - self.heartbeat:.0f} s ago"


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_identity(pid: int) -> str:
    """The boot and start time of process ``pid`` on Linux ("" elsewhere, or if it does not
    exist): a pid is reused, this pair is not (a restarted container's driver often gets the
    pid its predecessor had)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime, after "pid (comm)"
    except (OSError, IndexError):
        return ""
    return f"{boot}:{start}"


def is_live(holder: Holder, now: float, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether ``holder`` still drives its run: a fresh heartbeat and, on this host, its process."""
    if now - holder.heartbeat >= stale_after_s:
        return False
    if holder.host != socket.gethostname():
        return True
    now_running = process_identity(holder.pid)
    if holder.process and now_running:
        return now_running == holder.process
    return process_exists(holder.pid)


class RunLease:
    """The lease of the run at ``run_url``, as a context manager::

        with RunLease(run_url) as lease:   # RunInUseError if another live process holds it
            RunStore(run_url, lease=lease) ...
    """

    def __init__(self, run_url: str, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
        self.url = storage.join(run_url, LEASE_FILE)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        now = time.time()
        self.mine = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now, process_identity(os.getpid()))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> Holder | None:
        try:
            return Holder.from_json(storage.read_bytes(self.url), self.url)
        except FileNotFoundError:
            return None

    def acquire(self) -> None:
        now = time.time()
        held = self.read()
        if held is not None and is_live(held, now, self.stale_after_s):
            raise self._in_use(held, now)
        self.mine = dataclasses.replace(self.mine, heartbeat=now)
        storage.write_bytes_atomic(self.url, self.mine.to_json())
        after = self.read()
        if not self._is_mine(after):  # another driver wrote in between
            raise self._in_use(after or held or self.mine, time.time())
        self._thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Fail if another process has taken the run since this one took it."""
        held = self.read()
        if not self._is_mine(held):
            raise RunInUseError(f"{self.url}: another process took over this run"
                                f"{' (' + held.describe(time.time()) + ')' if held else ''} while this one "
                                f"stalled for over {self.stale_after_s:.0f} s; it owns the run now, so this "
                                "process stops without writing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            held = self.read()
            if self._is_mine(held):
                storage.remove(self.url)
        except Exception as e:  # noqa: BLE001 - must not hide the error the run may be ending with
            log.warning(f"{self.url}: could not release the run's lease ({type(e).__name__}: {e}); it lapses "
                        f"{self.stale_after_s:.0f} s after its last heartbeat")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._is_mine(self.read()):
                    return  # taken over: check() reports it before the next write of run.json
                self.mine = dataclasses.replace(self.mine, heartbeat=time.time())
                storage.write_bytes_atomic(self.url, self.mine.to_json())
            except Exception as e:  # noqa: BLE001 - a store down for a while: beat again; the lease lapses only if it stays down
                log.warning(f"{self.url}: heartbeat not written ({type(e).__name__}: {e})")

    def _is_mine(self, held: Holder | None) -> bool:
        return held is not None and held.token == self.mine.token

    def _in_use(self, held: Holder, now: float) -> RunInUseError:
        return RunInUseError(
            f"{self.url}: this run is being driven by another process ({held.describe(now)}); a second "
            "driver would overwrite its checkpoints. Wait for it to end; if that process is gone, the "
            f"lease lapses {self.stale_after_s:.0f} s after its last heartbeat (at once on its own host), "
            "or delete this file")

    def __enter__(self) -> "RunLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
