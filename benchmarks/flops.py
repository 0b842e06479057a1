"""FLOP counts and this machine's measured peak, so every speed has a ceiling beside it.

``count_flops(fn)`` counts the matmul and convolution FLOPs (forward and backward, as torch's
FlopCounterMode sees them: a multiply-add is 2 FLOPs) of one call. Normalisation, activations,
pooling, augmentation resampling and the optimizer are memory-bound and not counted; they are
the gap between achieved and peak that fusion (torch.compile) attacks.

``measured_peaks(device)`` times a large square matmul and ConvNet-3's main convolution
(128 -> 128 channels, 3x3, on 16x16 maps) in fp32 and bf16: the best rates this machine's
kernels reach on the operations a step is made of.

    python -m benchmarks.flops            # prints the peaks as one JSON line
"""
from __future__ import annotations

import json
import time
from typing import Callable

import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from m3d_condense.pipeline.method.compute import synchronize


class _FlopCounter(TorchDispatchMode):
    """Sums torch's own FLOP formulas over the aten ops that have one. (torch's FlopCounterMode
    also tracks modules, which fails on a no-grad forward of a tensor that has a graph.)"""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul/convolution FLOPs of one call of ``fn`` (forward and any backward it runs)."""
    with _FlopCounter() as counter:
        fn()
    return counter.flops


def _rate(fn: Callable[[], object], flops: float, device: torch.device, min_seconds: float) -> float:
    """Best FLOP/s over repeated timed calls of ``fn`` (one warm-up call first)."""
    fn()
    best, spent = 0.0, 0.0
    while spent < min_seconds:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = max(best, flops / elapsed)
    return best


def measured_peaks(device: torch.device | str = "cpu", min_seconds: float = 1.0) -> dict[str, float]:
    """GFLOP/s of a square matmul and of ConvNet-3's 128->128 3x3 convolution (forward), in fp32
    and bf16. On a GPU, fp32 matmuls are timed with TF32 off (full fp32)."""
    device = torch.device(device)
    n = 4096 if device.type == "cuda" else 1024
    batch = 512 if device.type == "cuda" else 64
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        x = torch.randn(batch, 128, 16, 16, device=device, dtype=dtype)
        w = torch.randn(128, 128, 3, 3, device=device, dtype=dtype)
        conv_flops = 2 * batch * 128 * 16 * 16 * 128 * 9
        with torch.no_grad():
            peaks[f"matmul_{name}_gflops"] = _rate(lambda a=a, b=b: a @ b, 2 * n**3, device, min_seconds) / 1e9
            peaks[f"conv_{name}_gflops"] = _rate(lambda x=x, w=w: F.conv2d(x, w, padding=1), conv_flops, device,
                                                 min_seconds) / 1e9
    return peaks


if __name__ == "__main__":
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps({"device": str(dev), "threads": torch.get_num_threads(), **measured_peaks(dev)}))
