"""The package's layout holds: the method and the evaluation import without Hydra, and every
command keeps one error policy."""
import subprocess
import sys

import pytest

METHOD_MODULES = ["m3d_condense.pipeline.config.schema", "m3d_condense.pipeline.method.engine",
                  "m3d_condense.pipeline.method.baselines", "m3d_condense.pipeline.method.diagnostics",
                  "m3d_condense.pipeline.evaluation.training", "m3d_condense.pipeline.evaluation.records",
                  "m3d_condense.pipeline.evaluation.batches", "m3d_condense.pipeline.results.synthetic"]


@pytest.mark.parametrize("module", METHOD_MODULES)
def test_the_method_and_the_evaluation_import_without_hydra(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


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
