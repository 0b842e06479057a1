"""How the networks run: compiled or eager, fp32 or bf16. One place for the engine and the
evaluation, so both decide the same way.

``compiled_call(name)`` returns one ``torch.compile``d function per name that calls a module
method with the module as an argument (``f(net, x) = net.<name>(x)``). The module's weights
are then inputs of the graph, so every fresh network of the same architecture (a new random
encoder every ``ipm`` iterations, a new evaluation model every run) reuses the compiled code:
it recompiles only per input shape and grad/train mode.
"""
from __future__ import annotations

import shutil
from typing import Callable

import torch

from m3d_condense.pipeline.errors import RunError

PRECISIONS = ("fp32", "bf16")
RECOMPILE_LIMIT = 64  # compiled graphs kept per function


def can_compile() -> bool:
    """A C++ compiler for CPU kernels, or a CUDA GPU for Triton kernels."""
    return torch.cuda.is_available() or any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def use_compile(setting, work: int, threshold: int) -> bool:
    """``setting`` true/false, or "auto": compile when ``work`` (iterations, optimizer steps)
    reaches ``threshold``, from where the one-off compile (20-60 s on CPU) is a small part of
    the run, and the machine can compile."""
    if setting in (True, False):
        return setting
    return bool(can_compile() and work >= threshold)


def _call(method: str) -> Callable:
    def call(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return getattr(net, method)(x)

    call.__name__ = f"call_{method}"
    return call


_EAGER: dict[str, Callable] = {}
_COMPILED: dict[str, Callable] = {}


def compiled_call(method: str, compiled: bool) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """``f(net, x) -> net.<method>(x)``, through one common ``torch.compile`` when ``compiled``."""
    if method not in _EAGER:
        _EAGER[method] = _call(method)
    if not compiled:
        return _EAGER[method]
    if method not in _COMPILED:
        # One graph per input shape, grad mode and autocast state: the chunk tuning alone makes
        # 8 (4 sizes x real/synthetic), which is torch's default limit, beyond which it silently
        # runs the rest eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        _COMPILED[method] = torch.compile(_EAGER[method], dynamic=False)
    return _COMPILED[method]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a clock read after it
    times the work itself; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast of what runs inside when ``precision="bf16"`` (convolutions and matmuls in
    bf16; normalisation, losses and the weights stay fp32); a no-op for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class GPUUnavailableError(RunError, RuntimeError):
    """device=cuda and torch sees no CUDA device (none visible, or none in the GPUs Ray assigned)."""


def pick_device(name: str) -> torch.device:
    """The torch device of ``device=auto|cpu|cuda``: auto is CUDA when torch sees a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GPUUnavailableError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(str(name))
