"""The package installs under one import name and its entry points work from anywhere."""
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE_FOLDERS = ("kernels", "models", "pipeline", "configs")


def test_pip_install_into_a_fresh_venv_adds_one_top_level_package_and_the_console_script(tmp_path):
    venv = tmp_path / "venv"
    # The dependencies (torch, ray, ...) come from this interpreter; the project itself is installed fresh.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = set(os.listdir(site))
    # Built by this interpreter's setuptools (a fresh venv's may predate pyproject builds), installed there.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, cwd=tmp_path, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("m3d_condense-*.whl")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True,
                   timeout=600)
    added = set(os.listdir(site)) - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"m3d_condense"}, added
    installed = site / "m3d_condense"
    assert {p.name for p in installed.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(PACKAGE_FOLDERS)
    assert (installed / "configs" / "cifar10.yaml").exists() and (installed / "configs" / "reference" / "paper.yaml").exists()
    assert not (installed / "tests").exists() and not (installed / "benchmarks").exists()
    # The installed copy (not the source tree) answers, from any folder, through every entry point.
    where = subprocess.run([python, "-c", "import m3d_condense.pipeline.cli as c; print(c.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(installed)), where
    usage = subprocess.run([venv / "bin" / "m3d-condense", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert usage.returncode == 0 and "usage: python pipeline/run.py PRESET" in usage.stdout and "cifar10" in usage.stdout
    copied = tmp_path / "home" / "run.py"  # as `ray submit` copies it
    copied.parent.mkdir()
    shutil.copy(REPO / "pipeline" / "run.py", copied)
    proc = subprocess.run([python, copied, "digits", "ipcc=1"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "valid keys:" in proc.stderr  # a one-line config error, not an ImportError


def test_no_source_file_imports_the_folders_by_their_bare_names():
    bare = re.compile(rf"^\s*(from|import) ({'|'.join(PACKAGE_FOLDERS)})(\.|\s)", re.MULTILINE)
    offenders = [str(p.relative_to(REPO)) for folder in (*PACKAGE_FOLDERS, "tests", "benchmarks")
                 for p in (REPO / folder).rglob("*.py") if bare.search(p.read_text())]
    assert offenders == []


def test_no_module_in_pipeline_shadows_a_standard_or_installed_top_level_module():
    """`python pipeline/run.py` puts pipeline/ first on sys.path, so a module there named like a
    standard or installed one would be imported in its place, by anyone."""
    ours = {p.stem for p in (REPO / "pipeline").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    installed = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    assert ours & installed == set(), ours & installed
