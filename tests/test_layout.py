"""The package's layout holds: the method and the evaluation import without Hydra, every
command keeps one error policy, and what a user gets names nothing outside the repository."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

METHOD_MODULES = ["m3d_condense.pipeline.config.schema", "m3d_condense.pipeline.method.engine",
                  "m3d_condense.pipeline.method.baselines", "m3d_condense.pipeline.method.diagnostics",
                  "m3d_condense.pipeline.evaluation.training", "m3d_condense.pipeline.evaluation.records",
                  "m3d_condense.pipeline.evaluation.batches", "m3d_condense.pipeline.results.synthetic"]


# The condensation itself: it reads a CondenseSpec (method/spec.py), not the run's config.
ENGINE_MODULES = [f"m3d_condense.pipeline.method.{m}" for m in ("spec", "engine", "memory", "baselines", "diagnostics")]


def imported(module: str, prefixes: tuple[str, ...]) -> str:
    """The modules in the packages ``prefixes`` that importing ``module`` loads, in a fresh interpreter."""
    code = (f"import sys, {module}; print(sorted(m for m in sys.modules "
            f"if any(m == p or m.startswith(p + '.') for p in {prefixes!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("module", METHOD_MODULES)
def test_the_method_and_the_evaluation_import_without_hydra(module):
    found = imported(module, ("hydra", "omegaconf"))
    assert found == "[]", f"{module} imports {found}"


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_the_method_imports_neither_the_config_schema_nor_the_orchestration(module):
    found = imported(module, ("m3d_condense.pipeline.config", "m3d_condense.pipeline.orchestration"))
    assert found == "[]", f"{module} imports {found}: the method's contract is CondenseSpec"


def test_the_loader_is_where_hydra_comes_in():
    code = "import sys, m3d_condense.pipeline.config.loader; print('hydra' in sys.modules and 'omegaconf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_a_command_reports_a_run_error_as_one_line_and_exit_status_2(capsys):
    from m3d_condense.pipeline.errors import RunError, command

    @command
    def fails(argv):
        raise RunError(f"bad {argv[0]}")

    @command
    def crashes(argv):
        raise KeyError("a bug")

    assert fails(["key"]) == 2 and capsys.readouterr().err == "error: bad key\n"
    with pytest.raises(KeyError):  # anything else is a bug: its traceback stays
        crashes([])


# Tests and benchmarks may read the development machine's ../shared (and skip without it); what a
# user gets (the package, configs, docs, cluster files) must not point there, nor at documents
# the repository does not hold.
OUTSIDE = re.compile(r"\.\./shared|SPEC\.md|ENVIRONMENT\.md|DESIGN\.md|m3d-paper\.txt")


def test_no_file_a_user_gets_names_the_development_machines_shared_folder_or_its_documents():
    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    assert "README.md" in listed  # the listing is the checkout's, not an empty one
    shipped = [f for f in listed if not f.startswith(("tests/", "benchmarks/", ".ci/"))
               and f.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg"))]
    named = [f"{f}:{n}" for f in shipped for n, line in enumerate((repo / f).read_text().splitlines(), 1)
             if OUTSIDE.search(line)]
    assert named == []
