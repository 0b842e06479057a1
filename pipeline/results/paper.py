"""The paper's protocol, one cell (dataset, IPC, method) at a time, resumable at every stage.

A cell is the run ``pipeline/run.py`` makes with the preset's paper settings (10,000
iterations, lr = IPC, real batch 128, factor 2, the released init, ConvNet-3 evaluated for
1,000 epochs), plus the released code's selection:

  1. condense, checkpointing every 500 iterations and keeping a snapshot of the set every
     ``select_every`` iterations (``snapshot_every``);
  2. evaluate the final set ``runs`` times (each run recorded as it ends: ``evaluation/records.py``);
  3. evaluate every snapshot once (run 0's seed, recorded the same way). The released script
     does this during condensation and keeps the best set: its number is a selection on the
     test set. The final set's run 0 stands for the last snapshot. ``select --follow`` does this
     stage in a second process while the cell condenses (one core each).

The cell's row holds both numbers, labelled: ours (the final set, last epoch, mean ± std of
``runs``) and the released-style selection (the best snapshot's best tested epoch). It is
written to ``OUT/rows/<cell>.json`` only when every stage has ended, so a lost or half-finished
run directory costs a restart, never a wrong row. Everything lives under ``OUT``: the runs in
``OUT/runs/<cell>``, the rows in ``OUT/rows``. Rerunning the same command continues where it
stopped, losing at most the evaluation run in progress (or the iterations since the last
checkpoint).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field

from m3d_condense.pipeline.cli import run
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import NAMED_METHODS, RunConfig
from m3d_condense.pipeline.data import load_split, storage
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.evaluation.records import EvalRecords
from m3d_condense.pipeline.logs import log
from m3d_condense.pipeline.method.compute import pick_device
from m3d_condense.pipeline.orchestration.driver import run_evaluations, snapshot_url
from m3d_condense.pipeline.orchestration.run_store import RunStore, Status
from m3d_condense.pipeline.results import outputs
from m3d_condense.pipeline.results.provenance import git_commit, machine
from m3d_condense.pipeline.results.report import paper_accuracy
from m3d_condense.pipeline.results.synthetic import SyntheticSet, is_stored

RELEASED_SELECT_EVERY = 500  # the released script tests its set every 500 iterations


class PaperError(RunError):
    """A cell cannot be run, published or tabulated as asked."""


@dataclass
class Cell:
    """One cell of the table: ``preset`` at ``ipc`` with ``method`` (m3d, or dm: the linear kernel
    in the same engine), ``runs`` evaluation runs of the final set, snapshots every
    ``select_every`` iterations (0: no selection), and further ``overrides`` (key=value)."""

    preset: str
    ipc: int
    method: str = "m3d"
    runs: int = 10
    select_every: int = RELEASED_SELECT_EVERY
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.preset}_{self.method}_ipc{self.ipc}"

    def config(self, out: str) -> RunConfig:
        if self.method not in ("m3d", "dm"):
            raise PaperError(f"method {self.method!r}: the paper protocol condenses; choose m3d or dm")
        return load_config(self.preset, [*NAMED_METHODS[self.method], f"ipc={self.ipc}", f"eval.runs={self.runs}",
                                         f"snapshot_every={self.select_every}", f"out_dir={storage.join(out, 'runs')}",
                                         f"run_name={self.name}", *self.overrides])


def row_path(out: str, cell: Cell) -> str:
    return storage.join(out, "rows", f"{cell.name}.json")


def run_cell(cell: Cell, out: str, progress: bool = True) -> dict:
    """Run (or continue) ``cell`` under ``out``; returns and records its row."""
    cfg = cell.config(out)
    run_url = storage.join(cfg.out_dir, cfg.run_name)
    summary = run(cfg, progress=progress)  # stages 1 and 2: condense, evaluate the final set
    if len(summary["eval"]["runs"]) != cell.runs:  # finished earlier with another --runs: the records make up the rest
        cfg.reevaluate = True
        summary = run(cfg, progress=progress)
    selection = select_snapshot(cfg, run_url, cell.select_every, summary, progress)
    row = cell_row(cell, cfg, summary, selection)
    outputs.write_json(row_path(out, cell), row)
    log.info(f"{cell.name}: {format_row(row)}")
    return row


def select_snapshot(cfg: RunConfig, run_url: str, every: int, summary: dict, progress: bool) -> dict:
    """Stage 3: the best snapshot by its one run's best tested epoch, as the released script keeps
    its best set. The final set's run 0 stands for the last snapshot."""
    final = summary["eval"]
    scores = {cfg.iterations: (final["best_epoch_runs"][0], 0.0)}
    if every > 0:
        scores.update(score_snapshots(cfg, run_url, every, progress))
    best = max(scores, key=lambda t: (scores[t][0], t))
    return {"iteration": best, "accuracy": scores[best][0], "snapshots": len(scores),
            "seconds": sum(secs for _, secs in scores.values()),
            "scores": {str(t): acc for t, (acc, _) in sorted(scores.items())}}


