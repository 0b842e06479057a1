"""How much memory one condensation step needs, and how many classes fit in one forward.

The estimate is built from the encoder's own activation sizes (a forward of one image with
hooks), so it follows the architecture, width and resolution: the synthetic forward keeps
every activation for the backward; the no-grad real forward, which runs first, holds about
two layers at a time; the peak is the larger of the two. ``benchmarks/memory.py`` measures the real peaks beside these estimates.
"""
from __future__ import annotations

import torch

from m3d_condense.models import create_model
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.method.spec import CondenseSpec

FLOAT = 4  # bytes
HEADROOM = 0.8  # of the free memory: the estimate runs up to 16% under the measured peak (BENCHMARKS.md)


def activation_bytes_per_image(arch: str, channels: int, num_classes: int, image_size, width) -> tuple[int, int]:
    """(sum, max) over the encoder's modules of their output size for one image, in bytes."""
    net = create_model(arch, channels, num_classes, tuple(image_size), width)
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * FLOAT))
             for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net.embed(torch.zeros(1, channels, *image_size))
    for h in hooks:
        h.remove()
    return sum(sizes), max(sizes)


def step_bytes(s: CondenseSpec, classes: int) -> int:
    """Estimated peak bytes of one step over ``classes`` classes of the condensation ``s``, beyond
    the cached real images."""
    total, largest = activation_bytes_per_image(s.arch, s.data.channels, s.data.num_classes, s.data.image_size, s.width)
    pixels = s.data.channels * s.data.image_size[0] * s.data.image_size[1] * FLOAT
    n_syn, n_real = classes * s.ipc * s.factor**2, classes * s.batch_real
    synthetic = n_syn * (total + 6 * pixels)       # kept activations; decode, normalise, augment copies
    real = n_real * (2 * largest + 4 * pixels)     # two live layers, the input and its augmented copy
    # The no-grad real forward finishes (and frees its layers) before the synthetic one starts.
    return max(synthetic, real)


def free_bytes(device: torch.device) -> int:
    """Memory this process can still use on ``device``: free GPU memory, or MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 1 << 62  # unknown: do not refuse


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory since it started its program (VmHWM; unlike
    ru_maxrss it does not count what a forking parent held before exec), None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemoryBudgetError(RunError, RuntimeError):
    """A configuration that cannot fit on its device; the message gives the numbers."""


def classes_per_forward(s: CondenseSpec, classes: int, device: torch.device, requested: int = 0,
                        share: float = 1.0) -> int:
    """``requested`` (> 0), or the most classes whose step fits in ``share`` (0 < share <= 1) of
    the free memory of ``device``, and at least one: ``share`` is the part a process may take when
    others beside it may size their steps from the same free memory (Ray workers on one CPU node:
    ``placement.memory_share``, an upper bound on how many there are, so it caps the size but
    never refuses). Raises MemoryBudgetError with the numbers if one class does not fit in all of it."""
    if requested > 0:
        return min(requested, classes)
    budget = HEADROOM * free_bytes(device)
    one = step_bytes(s, 1)
    if one > budget:
        raise MemoryBudgetError(f"one class needs about {one / 2**30:.1f} GiB per step (ipc={s.ipc}, factor={s.factor}, "
                           f"batch_real={s.batch_real}, {s.arch} at {s.data.image_size[0]}x{s.data.image_size[1]}), "
                           f"but {device} has {budget / 2**30:.1f} GiB usable; lower batch_real or ipc, or use a "
                           "device with more memory")
    return max(1, min(classes, int(budget * share // one)))
