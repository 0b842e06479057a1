"""Any labelled image dataset as uint8 arrays: what the library API (``pipeline/api.py``) accepts.

- a map-style ``torch.utils.data.Dataset`` yielding ``(image, label)`` pairs, as torchvision's
  datasets do, or dicts with an ``image``/``img`` and a ``label`` key, as Hugging Face
  ``datasets`` do (plain or with a torch format);
- a pair of arrays ``(x, y)``: x uint8 (N, H, W, C), y (N,);
- a local folder or file ``pipeline/prepare.py`` reads (an ImageFolder tree, CIFAR batches,
  IDX files, .npz);
- for ``labeled_split``, also a data root a run reads (prepared shards, train/test .npz) and
  ``LabeledImages``.

An image may be a PIL image, a uint8 or float (in [0, 1]) tensor in (C, H, W) or (H, W, C), or
a numpy array (H, W, C) or (H, W). All images of a dataset must have one size and one channel
count; the error names the first item that differs.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.inmemory import npz_split
from m3d_condense.pipeline.data.labeled import LabeledImages
from m3d_condense.pipeline.data.manifest import FILENAME
from m3d_condense.pipeline.data.shards import unit_to_uint8
from m3d_condense.pipeline.data.sources import SourceError, open_source, require_images
from m3d_condense.pipeline.data.writer import image_mode, load_pixels
from m3d_condense.pipeline.logs import progress_bar

IMAGE_KEYS = ("image", "img", "pixel_values")
LABEL_KEYS = ("label", "labels", "fine_label", "target")


class DatasetFormatError(SourceError):
    """An item of a dataset is not an (image, label) this module can read; names the item."""


def dataset_arrays(dataset: Any, class_names: list[str] | None = None,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(x, y, class_names)``: x uint8 (N, H, W, C), y int64 (N,) from any of the module's inputs.
    Class names: ``class_names``, else the dataset's (torchvision ``.classes``, Hugging Face
    ``features["label"].names``), else "0", "1", ..."""
    if isinstance(dataset, tuple) and len(dataset) == 2:
        x, y = np.asarray(dataset[0]), np.asarray(dataset[1]).astype(np.int64).reshape(-1)
        x = x[..., None] if x.ndim == 3 else x
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise DatasetFormatError(f"(x, y): x must be uint8 (N, H, W, C) with C 1 or 3, got {x.dtype} {x.shape}")
    elif isinstance(dataset, str):
        return folder_arrays(dataset, "train")
    else:
        x, y = _items(dataset, progress)
    names = list(class_names) if class_names is not None else _names(dataset) or [str(c) for c in range(int(y.max()) + 1)]
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise DatasetFormatError(f"labels run from {y.min()} to {y.max()} but there are {len(names)} class names")
    return x, y, names


def labeled_split(source: Any, split: str, class_names: list[str] | None = None) -> LabeledImages:
    """Split ``split`` of ``source`` in memory, images uint8 (N, C, H, W): a data root a run reads
    (its split), a local folder prepare reads (its split), ``LabeledImages`` (as it is), or any
    dataset ``dataset_arrays`` takes (all of it, whatever ``split``; ``class_names`` as there)."""
    if isinstance(source, LabeledImages):
        return source
    if is_data_root(source) and storage.exists(storage.join(source, FILENAME)):  # prepared shards
        from m3d_condense.pipeline.config.loader import load_config  # the config loader reads this package
        from m3d_condense.pipeline.data.dataset import load_split

        return load_split(load_config("custom", [f"data.root={source}"]).data, split)
    if is_data_root(source):
        x, y, names = npz_split(source, split)
    elif isinstance(source, str):
        x, y, names = folder_arrays(source, split)
    else:
        x, y, names = dataset_arrays(source, class_names)
    return LabeledImages(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y), names)


def is_data_root(path: Any) -> bool:
    """Whether ``path`` (a path or URL) is a data root a run reads: prepared shards or .npz splits."""
    return isinstance(path, str) and any(storage.exists(storage.join(path, f))
                                         for f in (FILENAME, "train.npz", "test.npz"))


