"""One driver per run directory (pipeline/orchestration/lease.py): a second driver of a running
run is refused and writes nothing; a lease whose holder is gone is taken over; a driver whose
lease was taken stops before it writes run.json. On local disk and on a local S3 server."""
import json
import os
import socket
import subprocess
import sys
import time

import fsspec
import pytest
from conftest import REPO

from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.orchestration.lease import LEASE_FILE, Holder, RunInUseError, RunLease
from m3d_condense.pipeline.orchestration.run_store import RUN_FILE, RunState, RunStore


@pytest.fixture(params=["local", "s3"])
def run_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return f"{request.getfixturevalue('s3_bucket')}/run"


def hold(run_url: str, host: str, pid: int, age_s: float = 0.0) -> Holder:
    """Write a lease as another driver would have left it, its heartbeat ``age_s`` old."""
    beat = time.time() - age_s
    holder = Holder("another-driver", host, pid, beat, beat)
    storage.write_bytes_atomic(storage.join(run_url, LEASE_FILE), holder.to_json())
    return holder


def ended_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lease_held_on_another_host_is_refused_until_its_heartbeat_is_ten_minutes_old(run_url):
    hold(run_url, "another-host", 4242, age_s=30)
    with pytest.raises(RunInUseError, match=r"lease.json: this run is being driven by another process "
                                            r"\(pid 4242 on host another-host, heartbeat 30 s ago\)"):
        RunLease(run_url).acquire()
    assert RunLease(run_url).read().token == "another-driver"  # the refused driver wrote nothing

    hold(run_url, "another-host", 4242, age_s=601)
    with RunLease(run_url) as lease:
        assert lease.read().token == lease.mine.token and lease.read().host == socket.gethostname()
    assert not storage.exists(storage.join(run_url, LEASE_FILE))  # released: deleted


def test_a_lease_of_this_host_lapses_at_once_when_its_process_has_ended(run_url):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        hold(run_url, socket.gethostname(), sleeper.pid)
        with pytest.raises(RunInUseError, match=f"pid {sleeper.pid} on host"):
            RunLease(run_url).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    hold(run_url, socket.gethostname(), ended_pid())  # as a SIGKILLed driver leaves it: fresh, but its process gone
    with RunLease(run_url) as lease:
        assert lease.read().pid == os.getpid()


def test_a_lease_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    run_url = str(tmp_path / "run")
    me = socket.gethostname(), os.getpid()
    predecessor = Holder("restarted", *me, time.time(), time.time(), process="an-earlier-boot:1234")
    storage.write_bytes_atomic(storage.join(run_url, LEASE_FILE), predecessor.to_json())
    with RunLease(run_url) as lease:  # e.g. a restarted container's driver, given its predecessor's pid
        assert lease.read().token == lease.mine.token
        with pytest.raises(RunInUseError, match=f"pid {os.getpid()} on host"):
            RunLease(run_url).acquire()  # a second driver in this very process is refused


def test_the_heartbeat_advances_while_the_lease_is_held(run_url):
    with RunLease(run_url, heartbeat_s=0.05) as lease:
        first = lease.read().heartbeat
        deadline = time.monotonic() + 10
        while lease.read().heartbeat == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.read().heartbeat > first and lease.read().token == lease.mine.token


def test_a_driver_whose_run_was_taken_over_stops_before_writing_run_json(run_url):
    lease = RunLease(run_url)
    lease.acquire()
    store = RunStore(run_url, lease=lease)
    store.write(RunState.new(RunConfig()))  # held: run.json is written
    written = storage.read_bytes(storage.join(run_url, RUN_FILE))

    hold(run_url, "another-host", 7)  # this driver stalled past the stale limit; another took the run over
    state = RunState.new(RunConfig())
    state.iteration = 99
    with pytest.raises(RunInUseError, match="another process took over this run"):
        store.write(state)
    assert storage.read_bytes(storage.join(run_url, RUN_FILE)) == written  # the newer driver's run.json stands
    lease.release()
    assert lease.read().token == "another-driver"  # releasing does not delete a lease that is not ours


def test_a_damaged_lease_file_is_an_error_that_names_it(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LEASE_FILE).write_text("{not json")
    with pytest.raises(RunError, match=f"{tmp_path / 'run' / LEASE_FILE}: not a run lease"):
        RunLease(str(tmp_path / "run")).acquire()


def test_a_second_driver_of_a_running_run_is_refused_and_the_first_runs_on(tmp_path):
    cmd = [sys.executable, str(REPO / "pipeline" / "run.py"), "digits", f"out_dir={tmp_path}", "run_name=r",
           "iterations=5000", "checkpoint_every=10", "eval.runs=0", "encoder.width=16", "batch_real=16",
           "device=cpu", "workers=1", "diagnostics.moments=false"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    log = tmp_path / "first.log"
    first = subprocess.Popen(cmd, stderr=log.open("w"), env=env)
    try:
        run_json = tmp_path / "r" / RUN_FILE
        deadline = time.monotonic() + 600
        while not (run_json.exists() and json.loads(run_json.read_text())["iteration"] >= 10):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert first.poll() is None, log.read_text()  # refused while the first one ran
        assert second.returncode == 2
        assert f"lease.json: this run is being driven by another process (pid {first.pid} on host" in second.stderr
        assert "resumed" not in second.stderr and "restored" not in second.stderr
        at = json.loads(run_json.read_text())["iteration"]
        deadline = time.monotonic() + 600
        while json.loads(run_json.read_text())["iteration"] == at:  # the first driver keeps checkpointing
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    fs = fsspec.filesystem("file")
    assert fs.exists(str(tmp_path / "r" / LEASE_FILE))  # a killed driver leaves its lease (the next one takes it over)
