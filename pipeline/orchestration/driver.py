"""The driver: a run as four stages over the state ``RunStore`` keeps in run.json.

  synthesize  M3D condenses on the workers, resuming from the last complete checkpoint, or the
              random/herding baseline selects real images on the workers, each from its own
              classes; each worker stores its slice of the set (``pipeline/results/synthetic.py``), the
              driver writes the index, and run.json says "condensed". A rerun skips this stage
              once the run has condensed.
  diagnose    moment gaps of the set to the real data (``diagnostics.moments``), computed by the
              workers, where the real images are.
  evaluate    networks trained from scratch on the decoded set (``eval.*``), in this process
              or as Ray tasks, which read the stored set themselves.
  write       grid.png, curves.png, summary.json and report.html; run.json says "finished".

A rerun of a finished run does nothing (``reevaluate=true`` evaluates its set again). Apart
from ``method=whole`` (the whole training set, read here), the driver never holds the set: its
memory does not grow with the dataset.
``backend=local`` runs one worker in this process; ``backend=ray`` runs ``workers`` Ray
actors and evaluates in Ray tasks (``pipeline/orchestration/groups.py``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.data import LabeledImages, load_split, open_class_cache, storage
from m3d_condense.pipeline.evaluation.records import EvalRecords
from m3d_condense.pipeline.evaluation.training import EvalResult, eval_epochs, train_and_test
from m3d_condense.pipeline.logs import log, progress_bar
from m3d_condense.pipeline.method.baselines import select_real
from m3d_condense.pipeline.method.compute import pick_device
from m3d_condense.pipeline.method.memory import peak_rss_bytes
from m3d_condense.pipeline.method.seeding import derive_seed
from m3d_condense.pipeline.method.spec import CondenseSpec
from m3d_condense.pipeline.orchestration.groups import resolve_backend, start_workers
from m3d_condense.pipeline.orchestration.lease import RunLease
from m3d_condense.pipeline.orchestration.protocol import EvalJob, StoredSlice, WorkerGroup
from m3d_condense.pipeline.orchestration.run_store import RunState, RunStore, Status
from m3d_condense.pipeline.results import outputs, synthetic, tracking
from m3d_condense.pipeline.results.report import write_run_report
from m3d_condense.pipeline.results.synthetic import SyntheticSet

SNAPSHOTS = "snapshots"  # RUN_DIR/snapshots/it<t>: the set at iteration t (snapshot_every)


@dataclass
class Synthesized:
    """What the synthesize stage leaves: the set, in memory (``method=whole``) or as the run
    directory that stores it, and the loss history (iteration, per-class losses)."""

    source: SyntheticSet | str
    history: list[tuple[int, list[float]]]


def run_pipeline(cfg: RunConfig, progress: bool = True) -> dict:
    """Condense (or resume), evaluate and write the run directory; returns the summary."""
    run_url = storage.join(cfg.out_dir, cfg.run_name)
    if RunStore(run_url).open(cfg).status == Status.finished and not cfg.reevaluate:
        log.info(f"{run_url} finished earlier; nothing to do (reevaluate=true evaluates its synthetic set again)")
        return outputs.read_json(storage.join(run_url, "summary.json"))
    with RunLease(run_url) as lease:  # one driver per run directory (a scheduled rerun may overlap)
        return drive(cfg, RunStore(run_url, lease=lease), progress)


def drive(cfg: RunConfig, store: RunStore, progress: bool) -> dict:
    """The stages of ``run_pipeline``, by the process that holds the run's lease."""
    run_url, state = store.url, store.open(cfg)  # read again under the lease
    outputs.write_config(storage.join(run_url, "config.yaml"), cfg)
    tracking.check_tracking(cfg)  # a missing tracking package fails now, not after condensing
    log.info(f"{cfg.preset}: method={cfg.method} kernel={cfg.kernel} ipc={cfg.ipc} factor={cfg.factor} -> {run_url}")
    backend, workers = resolve_backend(cfg)
    # Driver-side work (the whole-set baseline, in-process evaluation) runs here; under Ray the
    # GPUs belong to the actors and tasks, and the head node may have none.
    device = pick_device(cfg.device) if backend == "local" else torch.device("cpu")

    group: WorkerGroup | None = None  # the workers, once started: they hold the real images
    try:
        syn, group = synthesize(cfg, store, state, backend, workers, device, progress)
        summary = summarize(cfg, state, syn, backend, workers)
        if cfg.diagnostics.moments and cfg.method != "whole":  # the whole set is the reference itself
            group = group or start_workers(cfg, backend, workers, store.url)
            summary["moments"] = diagnose(group)
    finally:
        if group is not None:
            group.stop()
    curves: dict = {}
    if cfg.eval.runs > 0:
        summary["evals"], curves = run_evaluations(cfg, syn.source, backend, device, progress,
                                                records=EvalRecords(run_url, cfg))
        summary["eval"] = summary["evals"][0]
    summary["driver_peak_bytes"] = peak_rss_bytes()  # the head node's share of the run, watched at scale
    write_outputs(run_url, summary, syn, curves)
    store.record_finished(state)
    log.info(f"wrote {run_url}")
    try:
        for written in tracking.track_run(cfg, run_url, summary, curves):
            log.info(written)
    except Exception as e:  # noqa: BLE001 - a tracking store that fails (a server down) must not undo the run
        log.warning(f"tracking failed ({type(e).__name__}: {e}); the run directory is complete, and "
                    "reevaluate=true logs it again")
    return summary


