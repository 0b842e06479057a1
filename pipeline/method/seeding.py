"""Deterministic seeds derived from named parts, identical in every process and on every machine.

The engine's invariants hang on this: the encoder of iteration t comes from
``(seed, "encoder", t // ipm)`` and class c's real batch from ``(seed, "real", c, t)``, so
the result does not depend on which worker computes what, or on a resume.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the ``repr`` of ``parts`` (Python's ``hash`` differs per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``parts``; CPU so that every device draws the same numbers."""
    return torch.Generator().manual_seed(derive_seed(*parts))
