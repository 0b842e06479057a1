"""Where a process runs, for the workers' and evaluation tasks' messages and checks: the GPUs
Ray assigned it, its host and Ray node, and the check that a process holding GPUs can use them.
Ray is read from ``sys.modules`` only: every Ray worker has imported it, the in-process backend
need not."""
from __future__ import annotations

import os
import sys

import torch

from m3d_condense.pipeline.method.compute import GPUUnavailableError


def connected_ray():
    """The ray module if this process has imported it and is connected to a cluster, else None.
    Read from ``sys.modules``: every Ray worker has imported it, the in-process backend need not,
    and importing it here would cost seconds."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def ray_gpu_ids() -> list[str]:
    """The GPU ids Ray assigned to this process (an actor or task that asked for num_gpus);
    empty outside Ray and in the driver."""
    ray = connected_ray()
    if ray is None:
        return []
    return [str(g) for g in ray.get_gpu_ids()]


def where() -> str:
    """This process's host, node IP and Ray node id, for messages about placement."""
    host = os.uname().nodename
    ray = connected_ray()
    if ray is None:
        return f"host {host}"
    return f"node {host} ({ray.util.get_node_ip_address()}, Ray node {ray.get_runtime_context().get_node_id()})"


def check_assigned_gpus(device_name: str, who: str) -> str | None:
    """A process Ray gave GPUs to but whose torch sees no CUDA device (a broken driver, a
    CPU-only torch on a GPU node) would otherwise hold the GPUs and compute on the CPU:
    device=cuda raises GPUUnavailableError, device=auto returns the warning to show. ``who``
    names the process in the message ("worker 0 (classes 0..4)"). None when all is well."""
    gpus = ray_gpu_ids()
    if not gpus or device_name == "cpu" or torch.cuda.is_available():
        return None
    why = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
           else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device (driver?)")
    problem = (f"{who} on {where()} holds GPU {','.join(gpus)} from Ray (CUDA_VISIBLE_DEVICES="
               f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}) but {why}")
    if device_name == "cuda":
        raise GPUUnavailableError(f"{problem}; device=cuda cannot run there")
    return f"{problem}; it runs on the CPU (device=auto)"


def node_id() -> str:
    """The Ray node this process runs on (the host name outside Ray)."""
    ray = connected_ray()
    if ray is not None:
        return ray.get_runtime_context().get_node_id()
    return os.uname().nodename


def memory_share(device: torch.device) -> float:
    """The part of this node's free memory a condensation worker on ``device`` may size its step
    for: on a CPU inside a Ray actor, its CPUs over the node's (Ray may place up to that many
    workers side by side, each of which would otherwise size its step for all the free memory it
    sees at start); 1 on a GPU (one worker per GPU), outside Ray and outside an actor."""
    ray = connected_ray()
    if device.type != "cpu" or ray is None:
        return 1.0
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:  # the in-process worker of a driver that uses Ray
        return 1.0
    mine = context.get_assigned_resources().get("CPU", 0)
    here = context.get_node_id()
    node_cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == here), 0)
    if mine <= 0 or node_cpus <= 0:  # an actor that asked for no CPU: nothing bounds its neighbours
        return 1.0
    return min(1.0, mine / node_cpus)
