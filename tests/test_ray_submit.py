"""The product card's exact command: `ray up` + `ray submit cluster.yaml pipeline/run.py PRESET`
with the local provider (cluster/local.yaml), over SSH to an sshd on 127.0.0.1.

INTRUSIVE: it starts an sshd if none runs, appends a key to /root/.ssh/authorized_keys (and, run
from a virtual environment, a PATH line to /root/.bashrc; both removed again afterwards) and ends
with `ray down`, which stops EVERY Ray process on the machine. It is skipped unless
M3D_INTRUSIVE_TESTS=1 (tests/conftest.py); CI (.ci/run) sets it."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from m3d_condense.pipeline.results.synthetic import SyntheticSet

pytestmark = [pytest.mark.runs_last, pytest.mark.intrusive]
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _listening_on_22() -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 22)) == 0


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory):
    """An sshd on 127.0.0.1:22 (started here if none runs) that accepts a fresh key for root."""
    if os.geteuid() != 0 or not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists() or not shutil.which("rsync"):
        pytest.skip("needs root, openssh-server and rsync (.ci/run installs them)")
    key = tmp_path_factory.mktemp("ssh") / "id_m3d"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    started = None
    if not _listening_on_22():
        subprocess.run(["ssh-keygen", "-A"], check=True, capture_output=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        subprocess.run(["/usr/sbin/sshd", "-o", "ListenAddress=127.0.0.1", "-o", "PermitRootLogin=prohibit-password",
                        "-o", "PidFile=/run/sshd-m3d-test.pid"], check=True)
        started = Path("/run/sshd-m3d-test.pid")
    ssh_dir = Path("/root/.ssh")
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    line = key.with_suffix(".pub").read_text()
    with open(auth, "a") as f:
        f.write(line)
    auth.chmod(0o600)
    yield key
    auth.write_text(auth.read_text().replace(line, ""))
    if started and started.exists():
        os.kill(int(started.read_text()), signal.SIGTERM)


@pytest.fixture(scope="module")
def remote_shell_uses_this_python():
    """`ray up` and `ray submit` run `ray` and `python` over SSH in root's login shell (`bash --login
    -i`, which sources ~/.bashrc last), whose PATH does not hold the virtual environment the tests may
    run in (.ci/run makes one, as README installs): there, put its bin folder first on that PATH
    from ~/.bashrc while this module runs."""
    if sys.prefix == sys.base_prefix:
        yield
        return
    bashrc = Path("/root/.bashrc")
    existed = bashrc.exists()
    line = f'\nexport PATH="{Path(sys.executable).parent}:$PATH"  # added by m3d\'s ray submit test\n'
    bashrc.write_text((bashrc.read_text() if existed else "") + line)
    yield
    rest = bashrc.read_text().replace(line, "")
    if existed or rest:
        bashrc.write_text(rest)
    else:
        bashrc.unlink()


def test_ray_up_and_ray_submit_with_the_local_provider_run_the_pipeline(ssh_key, remote_shell_uses_this_python,
                                                                        tmp_path):
    cfg = yaml.safe_load((REPO / "cluster" / "local.yaml").read_text())
    cfg["cluster_name"] = "m3d-test"
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(ssh_key)}
    cfg["setup_commands"] = []  # the project is installed on this machine already (pip install -e on real nodes)
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # ray up/submit use Ray's token auth
    try:
        up = subprocess.run([RAY, "up", "-y", "--no-config-cache", str(config)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert (Path.home() / "m3d" / "pipeline" / "run.py").exists()  # file_mounts copied the project
        submit = subprocess.run([RAY, "submit", str(config), "pipeline/run.py", "digits", f"out_dir={tmp_path}",
                                 "run_name=submitted", "iterations=10", "encoder.width=16", "batch_real=16",
                                 "eval.runs=0", "workers=2", "backend=ray", "device=cpu"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        out = submit.stdout + submit.stderr
        assert submit.returncode == 0, out[-5000:]
        assert "2 worker(s) on 1 node(s)" in out
        syn = SyntheticSet.load(tmp_path / "submitted")
        assert syn.images.shape == (10, 1, 16, 16)
    finally:
        subprocess.run([RAY, "down", "-y", str(config)], cwd=REPO, env=env, capture_output=True, timeout=300)