def score_snapshots(cfg: RunConfig, run_url: str, every: int, progress: bool, follow: bool = False,
                    poll_s: float = 60.0) -> dict[int, tuple[float, float]]:
    """One evaluation run (run 0's seed, recorded in the snapshot's ``evals/``) of every snapshot
    stored so far; with ``follow``, also of those stored later, until the run has condensed (a
    second process can score a cell's snapshots while it condenses). Returns {iteration:
    (best tested epoch's accuracy, seconds)}."""
    one_run, device, arch = with_runs(cfg, 1), pick_device(cfg.device), cfg.eval.archs[0]
    scores: dict[int, tuple[float, float]] = {}
    test = None
    while True:
        condensed = has_condensed(run_url)  # read first: a pass after it saw condensed finds every snapshot
        for t in range(every, cfg.iterations, every):
            url = snapshot_url(run_url, t)
            records = EvalRecords(url, one_run)
            recorded = None if t in scores else records.read(arch, 0)
            if recorded is not None:  # a scored snapshot may keep only its record
                scores[t] = (recorded.best_accuracy, recorded.seconds)
            if t in scores or not is_stored(url):
                continue
            test = test if test is not None else load_split(cfg.data, "test")
            evals, _ = run_evaluations(one_run, url, "local", device, progress, test=test, records=records)
            scores[t] = (evals[0]["best_epoch_runs"][0], evals[0]["seconds"][0])
            log.info(f"snapshot of iteration {t}: {100 * scores[t][0]:.2f}% (best tested epoch, one run)")
        if condensed or not follow:
            return scores
        time.sleep(poll_s)


def has_condensed(run_url: str) -> bool:
    state = RunStore(run_url).read()
    return state is not None and state.status in (Status.condensed, Status.finished)


def with_runs(cfg: RunConfig, runs: int) -> RunConfig:
    """``cfg`` with ``eval.runs`` = ``runs`` (the other evaluation settings, hence the records'
    folder, stay)."""
    out = copy.deepcopy(cfg)
    out.eval.runs = runs
    return out


def cell_row(cell: Cell, cfg: RunConfig, summary: dict, selection: dict) -> dict:
    """The table's row of a finished cell."""
    e = summary["eval"]
    return {
        "cell": cell.name, "dataset": cell.preset, "ipc": cell.ipc, "method": cell.method, "kernel": str(cfg.kernel),
        "iterations": cfg.iterations, "lr": cfg.lr, "init": str(cfg.init), "epochs": e["epochs"], "runs": len(e["runs"]),
        "precision": str(cfg.precision), "eval_precision": str(cfg.eval.precision),
        "accuracy_mean": e["accuracy_mean"], "accuracy_std": e["accuracy_std"], "accuracy_runs": e["runs"],
        "best_epoch_mean": e["best_epoch_accuracy_mean"],
        "selected_accuracy": selection["accuracy"], "selected_iteration": selection["iteration"],
        "selected_from": selection["snapshots"], "snapshot_scores": selection["scores"],
        "paper": paper_accuracy(cell.preset, cell.ipc, "convnet3", cell.method),
        "condense_seconds": summary["condense_seconds"], "eval_seconds": sum(e["seconds"]),
        "selection_seconds": selection["seconds"],
        "overrides": cell.overrides, "select_every": cell.select_every,
        "command": cell_command(cell), "machine": machine(), "commit": git_commit(),
        "finished": time.strftime("%Y-%m-%d"),
    }


