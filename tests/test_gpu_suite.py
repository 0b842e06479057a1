"""benchmarks/gpu_suite.py runs every part at tiny sizes on the CPU, as it would on a GPU machine
without network access: the project not installed but importable through a link named
m3d_condense (benchmarks/README.md), and ray, webdataset and s3fs absent."""
import json
import subprocess
import sys

import pytest
from conftest import REPO

from benchmarks.gpu_suite import TINY
from m3d_condense.pipeline.method.compute import can_compile

CHECKS = ["device_vs_cpu[reference]", "device_vs_cpu[batched]", "device_vs_cpu_tf32[reference]", "compiled_vs_eager",
          "bf16_vs_fp32_step", "bf16_vs_fp32_digits", "cache_tiers_same_batches", "eval_seeded", "split_vs_whole",
          "no_ray_import"]

# Runs the suite as `python -m benchmarks.gpu_suite ARGS` does on the GPU machine (benchmarks/README.md):
# the packages that machine lacks made unimportable (each attempt is recorded), the project's
# editable install hidden, and m3d_condense found through a link to the repository, as there.
# Prints the attempted imports as the last line.
GPU_MACHINE = """
import os, runpy, sys, tempfile
ABSENT = {"ray", "webdataset", "s3fs", "moto"}
attempts = []

class Absent:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            attempts.append(name)
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None

sys.meta_path[:] = [Absent] + [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
link_dir = tempfile.mkdtemp()
os.symlink(os.getcwd(), os.path.join(link_dir, "m3d_condense"))
sys.path[0:1] = [os.getcwd(), link_dir]
sys.argv = ["benchmarks/gpu_suite.py", *sys.argv[1:]]
try:
    runpy.run_module("benchmarks.gpu_suite", run_name="__main__", alter_sys=True)
finally:
    print("IMPORT ATTEMPTS", sorted(set(attempts)))
"""


def run_suite(out, *args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """The suite's process and its JSON results."""
    proc = subprocess.run([sys.executable, "-c", GPU_MACHINE, "--out", str(out), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)
    path = out / "gpu_suite.json"
    assert path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(path.read_text())


def checks_by_name(result: dict) -> dict:
    return {c["name"]: c for c in result["checks"]}


def test_tiny_suite_runs_every_part_on_the_cpu_without_ray(tmp_path):
    proc, result = run_suite(tmp_path, "--device", "cpu", "--tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "IMPORT ATTEMPTS []"
    assert result["errors"] == []
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"]
    # Correctness: every check present, in order, and passed, with its measured value and tolerance.
    checks = checks_by_name(result)
    assert list(checks) == CHECKS
    for name, c in checks.items():
        expected = "SKIP" if name == "compiled_vs_eager" and not can_compile() else "PASS"
        assert c["status"] == expected, c
        assert expected == "SKIP" or c["value"] <= c["tolerance"] and c["detail"], c
    assert 0 < checks["bf16_vs_fp32_step"]["value"]  # bf16 really ran: it differs from fp32
    assert set(checks["bf16_vs_fp32_digits"]["accuracy"]) == {"fp32", "bf16"}
    # Condensation speeds: every workload and mode, positive numbers.
    speeds = {(r["workload"], r["mode"]): r for r in result["condense_speed"]}
    assert set(speeds) == {(w, m) for w, modes in TINY.modes.items() for m in modes}
    for r in speeds.values():
        assert r["status"] in ("PASS", "SLOW"), r
        assert r["it_per_s"] > 0 and r["projected_s"] > 0 and r["flops_per_step"] > 0 and r["tflops"] > 0, r
        assert 0 < r["fraction_of_peak"] and r["peak_memory_gib"] is None  # no device memory on the CPU
    assert speeds["imagenet100", "fp32"]["flops_per_step"] > speeds["cifar10", "fp32"]["flops_per_step"]
    assert result["peaks"]["matmul_fp32_gflops"] > 0 and result["peaks"]["matmul_bf16_gflops"] > 0
    # Evaluation speeds.
    evals = {(r["arch"], r["mode"]): r for r in result["eval_speed"]}
    assert set(evals) == {(w.eval_arch, m) for w in (TINY.cifar10, TINY.imagenet100) for m in TINY.eval_modes[w.name]}
    assert all(r["status"] == "PASS" and r["epochs_per_s"] > 0 for r in evals.values()), evals
    assert evals["resnetap10", "eager"]["recipe"] == "imagenet" and evals["resnetap10", "eager"]["batch_size"] == 128
    # The tiny full protocol: the mnist preset on generated data, condensed and evaluated.
    (mnist,) = result["protocol"]
    assert mnist["preset"] == "mnist" and mnist["status"] == "ran" and mnist["paper"] is None
    assert 0 <= mnist["accuracy"] <= 1 and mnist["wall_s"] > 0 and mnist["iterations"] == 10
    # The Markdown table is written and printed last (before the wrapper's own line).
    table = (tmp_path / "gpu_suite.md").read_text()
    assert all(f"| {name} | PASS |" in table or name == "compiled_vs_eager" for name in CHECKS)
    assert "| imagenet100 | bf16 |" in table and "| resnetap10 on imagenet100 | eager |" in table
    assert proc.stdout.rstrip().removesuffix("IMPORT ATTEMPTS []").rstrip().endswith(table.rstrip().splitlines()[-1])


def test_a_failure_is_recorded_and_the_suite_goes_on_and_a_spent_budget_skips(tmp_path):
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    (data / "mnist" / "train.npz").write_bytes(b"not an npz file")
    proc, result = run_suite(tmp_path / "broken", "--device", "cpu", "--parts", "protocol", "--data-root", str(data))
    assert proc.returncode == 1  # an ERROR makes the exit status 1
    mnist, cifar10 = result["protocol"]
    assert mnist["status"] == "ERROR" and mnist["error"], mnist
    assert cifar10["status"] == "SKIP" and "no data" in cifar10["error"]
    assert [(c["name"], c["status"]) for c in result["checks"]] == [("no_ray_import", "PASS")]
    assert "| mnist |" in (tmp_path / "broken" / "gpu_suite.md").read_text()
    # A time budget already spent skips every entry, and the table still comes out.
    proc, result = run_suite(tmp_path / "spent", "--device", "cpu", "--tiny", "--parts", "speed_cifar10",
                             "--modes", "fp32", "--budget-s", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in result["condense_speed"]] == ["SKIP"]
    assert "past the time budget" in (tmp_path / "spent" / "gpu_suite.md").read_text()


@pytest.mark.cuda
def test_correctness_checks_pass_on_cuda(tmp_path):
    proc, result = run_suite(tmp_path, "--device", "cuda", "--tiny", "--parts", "correctness")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = checks_by_name(result)
    assert list(checks) == CHECKS
    assert all(c["status"] == "PASS" for c in checks.values()), [c for c in checks.values() if c["status"] != "PASS"]
    assert result["machine"]["device_name"] and result["machine"]["cuda"]
