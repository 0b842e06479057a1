"""The driver: splits the classes over workers, steps them in lockstep, records complete
checkpoints, merges the slices, and runs the evaluations.

A rerun of the same command continues where run.json says the last complete checkpoint is,
skips condensation when the run has condensed, and does nothing when it has finished (unless
``reevaluate=true``). ``backend=local`` runs one worker in this process; ``backend=ray`` runs
``workers`` Ray actors and evaluates in Ray tasks.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch
from m3d_condense.models import decode
from m3d_condense.pipeline import outputs
from m3d_condense.pipeline.baselines import herding, random_real, whole_dataset
from m3d_condense.pipeline.checkpoint import RunStore, condensation_config, fingerprint
from m3d_condense.pipeline.data import load_split, open_class_pool, storage
from m3d_condense.pipeline.diagnostics import moment_report
from m3d_condense.pipeline.engine import EngineSettings, initial_images
from m3d_condense.pipeline.evaluate import EvalSettings, train_and_test
from m3d_condense.pipeline.report import write_run_report
from m3d_condense.pipeline.seeding import derive_seed
from m3d_condense.pipeline.worker import ClassWorker, pick_device
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm


def log(msg: str) -> None:
    print(f"[m3d] {msg}", file=sys.stderr, flush=True)


def split_classes(num_classes: int, workers: int) -> list[list[int]]:
    """Contiguous, nearly equal slices: 10 classes over 3 workers -> 4, 3, 3."""
    workers = max(1, min(workers, num_classes))
    base, extra = divmod(num_classes, workers)
    out, start = [], 0
    for w in range(workers):
        n = base + (w < extra)
        out.append(list(range(start, start + n)))
        start += n
    return out


def resolve_backend(cfg: DictConfig) -> tuple[str, int]:
    """(backend, workers). ``workers`` null means one per GPU of the Ray cluster; with no Ray
    cluster reachable and at most one local GPU, that is one in-process worker (a Ray actor
    there would only add start-up time and get fewer CPU threads)."""
    backend = cfg.backend
    if backend == "auto":
        single = cfg.workers == 1 or (cfg.workers is None and torch.cuda.device_count() <= 1
                                      and not ray_cluster_reachable(cfg.ray.address))
        backend = "local" if single else "ray"
    if backend == "local":
        if cfg.workers not in (None, 1):
            raise ValueError(f"backend=local runs one worker; workers={cfg.workers} needs backend=ray")
        return "local", 1
    from m3d_condense.pipeline import ray_backend

    ray_backend.init(cfg.ray.address)
    if cfg.workers is not None:
        return "ray", int(cfg.workers)
    import ray

    return "ray", max(1, int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 1)


def ray_cluster_reachable(address: str | None) -> bool:
    """True if ``address`` names a cluster, or a Ray cluster runs on this machine (ray start/up)."""
    if address is not None:
        return True
    import ray

    if ray.is_initialized():
        return True
    try:
        from m3d_condense.pipeline import ray_backend

        ray_backend.init("auto")  # connects only to a running cluster; raises if there is none
        return True
    except ConnectionError:
        return False


class LocalWorkers:
    """The in-process backend: the same ClassWorker, called directly."""

    def __init__(self, cfg_dict: dict, splits: list[list[int]], run_url: str):
        self.workers = [ClassWorker(cfg_dict, s, run_url) for s in splits]

    def call(self, method: str, *args) -> list:
        return [getattr(w, method)(*args) for w in self.workers]

    def stop(self) -> None:
        self.workers = []


def _next_stop(t: int, cfg: DictConfig) -> tuple[int, bool]:
    """The next iteration the driver syncs at, and whether it is a checkpoint."""
    every = cfg.checkpoint_every
    sync = min(cfg.iterations, (t // cfg.log_every + 1) * cfg.log_every)
    if every > 0:
        sync = min(sync, (t // every + 1) * every)
    return sync, (every > 0 and sync % every == 0) or sync == cfg.iterations


def condense_slices(cfg: DictConfig, store: RunStore, run: dict, backend: str, workers: int, progress: bool) -> dict:
    """Run the workers to cfg.iterations from wherever the run is; returns the merged state."""
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    splits = split_classes(cfg.data.num_classes, workers)
    if backend == "ray":
        from m3d_condense.pipeline.ray_backend import RayWorkers
        pool = RayWorkers(cfg, cfg_dict, splits, store.url)
    else:
        pool = LocalWorkers(cfg_dict, splits, store.url)
    try:
        infos = pool.call("info")
        t = min(i["iteration"] for i in infos)
        nodes, devices = {i["node"] for i in infos}, sorted({i["device"] for i in infos})
        log(f"{len(splits)} worker(s) on {len(nodes)} node(s), {'/'.join(devices)}"
            + (f"; resumed at iteration {t}" if t else ""))
        for info in infos:
            for warning in info.get("warnings", []):
                log(f"WARNING: {warning}")
        bar = tqdm(total=cfg.iterations, initial=t, desc=f"condense ({len(splits)} workers)", unit="it",
                   disable=not progress, dynamic_ncols=True, mininterval=1.0)
        loop_start, loop_from = time.perf_counter(), t
        with bar:
            while t < cfg.iterations:
                target, checkpoint = _next_stop(t, cfg)
                results = pool.call("run_until", target, checkpoint)
                if checkpoint:
                    run.update(status="running", iteration=target, slices=[r["checkpoint"] for r in results])
                    store.write_run(run)  # from here on, this checkpoint is the one to resume from
                    store.remove_checkpoints_except(results[0]["checkpoint"].rsplit("/", 1)[0])
                bar.update(target - t)
                losses = [r["loss"] for r in results if r["loss"] is not None]
                if losses:
                    bar.set_postfix(mmd2=f"{statistics.fmean(losses):.4g}")
                t = target
        loop_seconds = time.perf_counter() - loop_start
        states = pool.call("state")
    finally:
        pool.stop()
    return {"images": torch.cat([s["images"] for s in states]), "class_names": infos[0]["class_names"],
            "it_per_s": (cfg.iterations - loop_from) / loop_seconds if loop_seconds > 0 else None,
            "history": [(tt, [v for s in states for v in s["losses"][k].tolist()])
                        for k, tt in enumerate(states[0]["times"])]}


def evaluate_all(cfg: DictConfig, images, labels, backend: str, device, progress: bool) -> tuple[list, dict]:
    test = load_split(cfg.data, "test")
    settings = EvalSettings.from_config(cfg, images_per_class=len(labels) // cfg.data.num_classes)
    jobs = [{"arch": a, "run": r, "seed": derive_seed(cfg.seed, "eval-run", r)}
            for a in cfg.eval.archs for r in range(cfg.eval.runs)]
    if backend == "ray":
        from m3d_condense.pipeline.ray_backend import evaluate_remote
        log(f"evaluating: {len(jobs)} Ray tasks")
        results, placements = evaluate_remote(jobs, images, labels, test, settings, cfg)
        for p in placements:
            if p["warning"]:
                log(f"WARNING: {p['warning']}")
        places = [f"; {p['resources']['GPU']:g} of GPU {','.join(p['gpu_ids'])}" if p["gpu_ids"] else ""
                  for p in placements]
    else:
        results = [train_and_test(images, labels, test, j["arch"], settings, j["seed"], device, progress=progress)
                   for j in jobs]
        places = [""] * len(jobs)
    evals, curves = [], {}
    for arch in cfg.eval.archs:
        mine = [(r, place) for j, r, place in zip(jobs, results, places, strict=True) if j["arch"] == arch]
        for k, (r, place) in enumerate(mine):
            log(f"eval {arch} run {k + 1}/{len(mine)}: last-epoch accuracy {100 * r.accuracy:.2f}% "
                f"({r.seconds:.0f}s{place})")
        mine = [r for r, _ in mine]
        curves[arch] = [r.curve for r in mine]
        accs = [r.accuracy for r in mine]
        evals.append({"arch": arch, "epochs": settings.epochs, "runs": accs, "seeds": [r.seed for r in mine],
                      "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs),
                      "best_epoch_accuracy_mean": statistics.fmean(r.best_accuracy for r in mine),
                      "best_epoch_runs": [r.best_accuracy for r in mine],  # selected on the test set (reference)
                      "seconds": [r.seconds for r in mine]})
    return evals, curves


def run_pipeline(cfg: DictConfig, progress: bool = True) -> dict:
    """Condense (or resume), merge, evaluate and write the run directory; returns the summary."""
    run_url = storage.join(cfg.out_dir, cfg.run_name)
    store = RunStore(run_url)
    run = store.read_run()
    if run is not None:
        store.check_compatible(run, cfg)
        if run["status"] == "finished" and not cfg.reevaluate:
            log(f"{run_url} finished earlier; nothing to do (reevaluate=true evaluates its synthetic set again)")
            return outputs.read_json(storage.join(run_url, "summary.json"))
    else:
        run = {"status": "running", "iteration": 0, "iterations": cfg.iterations, "slices": [],
               "fingerprint": fingerprint(cfg), "condensation_config": condensation_config(cfg)}
    outputs.write_config(storage.join(run_url, "config.yaml"), cfg)
    log(f"{cfg.preset}: method={cfg.method} kernel={cfg.kernel} ipc={cfg.ipc} factor={cfg.factor} -> {run_url}")
    backend, workers = resolve_backend(cfg)
    # Driver-side work (the random baseline, in-process evaluation) runs here; under Ray the
    # GPUs belong to the actors and tasks, and the head node may have none.
    device = pick_device(cfg.device) if backend == "local" else torch.device("cpu")
    start = time.perf_counter()
    history: list = []
    pool = None  # the driver's own pool of real images, when a baseline needed one
    if run["status"] in ("condensed", "finished") and cfg.method != "whole":  # whole: not stored, re-read
        syn = outputs.load_synthetic(storage.join(run_url, "synthetic.pt"))
        stored, labels, factor, names = syn["images"], syn["labels"], syn["factor"], syn["class_names"]
        history = [(t, [v]) for t, v in run.get("loss_curve", [])]
        log(f"condensed earlier; evaluating {storage.join(run_url, 'synthetic.pt')}")
    else:
        if cfg.method == "m3d":
            if run["iteration"] == 0:
                store.write_run(run)
            merged = condense_slices(cfg, store, run, backend, workers, progress)
            stored, history, factor, names = merged["images"], merged["history"], cfg.factor, merged["class_names"]
            it_per_s = merged["it_per_s"]
            labels = torch.arange(cfg.data.num_classes).repeat_interleave(cfg.ipc)
        else:  # selection baselines: real images, stored without multi-formation
            classes = list(range(cfg.data.num_classes))
            pool = open_class_pool(cfg.data, classes, device, log=log, progress=progress)
            if cfg.method == "herding":
                stored, labels = herding(pool, classes, cfg.ipc, EngineSettings.from_config(cfg), device)
            elif cfg.method == "whole":
                stored, labels = whole_dataset(pool, classes)
            else:
                stored, labels = random_real(pool, classes, cfg.ipc, cfg.seed)
            factor, names, it_per_s = 1, pool.class_names, None
        if cfg.method != "whole":  # the training set itself is not worth a copy
            outputs.save_synthetic(storage.join(run_url, "synthetic.pt"), stored, labels, factor, names)
        run.update(status="condensed", condense_seconds=time.perf_counter() - start,
                   condense_it_per_s=it_per_s, loss_curve=[[t, sum(v) / len(v)] for t, v in history])
        store.write_run(run)
    images, train_labels = decode(stored, factor), labels.repeat_interleave(factor * factor)
    outputs.plot_grid(storage.join(run_url, "grid.png"), images, train_labels, names)
    summary = {"preset": cfg.preset, "method": cfg.method, "ipc": cfg.ipc, "factor": factor, "kernel": cfg.kernel,
               "estimator": cfg.estimator, "update_mode": cfg.update_mode,
               "iterations": cfg.iterations if cfg.method == "m3d" else 0, "seed": cfg.seed, "device": cfg.device,
               "backend": backend, "workers": workers, "train_images": len(images),
               "condense_seconds": run.get("condense_seconds"),
               "condense_it_per_s": run.get("condense_it_per_s"),  # steady state: after workers started
               "final_loss": float(torch.tensor(history[-1][1]).mean()) if history else None,
               "loss_curve": run.get("loss_curve", [])}
    if cfg.diagnostics.moments and cfg.method != "whole":  # the whole set is the reference itself
        summary["moments"] = moments(cfg, images, train_labels, device, pool)
        log("moment gaps to the real data (mean/variance/skewness/kurtosis): " + "; ".join(
            f"{k} " + "/".join(f"{v:.3g}" for v in g.values()) for k, g in summary["moments"].items()))
    curves: dict = {}
    if cfg.eval.runs > 0:
        evals, curves = evaluate_all(cfg, images, train_labels, backend, device, progress)
        summary["eval"], summary["evals"] = evals[0], evals
        e = evals[0]
        log(f"{e['arch']}: {100 * e['accuracy_mean']:.2f} ± {100 * e['accuracy_std']:.2f}% "
            f"(last epoch, {cfg.eval.runs} runs)")
    outputs.plot_curves(storage.join(run_url, "curves.png"), history, curves)
    outputs.write_json(storage.join(run_url, "summary.json"), summary)
    write_run_report(run_url, summary)
    run["status"] = "finished"
    store.write_run(run)
    log(f"wrote {run_url}")
    return summary


def moments(cfg: DictConfig, images: torch.Tensor, labels: torch.Tensor, device, pool=None) -> dict:
    """Moment gaps of the synthetic set and of the set it started from (for M3D/DM the engine's
    initial set; for the baselines, the selection itself). ``pool``: the real images, if loaded."""
    classes = list(range(cfg.data.num_classes))
    if pool is None:
        pool = open_class_pool(cfg.data, classes, device, progress=False)
    s = EngineSettings.from_config(cfg)
    sets = {"synthetic": (images, labels)}
    if cfg.method == "m3d":
        sets["initial"] = (decode(initial_images(pool, classes, s), cfg.factor), labels)
    return moment_report(sets, pool, classes, s, cfg.diagnostics.encoders, cfg.diagnostics.real_per_class, device)