def cell_command(cell: Cell) -> str:
    extra = [f"--method {cell.method}"] if cell.method != "m3d" else []
    extra += [f"--runs {cell.runs}"] + ([f"--select-every {cell.select_every}"]
                                        if cell.select_every != RELEASED_SELECT_EVERY else [])
    return " ".join(["python pipeline/reproduce.py cell", cell.preset, str(cell.ipc), *extra, *cell.overrides])


# the table ------------------------------------------------------------------------------------
def read_rows(*dirs: str) -> list[dict]:
    """Every recorded row under ``DIR/rows`` of each of ``dirs`` (later dirs win for a cell)."""
    rows: dict[str, dict] = {}
    for d in dirs:
        for url in storage.list_files(storage.join(d, "rows"), ".json"):
            row = json.loads(storage.read_bytes(url))
            rows[row["cell"]] = row
    order = {"mnist": 0, "fashion_mnist": 1, "svhn": 2, "cifar10": 3, "cifar100": 4}
    return sorted(rows.values(), key=lambda r: (r["method"] != "m3d", order.get(r["dataset"], 9), r["dataset"], r["ipc"]))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def format_row(row: dict) -> str:
    return (f"{_pct(row['accuracy_mean'])} ± {_pct(row['accuracy_std'])} (last epoch, {row['runs']} runs); "
            f"released-style selection {_pct(row['selected_accuracy'])} (iteration {row['selected_iteration']}); "
            f"paper {row['paper'] if row['paper'] is not None else '–'}")


def table_markdown(rows: list[dict]) -> str:
    """The Markdown table of ``rows``: ours beside the paper, with each row's protocol and cost."""
    head = ("| dataset | IPC | method | ours: final set, last epoch | released-style selection | paper "
            "| precision (condense / eval) | condense | evaluate | commit |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        sel = f"{_pct(r['selected_accuracy'])} (it {r['selected_iteration']}, of {r['selected_from']})"
        lines.append(
            f"| {r['dataset']} | {r['ipc']} | {'M3D' if r['method'] == 'm3d' else 'DM (linear kernel)'} "
            f"| {_pct(r['accuracy_mean'])} ± {_pct(r['accuracy_std'])} ({r['runs']} runs) | {sel} "
            f"| {r['paper'] if r['paper'] is not None else '–'} | {r['precision']} / {r['eval_precision']} "
            f"| {r['condense_seconds'] / 3600:.1f} h | {(r['eval_seconds'] + r['selection_seconds']) / 3600:.1f} h "
            f"| {r['commit']} |")
    return "\n".join(lines)


# publishing -----------------------------------------------------------------------------------
def publish_cell(cell: Cell, out: str, dest: str, runs: int, progress: bool = True) -> dict:
    """Store the finished cell's final set under ``DEST/<cell>`` as uint8 (``SyntheticSet.load``
    reads it), evaluate that stored set itself ``runs`` times (records under
    ``OUT/published/<cell>``, so this resumes too) and write ``DEST/<cell>/summary.json``: the
    cell's row, the published set's own accuracy and the command that made it."""
    path = row_path(out, cell)
    if not storage.exists(path):
        raise PaperError(f"{cell.name} has no row in {path}: run `{cell_command(cell)} --out {out}` to its end first")
    row = json.loads(storage.read_bytes(path))
    cfg = with_runs(cell.config(out), runs)
    target = storage.join(dest, cell.name)
    SyntheticSet.load(storage.join(cfg.out_dir, cfg.run_name)).save(target, uint8=True)
    published = SyntheticSet.load(target)
    records = EvalRecords(storage.join(out, "published", cell.name), cfg)
    evals, _ = run_evaluations(cfg, published, "local", pick_device(cfg.device), progress, records=records)
    e = evals[0]
    summary = {**row, "published": {"format": "uint8 pixels, round(x * 255)", "runs": e["runs"],
                                    "accuracy_mean": e["accuracy_mean"], "accuracy_std": e["accuracy_std"],
                                    "load": f"SyntheticSet.load({target!r})"}}
    outputs.write_json(storage.join(target, "summary.json"), summary)
    log.info(f"published {target}: the stored uint8 set scores {_pct(e['accuracy_mean'])} ± "
             f"{_pct(e['accuracy_std'])} (last epoch, {runs} runs); the float set {format_row(row)}")
    return summary