# synthesize --------------------------------------------------------------------------------
def synthesize(cfg: RunConfig, store: RunStore, state: RunState, backend: str, workers: int,
               device: torch.device, progress: bool) -> tuple[Synthesized, WorkerGroup | None]:
    """The run's set: condensed (M3D) or selected (init, random, herding) by the workers, each storing
    the slice of its own classes, or the whole training set read here (not stored); left as is
    if the run has condensed. Also returns the workers it started (the caller stops them), None
    if it started none."""
    if state.status in (Status.condensed, Status.finished) and cfg.method != "whole":  # whole: not stored, re-read
        log.info(f"condensed earlier; evaluating the set stored in {store.url}")
        return Synthesized(store.url, [(int(t), [v]) for t, v in state.loss_curve]), None
    start, it_per_s, group = time.perf_counter(), None, None
    before = state.condense_seconds or 0.0  # earlier processes' share, up to the checkpoint resumed from
    state.condense_seconds = before

    def spent() -> float:
        return before + time.perf_counter() - start
    if cfg.method == "whole":
        syn = Synthesized(whole_set(cfg, device, progress), [])
    else:
        group = start_workers(cfg, backend, workers, store.url)
        if cfg.method == "m3d":
            parts, history, it_per_s = step_workers(cfg, store, state, group, progress, spent)
        else:  # a selection baseline (real images; init: M3D's start, tiled at the factor)
            parts, history = group.select(), []
        synthetic.write_index(store.url, [p.slice for p in parts], cfg.stored_factor, parts[0].class_names,
                              cfg.data.mean, cfg.data.std)
        syn = Synthesized(store.url, history)
    store.record_condensed(state, spent(), it_per_s,
                           [[t, statistics.fmean(v)] for t, v in syn.history])
    return syn, group


