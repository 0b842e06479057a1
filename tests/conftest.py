import os
from pathlib import Path

import numpy as np
import pytest
import torch

from m3d_condense.pipeline.data import LabeledImages

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TQDM_DISABLE", "1")


def synthetic_classes(num_classes=4, per_class=40, size=12, channels=1, seed=0) -> LabeledImages:
    """Small real uint8 images whose classes differ (each class a different blob position)."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for c in range(num_classes):
        cy, cx = size * (0.25 + 0.5 * (c % 2)), size * (0.25 + 0.5 * (c // 2 % 2))
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
        noise = torch.rand(per_class, channels, size, size, generator=g) * 0.4
        img = (blob * 0.6 + noise + 0.1 * (c // 4)).clamp(0, 1)
        images.append((img * 255).round().to(torch.uint8))
        labels.append(torch.full((per_class,), c))
    return LabeledImages(torch.cat(images), torch.cat(labels), [f"class{c}" for c in range(num_classes)])


def write_npz(folder: Path, split: str, data: LabeledImages) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.npz"
    np.savez_compressed(path, x=data.images.permute(0, 2, 3, 1).numpy(), y=data.labels.numpy(),
                        class_names=np.array(data.class_names))
    return path


@pytest.fixture
def tiny_data() -> LabeledImages:
    return synthetic_classes()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto in server mode) on 127.0.0.1; s3fs and botocore find it through the
    standard AWS_* environment variables, as they would find a MinIO or Ceph endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _clear_s3_clients()
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _clear_s3_clients()


def _clear_s3_clients() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket per test: ``s3://<name>``."""
    import uuid

    import fsspec

    name = f"t-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
os.environ.update(RAY_ENV)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real Ray head on 127.0.0.1 (`ray start --head`), with the job-submission API; yields
    (GCS address, dashboard URL). At the end of the session only ITS processes are stopped (they
    carry its own temp dir on their command lines): a Ray the user runs on the machine survives."""
    import subprocess
    import sys

    import ray as ray_module

    ray_module.shutdown()  # an in-process Ray started by an earlier test would hold the default ports
    gcs, dash, agent = free_port(), free_port(), free_port()
    temp_dir = tmp_path_factory.mktemp("ray")  # short: Ray's socket paths live under it
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    env = {**os.environ, **RAY_ENV}
    subprocess.run([*ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=4",
                    "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats",
                    f"--temp-dir={temp_dir}"], check=True, env=env, capture_output=True, timeout=120)
    yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
    ray_module.shutdown()
    stop_processes_mentioning(str(temp_dir))


def stop_processes_mentioning(marker: str, grace_s: float = 10.0) -> None:
    """SIGTERM every process whose command line contains ``marker``, SIGKILL what remains."""
    import signal
    import time

    def matching() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while matching() and time.monotonic() < deadline:
            time.sleep(0.2)


INTRUSIVE_VARIABLE = "M3D_INTRUSIVE_TESTS"


def intrusive_tests_asked() -> bool:
    return os.environ.get(INTRUSIVE_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``runs_last`` go to the end: `ray down` stops every Ray process on the machine.
    Tests marked ``cuda`` are skipped where torch sees no CUDA device. Tests marked ``intrusive``
    (they change the machine outside their temporary folders) run only when asked for with
    M3D_INTRUSIVE_TESTS=1, as .ci/run does."""
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)
    skips = {"intrusive": None if intrusive_tests_asked() else
             f"intrusive: changes the machine outside temporary folders; set {INTRUSIVE_VARIABLE}=1 to run it",
             "cuda": None if torch.cuda.is_available() else "needs a CUDA GPU"}
    for item in items:
        for marker, reason in skips.items():
            if reason and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                break