def folder_arrays(path: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Split ``split`` of a local dataset ``pipeline/prepare.py`` reads, decoded into arrays."""
    src = open_source(path)
    if split not in src.splits:
        raise SourceError(f"{path}: has no {split!r} split (has {sorted(src.splits)})")
    sp = src.splits[split]
    require_images(src.kind, {split: sp})
    mode = image_mode(src.splits)  # chosen over every split, so train and test get the same channels
    refs = [ref for items in sp.items for ref in items]
    images = [load_pixels(ref, None, mode) for ref in refs]
    odd = next((i for i, x in enumerate(images) if x.shape != images[0].shape), None)
    if odd is not None and isinstance(refs[odd], str):  # name the files; prepare --size makes one size
        raise SourceError(f"{refs[odd]}: image is {'x'.join(map(str, images[odd].shape))}, but {refs[0]} is "
                          f"{'x'.join(map(str, images[0].shape))}; prepare the folder with "
                          "`python pipeline/prepare.py SOURCE DEST --size S` (resize and centre-crop) and pass DEST")
    labels = np.concatenate([np.full(len(items), c, dtype=np.int64) for c, items in enumerate(sp.items)])
    return _stack(images, f"{path} {split}"), labels, list(sp.class_names)


def _items(dataset: Any, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        n = len(dataset)
    except TypeError:
        raise DatasetFormatError(f"{type(dataset).__name__}: not a map-style dataset (no len()); pass a "
                                 "torch.utils.data.Dataset, a Hugging Face Dataset or (x, y) arrays") from None
    images, labels = [], []
    for i in progress_bar(range(n), desc="reading the dataset", unit="img", progress=progress, leave=False):
        image, label = _split_item(dataset[i], i)
        images.append(_pixels(image, i))
        labels.append(int(label))
    return _stack(images, "dataset"), np.asarray(labels, dtype=np.int64)


def _split_item(item: Any, i: int) -> tuple[Any, Any]:
    if isinstance(item, dict):
        image = next((item[k] for k in IMAGE_KEYS if k in item), None)
        label = next((item[k] for k in LABEL_KEYS if k in item), None)
        if image is None or label is None:
            raise DatasetFormatError(f"dataset[{i}]: a dict without an image ({'/'.join(IMAGE_KEYS)}) or a label "
                                     f"({'/'.join(LABEL_KEYS)}) key; it has {sorted(item)}")
        return image, label
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise DatasetFormatError(f"dataset[{i}]: expected (image, label) or a dict, got {type(item).__name__}")


def _pixels(image: Any, i: int) -> np.ndarray:
    """uint8 (H, W, C) with C 1 or 3."""
    if isinstance(image, Image.Image):
        image = image if image.mode in ("L", "RGB") else image.convert("L" if image.mode in ("1", "I", "F") else "RGB")
        x = np.asarray(image)
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        t = t[None] if t.ndim == 2 else t
        if t.ndim == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
            t = t.permute(1, 2, 0)  # (C, H, W), torchvision's layout
        x = t.numpy()
    elif isinstance(image, np.ndarray):
        x = image
    else:
        raise DatasetFormatError(f"dataset[{i}]: the image is a {type(image).__name__}; expected a PIL image, a "
                                 "tensor or a numpy array")
    x = x[..., None] if x.ndim == 2 else x
    if x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise DatasetFormatError(f"dataset[{i}]: image of shape {tuple(x.shape)}; expected (H, W, C) or (C, H, W) "
                                 "with C 1 or 3")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):  # ToTensor's [0, 1]
        return unit_to_uint8(x)
    raise DatasetFormatError(f"dataset[{i}]: image dtype {x.dtype}; expected uint8 or floats in [0, 1]")


def _stack(images: list[np.ndarray], what: str) -> np.ndarray:
    if not images:
        raise DatasetFormatError(f"{what}: no images")
    first = images[0].shape
    for i, x in enumerate(images):
        if x.shape != first:
            raise DatasetFormatError(f"{what}[{i}]: image is {x.shape} (H, W, C) but item 0 is {first}; give every "
                                     "image one size (e.g. a resize transform)")
    return np.stack(images)


def _names(dataset: Any) -> list[str] | None:
    classes = getattr(dataset, "classes", None)  # torchvision
    if isinstance(classes, (list, tuple)) and classes:
        return [str(c) for c in classes]
    features = getattr(dataset, "features", None)  # Hugging Face datasets
    if features is not None:
        for key in LABEL_KEYS:
            names = getattr(features.get(key), "names", None) if hasattr(features, "get") else None
            if names:
                return [str(n) for n in names]
    return None
