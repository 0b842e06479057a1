"""The dataset a run reads: the source named by ``data.source`` (or detected from
``data.root``), checked against the config; its test split; and each worker's class cache."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np
import torch

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.class_cache import ClassCache, StreamingClassCache
from m3d_condense.pipeline.data.inmemory import DatasetNotFoundError, load_arrays
from m3d_condense.pipeline.data.labeled import LabeledImages, class_major_labels
from m3d_condense.pipeline.data.manifest import FILENAME, Manifest, ManifestError, read_manifest
from m3d_condense.pipeline.data.reader import ClassShardReader

if TYPE_CHECKING:
    from m3d_condense.pipeline.config.schema import DataConfig

AUTO_PARALLEL_IMAGES = 20_000  # below this, starting decode processes costs more than it saves
DEVICE_CACHE_FRACTION = 0.5  # of the free GPU memory; the rest is for the encoder's activations


def source_of(data_cfg: DataConfig) -> str:
    """``data.source``, or for ``auto`` what ``data.root`` holds: a manifest (shards) or train.npz."""
    if data_cfg.source != "auto":
        return str(data_cfg.source)
    if data_cfg.root is None:
        raise DatasetNotFoundError("data.root is not set: give a prepared dataset (manifest.parquet, see pipeline/prepare.py) "
                         "or a folder with train.npz and test.npz (data.root=PATH_OR_URL)")
    manifest, npz = storage.join(data_cfg.root, FILENAME), storage.join(data_cfg.root, "train.npz")
    if storage.exists(manifest):
        return "shards"
    if storage.exists(npz):
        return "npz"
    raise DatasetNotFoundError(f"data.root={data_cfg.root} holds neither {manifest} (prepared shards) nor {npz}")


def resolve_dataset(data_cfg: DataConfig) -> Manifest | None:
    """Detect ``data.source`` and, for sharded data, fill the keys a preset leaves None (``custom``)
    from the manifest and check the others against it; ``data_cfg`` is changed in place. Returns
    the manifest (None for in-memory sources, and when no ``data.root`` is given yet)."""
    if data_cfg.root is None:
        return None  # opening the data will say that data.root is needed (digits needs none)
    data_cfg.root = storage.absolute(data_cfg.root)
    data_cfg.source = source = source_of(data_cfg)
    if source != "shards":
        return None
    m = read_manifest(data_cfg.root)
    found = {"num_classes": m.num_classes, "channels": m.channels, "image_size": list(m.image_size),
             "mean": list(m.mean), "std": list(m.std)}
    for key, value in found.items():
        if getattr(data_cfg, key) is None:
            if not value:
                raise ManifestError(f"{m.url}: has no {key}; set data.{key}")
            setattr(data_cfg, key, value)
        elif key in ("num_classes", "channels", "image_size") and _as_list(getattr(data_cfg, key)) != _as_list(value):
            raise ManifestError(f"data.{key}={_as_list(getattr(data_cfg, key))} but {m.url} holds {value} "
                                f"(prepare with matching options, or use preset custom)")
    return m


def _as_list(v) -> list:
    return list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else [v]


def _reader(data_cfg: DataConfig) -> ClassShardReader:
    return ClassShardReader(data_cfg.root, verify=data_cfg.verify)


def load_split(data_cfg: DataConfig, split: str) -> LabeledImages:
    """A whole split in memory (the evaluation's test set, and the in-memory sources)."""
    source = source_of(data_cfg)
    if source != "shards":
        return load_arrays(data_cfg, split, source)
    reader = _reader(data_cfg)
    m = reader.manifest
    n = sum(reader.num_samples(split, c) for c in range(m.num_classes))
    images = [x for _, x in reader.read_classes(split, range(m.num_classes), read_workers(data_cfg, n))]
    labels = class_major_labels(range(m.num_classes), [len(x) for x in images])
    return LabeledImages(torch.cat(images), labels, m.class_names)


_SPLITS: dict[str, LabeledImages] = {}  # this process's splits, by node cache key


def load_split_here(data_cfg: DataConfig, split: str) -> LabeledImages:
    """``load_split`` for an evaluation task on its own node: read once per process and, for a
    prepared dataset, decoded once per node into a file under the temp folder that the node's
    other processes load (keyed by the split's shard hashes, so a changed dataset is re-read).
    The driver never holds the split, whatever its size."""
    if source_of(data_cfg) != "shards":
        return load_split(data_cfg, split)
    m = read_manifest(data_cfg.root)
    rows = sorted((r.class_index, r.shard, r.sha256) for r in m.rows if r.split == split)
    key = hashlib.sha256(json.dumps([str(data_cfg.root), split, rows]).encode()).hexdigest()[:24]
    if key not in _SPLITS:
        path = os.path.join(tempfile.gettempdir(), "m3d_condense", "splits", f"{key}.npz")
        try:
            with np.load(path) as f:
                _SPLITS[key] = LabeledImages(torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]),
                                             [str(n) for n in f["class_names"]])
        except (OSError, ValueError, KeyError):  # not cached on this node yet (or a torn file): decode
            _SPLITS[key] = split_data = load_split(data_cfg, split)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"
            np.savez(tmp, images=split_data.images.numpy(), labels=split_data.labels.numpy(),
                     class_names=np.array(split_data.class_names))
            os.replace(tmp, path)  # atomic: another process sees all of it or nothing
    return _SPLITS[key]


def cache_tier(data_cfg: DataConfig, nbytes: int, device: torch.device) -> str:
    """Where a worker keeps its classes: ``data.cache``, or for ``auto`` the device when it is a
    GPU with room, else host memory within ``data.cache_gb``, else streaming from the shards."""
    tier = str(data_cfg.cache)
    if tier != "auto":
        return tier
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= DEVICE_CACHE_FRACTION * free:
            return "device"
    return "host" if nbytes <= float(data_cfg.cache_gb) * 2**30 else "stream"


def open_class_cache(data_cfg: DataConfig, classes: list[int], device: torch.device,
                    split: str = "train", log=None, progress: bool = True) -> ClassCache:
    """The real images of ``classes`` for a worker on ``device``, cached as cache_tier decides."""
    source = source_of(data_cfg)
    if source != "shards":
        return ClassCache.from_labeled(load_arrays(data_cfg, split, source), classes, device)
    reader = _reader(data_cfg)
    m = reader.manifest
    per_image = m.channels * m.image_size[0] * m.image_size[1]
    nbytes = sum(reader.num_samples(split, c) for c in classes) * per_image
    tier = cache_tier(data_cfg, nbytes, device)
    if log:
        log(f"{len(classes)} classes, {nbytes / 2**20:.0f} MiB as uint8: cache tier {tier!r}")
    if tier == "stream":
        return StreamingClassCache(reader, split, classes, device)
    return ClassCache.from_shards(reader, split, classes, device, store=device if tier == "device" else "cpu",
                                 workers=read_workers(data_cfg, nbytes // per_image), progress=progress)


def read_workers(data_cfg: DataConfig, num_images: int) -> int:
    """``data.read_workers``, or for 0 (auto) one process per core up to 8 when there is enough
    to decode to pay for starting them."""
    if data_cfg.read_workers > 0:
        return int(data_cfg.read_workers)
    return min(8, os.cpu_count() or 1) if num_images >= AUTO_PARALLEL_IMAGES else 1

