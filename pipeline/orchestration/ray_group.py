"""Ray placement for the driver: one actor per worker (a GPU each when the cluster has them,
fractional CPUs otherwise), evaluation as tasks (``ray.eval_gpus`` of a GPU each), resource
checks that fail fast."""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.orchestration.protocol import EvalJob, EvalPlacement, MomentGaps, Step, StoredSlice, WorkerInfo
from m3d_condense.pipeline.orchestration.worker import ClassWorker

# Forwarded from the driver's environment into every actor and task, so that credentials and
# endpoints given to the command (e.g. AWS_ENDPOINT_URL for MinIO) reach the workers.
FORWARDED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                 "AWS_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "GOOGLE_APPLICATION_CREDENTIALS",
                 "TQDM_DISABLE")


class ResourceError(RunError, RuntimeError):
    """The Ray cluster lacks what the run asks for."""


class WorkerError(RunError, RuntimeError):
    """A worker failed for good; the message names its classes and its last error."""


def init(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address in (None, "auto") or address.removeprefix("ray://") == current:
            return
        ray.shutdown()  # connected elsewhere (an earlier run in this process): switch to the asked cluster
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=True,
             configure_logging=False)


def cluster_gpus(wait_s: float, needed: float) -> float:
    """GPUs in the cluster, waiting up to ``wait_s`` for ``needed`` of them (autoscaling)."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        gpus = ray.cluster_resources().get("GPU", 0)
        left = deadline - time.monotonic()
        if gpus >= needed or left <= 0:
            return gpus
        time.sleep(min(2.0, left))


def _waited(wait_s: float) -> str:
    return f" after waiting ray.wait_for_gpus_s={wait_s:g} s for GPU nodes" if wait_s > 0 else ""


def actor_resources(cfg: RunConfig, workers: int) -> dict[str, Any]:
    """num_cpus/num_gpus per actor; ResourceError (at once, not a silent hang) if the cluster
    cannot place ``workers`` of them."""
    import ray

    want_gpu = cfg.device == "cuda"
    wait = cfg.ray.wait_for_gpus_s if want_gpu else 0
    gpus = cluster_gpus(wait, workers if want_gpu else 0)
    if want_gpu and gpus < workers:
        fix = f"set workers={int(gpus)} or device=cpu" if gpus >= 1 else "set device=cpu, or ray.wait_for_gpus_s " \
            "long enough for autoscaled GPU nodes to join"
        raise ResourceError(f"device=cuda with workers={workers} needs {workers} GPUs, the Ray cluster has {gpus:g}"
                            f"{_waited(wait)} (resources: {ray.cluster_resources()}); {fix}")
    if cfg.device == "auto" and 0 < gpus < workers:
        raise ResourceError(f"workers={workers} but the Ray cluster has {gpus:g} GPUs; set workers={int(gpus)} "
                            "(one per GPU) or device=cpu")
    use_gpu = want_gpu or (cfg.device == "auto" and gpus >= workers)
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers * cfg.ray.worker_cpus > cpus:
        raise ResourceError(f"workers={workers} x ray.worker_cpus={cfg.ray.worker_cpus} needs "
                            f"{workers * cfg.ray.worker_cpus:g} CPUs, the Ray cluster has {cpus:g}")
    return {"num_cpus": cfg.ray.worker_cpus, "num_gpus": 1 if use_gpu else 0}


class RayWorkers:
    """The workers as Ray actors (a ``WorkerGroup``): each method runs on all of them concurrently."""

    def __init__(self, cfg: RunConfig, splits: list[list[int]], run_url: str):
        import ray

        res = actor_resources(cfg, len(splits))
        remote = ray.remote(ClassWorker).options(
            **res, max_restarts=cfg.ray.max_restarts, max_task_retries=cfg.ray.max_restarts,
            scheduling_strategy="SPREAD")
        self.splits, self.resources, self.restart_wait_s = splits, res, cfg.ray.restart_wait_s
        self.actors = [remote.remote(cfg, s, run_url, f"worker {i}") for i, s in enumerate(splits)]

    def info(self) -> list[WorkerInfo]:
        return self._on_all(lambda actor: actor.info.remote())

    def run_until(self, target: int, checkpoint: bool, snapshot_url: str | None = None) -> list[Step]:
        return self._on_all(lambda actor: actor.run_until.remote(target, checkpoint, snapshot_url))

    def select(self) -> list[StoredSlice]:
        return self._on_all(lambda actor: actor.select.remote())

    def finish(self) -> list[StoredSlice]:
        return self._on_all(lambda actor: actor.finish.remote())

    def moments(self) -> list[MomentGaps]:
        return self._on_all(lambda actor: actor.moments.remote())

    def _on_all(self, call: Callable[[Any], Any]) -> list[Any]:
        """``call(actor)`` (an actor method's ``.remote(...)``) on every actor at once; their
        results in worker order, a failure as WorkerError naming the worker."""
        import ray

        refs = [call(a) for a in self.actors]
        out = []
        for i, ref in enumerate(refs):
            try:
                out.append(self._get(i, ref, call))
            except ray.exceptions.RayTaskError as e:
                raise WorkerError(f"worker {i} (classes {_span(self.splits[i])}) failed: {_task_failure(e)}") from None
            except ray.exceptions.RayActorError as e:
                if getattr(e, "actor_init_failed", False):  # raised in __init__, e.g. reading its shards
                    raise WorkerError(f"worker {i} (classes {_span(self.splits[i])}) failed: {_last_error(e)}") from None
                raise WorkerError(f"worker {i} (classes {_span(self.splits[i])}) died and was restarted "
                                  f"ray.max_restarts times; last error: {_last_error(e)}") from None
        return out

    def _get(self, i: int, ref, call: Callable[[Any], Any]) -> Any:
        """The result of ``ref``. When the actor's node or process is gone, Ray restarts it
        elsewhere (it reloads its last checkpoint), but calls fail as "unavailable" until the
        cluster has noticed and placed it, which can outlast Ray's own retries: wait for it to
        answer again, up to ``ray.restart_wait_s``, then repeat the call (every worker method is
        idempotent: ``run_until`` steps to an iteration, not by a count)."""
        import ray

        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                self._wait_until_placed(i)
                ref = call(self.actors[i])

    def _wait_until_placed(self, i: int) -> None:
        import ray

        deadline = time.monotonic() + self.restart_wait_s
        while True:
            try:
                ray.get(self.actors[i].info.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.monotonic() >= deadline:
                    raise ResourceError(
                        f"worker {i} (classes {_span(self.splits[i])}) lost its node and Ray could not place it again "
                        f"within ray.restart_wait_s={self.restart_wait_s:g} s: it needs {self.resources}, the cluster "
                        f"has {ray.available_resources()} free; add a node, or rerun with fewer workers (the run "
                        "resumes from its last checkpoint)") from None
                time.sleep(1.0)

    def stop(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)


def _task_failure(e: Exception) -> str:
    """``Type: message`` of the exception a Ray task or actor method raised."""
    cause = e.cause if getattr(e, "cause", None) is not None else e
    return f"{type(cause).__name__}: {cause}"


def _last_error(e: Exception) -> str:
    """The ``Type: message`` line of the original exception inside a Ray error's text."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    raised = [ln for ln in lines if ln.split(":", 1)[0].replace(".", "").replace("_", "").isalnum()
              and ln.split(":", 1)[0].endswith(("Error", "Exception")) and ":" in ln]
    if not raised:
        return lines[-1] if lines else type(e).__name__
    kind, message = raised[-1].split(":", 1)
    return f"{kind.rsplit('.', 1)[-1]}:{message}"  # pipeline.data.shards.ShardError -> ShardError


