"""m3d_condense: this repository's ``kernels/``, ``models/``, ``pipeline/`` and ``configs/``
under one import name (``pip install`` maps the folders with setuptools' ``package-dir``), so
nothing generic such as ``models`` or ``pipeline`` lands in site-packages.

The library API is importable from here: ``from m3d_condense import condense, evaluate,
SyntheticSet`` (``pipeline/api.py``, ``pipeline/results/synthetic.py``). Names are
resolved on first use, so ``import m3d_condense.kernels`` stays as light as it was.
"""
from importlib import import_module
from typing import Any

_API = {"SyntheticSet": "m3d_condense.pipeline.results.synthetic", "condense": "m3d_condense.pipeline.api",
        "evaluate": "m3d_condense.pipeline.api"}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'm3d_condense' has no attribute {name!r}")