def _next_stop(t: int, cfg: RunConfig) -> tuple[int, bool, bool]:
    """The next iteration the driver syncs at, whether it is a checkpoint, and whether the set
    is stored there as a snapshot (``snapshot_every``, before the last iteration; a snapshot is
    also a checkpoint)."""
    every, snap = cfg.checkpoint_every, cfg.snapshot_every
    sync = min(cfg.iterations, (t // cfg.log_every + 1) * cfg.log_every)
    for period in (p for p in (every, snap) if p > 0):
        sync = min(sync, (t // period + 1) * period)
    snapshot = snap > 0 and sync % snap == 0 and sync < cfg.iterations  # the final set is stored anyway
    return sync, (every > 0 and sync % every == 0) or sync == cfg.iterations or snapshot, snapshot


def snapshot_url(run_url: str, iteration: int) -> str:
    """Where ``snapshot_every`` stores the set of ``iteration``: a directory SyntheticSet.load reads."""
    return storage.join(run_url, SNAPSHOTS, f"it{iteration:07d}")


def step_workers(cfg: RunConfig, store: RunStore, state: RunState, group: WorkerGroup, progress: bool,
                 spent: Callable[[], float] = lambda: 0.0) -> tuple[list[StoredSlice], list[tuple[int, list[float]]],
                                                                  float | None]:
    """Step the workers in lockstep to cfg.iterations from the run's last checkpoint, record
    complete checkpoints (each with ``spent()``, the condensing seconds so far), and have each
    worker store its slice of the set. Returns what the workers' ``finish`` returned, the loss
    history and the steady-state it/s."""
    splits = group.splits
    infos = group.info()
    t = min(i.iteration for i in infos)
    nodes, devices = {i.node for i in infos}, sorted({i.device for i in infos})
    shares = sorted({round(i.memory_share, 3) for i in infos if i.memory_share < 1})
    log.info(f"{len(splits)} worker(s) on {len(nodes)} node(s), {'/'.join(devices)}"
             + (f"; steps sized for {'/'.join(f'{s:g}' for s in shares)} of a node's free memory (the workers' "
                "share of its CPUs)" if shares else "")
             + (f"; resumed at iteration {t}" if t else ""))
    for warning in (w for info in infos for w in info.warnings):
        log.warning(warning)
    if t:
        state.resume_read_bytes = sum(i.restored_bytes for i in infos)
        log.info(f"the workers read {state.resume_read_bytes / 2**20:.1f} MiB of checkpoint slices to resume")
    overheads = []
    bar = progress_bar(total=cfg.iterations, initial=t, desc=f"condense ({len(splits)} workers)", unit="it",
                       progress=progress, dynamic_ncols=True, mininterval=1.0)
    loop_start, loop_from = time.perf_counter(), t
    with bar:
        while t < cfg.iterations:
            target, checkpoint, snapshot = _next_stop(t, cfg)
            snap_url = snapshot_url(store.url, target) if snapshot else None
            sync_start = time.perf_counter()
            results = group.run_until(target, checkpoint, snap_url)
            overheads.append(time.perf_counter() - sync_start - max(r.seconds for r in results))
            if snap_url:  # the index last: a snapshot with an index is whole
                synthetic.write_index(snap_url, [r.snapshot for r in results], cfg.stored_factor,
                                      infos[0].class_names, cfg.data.mean, cfg.data.std)
            if checkpoint:
                state.checkpoint_bytes, state.condense_seconds = sum(r.checkpoint_bytes for r in results), spent()
                store.record_checkpoint(state, target, [r.checkpoint for r in results])
            bar.update(target - t)
            losses = [r.loss for r in results if r.loss is not None]
            if losses:
                bar.set_postfix(mmd2=f"{statistics.fmean(losses):.4g}")
            t = target
    loop_seconds = time.perf_counter() - loop_start
    state.sync_overhead_s = statistics.median(overheads) if overheads else None
    states = group.finish()
    # An actor that Ray restarted mid-run (its process or its node died) restored itself from
    # a checkpoint written after this loop began.
    state.worker_restarts = sum(s.restored_from > loop_from for s in states)
    if state.worker_restarts:
        log.info(f"{state.worker_restarts} worker(s) were restarted by Ray and continued from a checkpoint")
    history = [(tt, [v for s in states for v in s.losses[k].tolist()]) for k, tt in enumerate(states[0].times)]
    return states, history, (cfg.iterations - loop_from) / loop_seconds if loop_seconds > 0 else None


def whole_set(cfg: RunConfig, device: torch.device, progress: bool) -> SyntheticSet:
    """The whole training set (the upper bound), read here: its evaluation trains on all of it."""
    classes = list(range(cfg.data.num_classes))
    cache = open_class_cache(cfg.data, classes, device, log=log.info, progress=progress)
    images, labels = select_real(cfg.method, CondenseSpec.of(cfg), cache, classes, device)
    return SyntheticSet(images.cpu(), labels.cpu(), 1, cache.class_names, cfg.data.mean, cfg.data.std)


# diagnose ----------------------------------------------------------------------------------
def diagnose(group: WorkerGroup) -> dict:
    """Moment gaps of the decoded set (and for M3D of its initial set) to the real data, each
    worker on its own classes' part of the stored set, where their real images already are;
    averaged over classes."""
    results = group.moments()
    total = sum(r.classes for r in results)
    gaps = {name: {order: sum(r.gaps[name][order] * r.classes for r in results) / total for order in orders}
            for name, orders in results[0].gaps.items()}
    log.info("moment gaps to the real data (mean/variance/skewness/kurtosis): " + "; ".join(
        f"{k} " + "/".join(f"{v:.3g}" for v in g.values()) for k, g in gaps.items()))
    return gaps


# evaluate ----------------------------------------------------------------------------------
def run_evaluations(cfg: RunConfig, source: SyntheticSet | str, backend: str, device: torch.device,
                 progress: bool, test: LabeledImages | None = None,
                 records: EvalRecords | None = None) -> tuple[list[dict], dict]:
    """``eval.runs`` networks of each of ``eval.archs`` trained on the set ``source`` (in memory,
    or the run directory storing it) and tested on the real test split (``test`` if given, in
    this process). With ``records``, each run is recorded as it ends and a run recorded earlier
    is read instead of trained again. Returns one record per architecture and the test curves."""
    jobs = [EvalJob(a, r, derive_seed(cfg.seed, "eval-run", r)) for a in cfg.eval.archs for r in range(cfg.eval.runs)]
    done = {j: records.read(j.arch, j.run) for j in jobs} if records else {}
    todo = [j for j in jobs if done.get(j) is None]
    if len(todo) < len(jobs):
        log.info(f"evaluation: {len(jobs) - len(todo)} of {len(jobs)} runs recorded earlier in {records.url}")

    def ended(j: EvalJob, r: EvalResult, where: str = "") -> None:
        done[j] = r
        log.info(f"eval {j.arch} run {j.run + 1}/{cfg.eval.runs}: last-epoch accuracy "
                 f"{100 * r.accuracy:.2f}% ({r.seconds:.0f}s{where})")

    if backend == "ray" and test is None and todo:  # each task reads the test split on its own node
        from m3d_condense.pipeline.orchestration.ray_group import evaluate_remote

        log.info(f"evaluating: {len(todo)} Ray tasks")
        paths = [records.path(j.arch, j.run) if records else None for j in todo]
        results, placements = evaluate_remote(todo, source, cfg, paths)  # each task records its run
        for j, r, p in zip(todo, results, placements, strict=True):
            if p.warning:
                log.warning(p.warning)
            ended(j, r, f"; {p.resources['GPU']:g} of GPU {','.join(p.gpu_ids)}" if p.gpu_ids else "")
    elif todo:
        train = SyntheticSet.of(source)
        test = test if test is not None else load_split(cfg.data, "test")
        for j in todo:
            r = train_and_test(train.images, train.labels, test, j.arch, cfg, j.seed, device,
                               progress=progress, factor=train.factor)
            if records:
                records.write(r, j.run)
            ended(j, r)
    results = [done[j] for j in jobs]
    epochs = eval_epochs(cfg, synthetic.training_size(source) // cfg.data.num_classes)
    by_arch = {a: [r for j, r in zip(jobs, results, strict=True) if j.arch == a] for a in cfg.eval.archs}
    evals = [eval_record(arch, epochs, runs) for arch, runs in by_arch.items()]
    e = evals[0]
    log.info(f"{e['arch']}: {100 * e['accuracy_mean']:.2f} ± {100 * e['accuracy_std']:.2f}% "
             f"(last epoch, {cfg.eval.runs} runs)")
    return evals, {arch: [r.curve for r in runs] for arch, runs in by_arch.items()}


def eval_record(arch: str, epochs: int, runs: list[EvalResult]) -> dict:
    """summary.json's record of one architecture's evaluation runs."""
    accs = [r.accuracy for r in runs]
    return {"arch": arch, "epochs": epochs, "runs": accs, "seeds": [r.seed for r in runs],
            "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs),
            "best_epoch_accuracy_mean": statistics.fmean(r.best_accuracy for r in runs),
            "best_epoch_runs": [r.best_accuracy for r in runs],  # selected on the test set (reference)
            "seconds": [r.seconds for r in runs]}


# write -------------------------------------------------------------------------------------
GRID_CLASSES = 100  # rows of grid.png: the first classes of the set


def summarize(cfg: RunConfig, state: RunState, syn: Synthesized, backend: str, workers: int) -> dict:
    """summary.json's record of the run, before diagnostics and evaluation are added."""
    history = syn.history
    return {"preset": cfg.preset, "method": str(cfg.method), "ipc": cfg.ipc, "factor": cfg.stored_factor,
            "kernel": str(cfg.kernel), "estimator": str(cfg.estimator), "update_mode": str(cfg.update_mode),
            "iterations": cfg.iterations if cfg.method == "m3d" else 0, "seed": cfg.seed, "device": str(cfg.device),
            "backend": backend, "workers": workers, "train_images": synthetic.training_size(syn.source),
            "condense_seconds": state.condense_seconds,
            "condense_it_per_s": state.condense_it_per_s,  # steady state: after workers started
            "sync_overhead_s": state.sync_overhead_s, "checkpoint_bytes": state.checkpoint_bytes,
            "resume_read_bytes": state.resume_read_bytes, "worker_restarts": state.worker_restarts,
            "final_loss": statistics.fmean(history[-1][1]) if history else None,
            "loss_curve": state.loss_curve}


def write_outputs(run_url: str, summary: dict, syn: Synthesized, curves: dict) -> None:
    """grid.png (read from the first ``GRID_CLASSES`` classes' slices only), curves.png,
    summary.json and report.html."""
    shown = range(GRID_CLASSES)
    preview = syn.source.of_classes(shown) if isinstance(syn.source, SyntheticSet) else \
        SyntheticSet.load(syn.source, shown)
    images, labels = preview.decoded()
    outputs.plot_grid(storage.join(run_url, "grid.png"), images, labels, preview.class_names,
                      max_classes=GRID_CLASSES)
    outputs.plot_curves(storage.join(run_url, "curves.png"), syn.history, curves)
    outputs.write_json(storage.join(run_url, "summary.json"), summary)
    write_run_report(run_url, summary)
