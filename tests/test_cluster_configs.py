"""The cluster launcher configs pass Ray's own schema check and the scheduled-rerun entries
name a command that the pipeline accepts."""
import shlex

import pytest
import yaml
from conftest import REPO

from m3d_condense.pipeline.config.loader import compose_config, to_run_config

CLUSTER = REPO / "cluster"


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "local.yaml"])
def test_launcher_config_passes_rays_schema_and_installs_the_project_everywhere(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(prepare_config(cfg))
    assert cfg["file_mounts"] == {"~/m3d": "."}  # ray submit copies only run.py
    assert any("pip install" in c and "-e ~/m3d" in c for c in cfg["setup_commands"])


def _run_args(command: str) -> list[str]:
    words = shlex.split(command.split(">>")[0])
    return words[words.index("pipeline/run.py") + 1:]


@pytest.mark.parametrize("entry", ["m3d-rerun.cron", "m3d-rerun.service"])
def test_scheduled_rerun_runs_a_fixed_run_name_with_a_valid_config(entry):
    text = (CLUSTER / "schedule" / entry).read_text()
    line = next(ln for ln in text.splitlines() if "pipeline/run.py" in ln and not ln.startswith("#"))
    args = _run_args(line)
    cfg = to_run_config(compose_config(args[0], args[1:]))  # the whole schema, without reading the bucket
    assert cfg.run_name == "in100_ipc10" and str(cfg.data.root).startswith("s3://")
    assert "ray submit cluster/aws-gpu.yaml" in line


def test_timer_triggers_the_service_daily_and_catches_up_missed_runs():
    timer = (CLUSTER / "schedule" / "m3d-rerun.timer").read_text()
    assert "OnCalendar=*-*-* 03:00:00" in timer and "Persistent=true" in timer
