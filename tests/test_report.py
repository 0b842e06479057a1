"""The HTML reports load in a real browser (headless Chromium) without console errors and show
their tables and embedded images."""
import json
import re
import shutil
import subprocess

import pytest

from m3d_condense.pipeline.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs it)")


def render(path) -> tuple[str, str]:
    """(DOM after load, browser log) of the file at ``path``."""
    proc = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_errors(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "CONSOLE" in ln or "Uncaught" in ln or "Failed to load resource" in ln]


def test_run_report_renders_with_accuracy_moments_and_images(tmp_path):
    assert main(["digits", f"out_dir={tmp_path}", "run_name=r", "iterations=10", "encoder.width=16", "eval.runs=2",
                 "eval.epochs=2", "eval.test_every=1", "diagnostics.encoders=1"]) == 0
    dom, log = render(tmp_path / "r" / "report.html")
    assert console_errors(log) == []
    assert "<caption>test accuracy</caption>" in dom and "paper M3D: best epoch (%)" in dom
    assert "moment gaps to the real data" in dom and "<td class=\"l\">initial</td>" in dom
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', dom)) == 2
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert f"{100 * summary['eval']['accuracy_mean']:.2f} ± " in dom


def test_grid_report_renders_each_method_beside_the_paper_number_and_the_moment_table(tmp_path):
    from m3d_condense.pipeline.results.report import grid_report

    moments = {"moment_synthetic_mean": 1.5, "moment_synthetic_variance": 0.3, "moment_synthetic_skewness": 2.0,
               "moment_synthetic_kurtosis": 9.0}
    rows = [{"dataset": "mnist", "ipc": 10, "arch": "convnet3", "method": m, "accuracy": a, "protocol": "iterations=200",
             **moments} for m, a in (("random", 0.92), ("random", 0.93), ("dm", 0.96), ("dm:lr=0.01", 0.95), ("m3d", 0.97))]
    rows.append({"dataset": "mnist", "ipc": 1, "arch": "convnet3", "method": "whole", "accuracy": 0.99,
                 "protocol": "eval.epochs=3"})
    rows[-2].update(moment_initial_mean=2.5, moment_initial_variance=0.5, moment_initial_skewness=3.0,
                    moment_initial_kurtosis=12.0)
    (tmp_path / "grid.html").write_text(grid_report(rows))
    dom, log = render(tmp_path / "grid.html")
    assert console_errors(log) == []
    assert "92.50 ± 0.50 (95.1)" in dom and "97.00 ± 0.00 (97.6)" in dom  # paper: random and M3D, MNIST IPC 10
    assert "96.00 ± 0.00 (97.5)" in dom and "99.00 ± 0.00 (99.6)" in dom  # DM; the whole set (its own row)
    assert "<td>whole set</td>" in dom and "iterations=200" in dom
    assert "<th>dm:lr=0.01</th>" in dom and "95.00 ± 0.00 (97.5)" in dom  # a variant: its own column, its base's paper number
    assert "moment gaps" in dom and "<td>initial (M3D/DM start)</td><td>2.5</td>" in dom
