"""Sources that load a whole split into memory: scikit-learn's digits (the laptop demo) and
``ROOT/{train,test}.npz``. Large datasets go through the sharded layer instead."""
from __future__ import annotations

import numpy as np
import torch

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.labeled import LabeledImages
from m3d_condense.pipeline.data.shards import resize_pixels
from m3d_condense.pipeline.data.sources import read_npz
from m3d_condense.pipeline.errors import RunError


class DatasetNotFoundError(RunError, FileNotFoundError):
    """``data.root`` is missing or holds no dataset this tool reads."""


class ArraysError(RunError, ValueError):
    """An npz dataset (or the built-in digits) that does not match the config; names the file and key."""


def _digits(data_cfg, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1), 0..16 -> 0..255
    order = np.random.RandomState(0).permutation(len(x))  # fixed split, independent of the run seed
    n_test = int(round(len(x) * float(data_cfg.test_fraction)))
    pick = order[:n_test] if split == "test" else order[n_test:]
    pick.sort()
    return x[pick], d.target[pick].astype(np.int64), [str(n) for n in d.target_names]


def _npz(data_cfg, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if data_cfg.root is None:
        raise DatasetNotFoundError("data.root is not set: give the folder that holds train.npz and test.npz (data.root=PATH)")
    return npz_split(str(data_cfg.root), split)


def npz_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``ROOT/<split>.npz`` (any fsspec URL): x uint8 (N, H, W, C), y int64 (N,), class names."""
    path = storage.join(root, f"{split}.npz")  # any fsspec URL: a path, s3://, gs://, ...
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path}: no such file (data.root={root} must hold {split}.npz)") from None
    return read_npz(raw, path)


SOURCES = {"digits": _digits, "npz": _npz}


def load_arrays(data_cfg, split: str, source: str | None = None) -> LabeledImages:
    """Read ``split`` ("train" or "test") of the in-memory ``source`` (default ``data.source``) and
    check it against the config: channel count, image size (resized when ``data.resize``), labels."""
    source = source or data_cfg.source
    if source not in SOURCES:
        raise ArraysError(f"unknown data.source {source!r}; choose one of {sorted(SOURCES)} or shards")
    x, y, names = SOURCES[source](data_cfg, split)
    where = f"{source} {split} split" + (f" under {data_cfg.root}" if data_cfg.root else "")
    if x.shape[-1] != data_cfg.channels:
        raise ArraysError(f"{where}: images have {x.shape[-1]} channels, data.channels={data_cfg.channels}")
    if len(names) != data_cfg.num_classes:
        raise ArraysError(f"{where}: {len(names)} class names, data.num_classes={data_cfg.num_classes}")
    bad = (y < 0) | (y >= data_cfg.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ArraysError(f"{where}: label {y[i]} at index {i} is outside 0..{data_cfg.num_classes - 1}")
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    size = tuple(data_cfg.image_size)
    if tuple(images.shape[-2:]) != size:
        if not data_cfg.resize:
            raise ArraysError(f"{where}: images are {tuple(images.shape[-2:])}, data.image_size={list(size)} "
                             "(set data.resize=true to resize)")
        x = np.stack([resize_pixels(p, *size) for p in x])
        images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return LabeledImages(images, torch.from_numpy(y), names)
