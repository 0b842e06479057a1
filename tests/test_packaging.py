"""The package installs under one import name and its entry points work from anywhere."""
import importlib.metadata
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import tomllib
from conftest import REPO

PACKAGE_FOLDERS = ("kernels", "models", "pipeline", "configs")


def _fresh_venv_seeing_these_dependencies(venv: Path) -> tuple[Path, Path, dict]:
    """A new venv whose interpreter also sees the site-packages of the one running the tests, by a
    .pth file that lists them (their own .pth hooks, e.g. this checkout's editable install, are not
    run): the dependencies (torch, ray, ...) come from here, the project is installed fresh.
    ``--system-site-packages`` would not do where the tests run in a venv themselves (as the README
    installs): it gives the base interpreter's site-packages, not this venv's. Returns the venv's
    python, its site-packages and an environment without PYTHONPATH, which could point at a source
    tree."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, env=env).stdout.strip())
    (purelib / "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    return python, purelib, env


def test_pip_install_into_a_fresh_venv_adds_one_top_level_package_and_the_console_script(tmp_path):
    venv = tmp_path / "venv"
    python, site_dir, env = _fresh_venv_seeing_these_dependencies(venv)
    import hydra  # a dependency of the entry points: the venv finds this environment's copy

    found = subprocess.run([python, "-c", "import hydra; print(hydra.__file__)"], capture_output=True, text=True,
                           check=True, cwd=tmp_path, env=env).stdout.strip()
    assert found == hydra.__file__, (found, hydra.__file__)
    before = set(os.listdir(site_dir))
    # Built by this interpreter's setuptools (a fresh venv's may predate pyproject builds), installed there;
    # where this interpreter has none (a venv of Python >= 3.12 holds no setuptools), in pip's isolated build.
    no_isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *no_isolation, "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, cwd=tmp_path, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("m3d_condense-*.whl")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True,
                   timeout=600, env=env)
    added = set(os.listdir(site_dir)) - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"m3d_condense"}, added
    installed = site_dir / "m3d_condense"
    assert {p.name for p in installed.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(PACKAGE_FOLDERS)
    assert (installed / "configs" / "cifar10.yaml").exists() and (installed / "configs" / "reference" / "paper.yaml").exists()
    assert not (installed / "tests").exists() and not (installed / "benchmarks").exists()
    # The installed copy (not the source tree) answers, from any folder, through every entry point.
    where = subprocess.run([python, "-c", "import m3d_condense.pipeline.cli as c; print(c.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout.strip()
    assert where.startswith(str(installed)), where
    usage = subprocess.run([venv / "bin" / "m3d-condense", "--help"], capture_output=True, text=True, cwd=tmp_path,
                           env=env)
    assert usage.returncode == 0 and "usage: python pipeline/run.py PRESET" in usage.stdout and "cifar10" in usage.stdout
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():  # every command script is installed, and answers --help
        usage = subprocess.run([venv / "bin" / name, "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
        script = target.split(":")[0].rsplit(".", 1)[-1]
        assert usage.returncode == 0 and "usage:" in usage.stdout, (name, usage.stdout[-300:], usage.stderr[-300:])
        assert script == "cli" or f"pipeline/{script}.py" in usage.stdout, (name, usage.stdout[:200])
    copied = tmp_path / "home" / "run.py"  # as `ray submit` copies it
    copied.parent.mkdir()
    shutil.copy(REPO / "pipeline" / "run.py", copied)
    proc = subprocess.run([python, copied, "digits", "ipcc=1"], capture_output=True, text=True, cwd=tmp_path, env=env)
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


def test_ci_runs_the_readme_install_and_test_commands_verbatim_in_a_fresh_venv():
    """.ci/run proves README's commands work in a virtual environment only while they are README's."""
    readme = (REPO / "README.md").read_text()
    setup, tests = (readme.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip()
                    for heading in ("## Set up", "Run the tests ("))
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert setup.startswith("pip install") and tests == "python -m pytest -q", (setup, tests)
    venv = next(i for i, line in enumerate(lines) if re.fullmatch(r'python -m venv "\$venv"', line))
    activate = lines.index('source "$venv/bin/activate"')
    assert venv < activate < lines.index(setup) < lines.index(tests) == len(lines) - 1