def _span(classes: list[int]) -> str:
    return f"{classes[0]}..{classes[-1]}" if len(classes) > 1 else str(classes[0])


def evaluate_remote(jobs: list[EvalJob], source, cfg: RunConfig,
                    record_paths: list[str | None] | None = None) -> tuple[list, list[EvalPlacement]]:
    """Run ``train_and_test`` for each job as a Ray task, holding ``ray.eval_gpus`` of a GPU
    each when the cluster has GPUs (and device is not cpu). Each task reads the test split on
    its own node (``load_split_here``) and the synthetic set ``source`` from the run directory
    that stores it (a URL), so nothing heavy passes through the driver; a set in memory (a
    ``SyntheticSet``) goes through the object store. A task given a record path (``record_paths``,
    one per job) records its result there as it ends (``evaluation/records.py``). Returns the results and,
    per job, what it held (``EvalPlacement``)."""
    import ray

    share = float(cfg.ray.eval_gpus)
    wait = cfg.ray.wait_for_gpus_s if cfg.device == "cuda" else 0
    gpus = cluster_gpus(wait, share) if cfg.device != "cpu" else 0
    if cfg.device == "cuda" and gpus < share:
        raise ResourceError(f"device=cuda: each evaluation task asks ray.eval_gpus={share:g} GPU, the Ray cluster has "
                            f"{gpus:g}{_waited(wait)}; set device=cpu or device=auto")
    gpu = cfg.device != "cpu" and gpus >= share
    task = ray.remote(_evaluate_one).options(num_cpus=cfg.ray.eval_cpus, num_gpus=share if gpu else 0)
    train = source if isinstance(source, str) else ray.put(source)
    paths = record_paths or [None] * len(jobs)
    futures = [task.remote(train, j.arch, cfg, j.seed, f"evaluation {j.arch} run {j.run + 1}", path)
               for j, path in zip(jobs, paths, strict=True)]
    out = []
    for j, ref in zip(jobs, futures, strict=True):
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayTaskError as e:
            # The other tasks are not cancelled: ray.cancel of a task that is just ending aborts
            # the driver (Ray 2.60); they end with the driver's job.
            raise WorkerError(f"evaluation {j.arch} run {j.run + 1} failed: {_task_failure(e)}") from None
    return [r for r, _ in out], [p for _, p in out]


def _evaluate_one(source, arch, cfg, seed, who, record_path=None):
    import ray

    from m3d_condense.pipeline.data.dataset import load_split_here
    from m3d_condense.pipeline.evaluation.records import write_record
    from m3d_condense.pipeline.evaluation.training import train_and_test
    from m3d_condense.pipeline.logs import log, setup_logging
    from m3d_condense.pipeline.method.compute import pick_device
    from m3d_condense.pipeline.orchestration.placement import check_assigned_gpus, ray_gpu_ids
    from m3d_condense.pipeline.results.synthetic import SyntheticSet

    setup_logging()  # a Ray task may run in a fresh process
    warning = check_assigned_gpus(cfg.device, who)
    if warning:  # now, for whoever follows the logs; the driver repeats it with the result
        log.warning(warning)
    train = SyntheticSet.of(source)
    test = load_split_here(cfg.data, "test")
    result = train_and_test(train.images, train.labels, test, arch, cfg, seed, pick_device(cfg.device),
                            factor=train.factor)
    if record_path is not None:
        write_record(record_path, result)
    return result, EvalPlacement(ray_gpu_ids(), ray.get_runtime_context().get_assigned_resources(), warning)
