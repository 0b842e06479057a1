"""Writers of real dataset files in the formats prepare reads (as the official releases lay
them out), for tests."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from m3d_condense.pipeline.data import LabeledImages


def nhwc(data: LabeledImages) -> np.ndarray:
    return data.images.permute(0, 2, 3, 1).numpy()


def write_idx(folder: Path, prefix: str, data: LabeledImages, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    x = nhwc(data)[..., 0]
    y = data.labels.numpy().astype(np.uint8)
    for kind, arr, code in (("images-idx3-ubyte", x, 3), ("labels-idx1-ubyte", y, 1)):
        body = struct.pack(">HBB", 0, 0x08, code) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
        path = folder / (f"{prefix}-{kind}" + (".gz" if gz else ""))
        if gz:
            with gzip.open(path, "wb") as f:
                f.write(body)
        else:
            path.write_bytes(body)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(data: LabeledImages) -> np.ndarray:
    return data.images.numpy().reshape(len(data.images), -1)  # (N, 3*32*32), channel planes, as released


def write_cifar10(folder: Path, train: LabeledImages, test: LabeledImages) -> Path:
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    half = len(train.labels) // 2
    for i, sl in enumerate((slice(0, half), slice(half, None)), start=1):
        _pickle(d / f"data_batch_{i}", {b"data": _cifar_rows(train)[sl], b"labels": train.labels[sl].tolist()})
    _pickle(d / "test_batch", {b"data": _cifar_rows(test), b"labels": test.labels.tolist()})
    _pickle(d / "batches.meta", {b"label_names": [n.encode() for n in train.class_names]})
    return d


def write_cifar100(folder: Path, train: LabeledImages, test: LabeledImages) -> Path:
    d = folder / "cifar-100-python"
    d.mkdir(parents=True)
    for name, data in (("train", train), ("test", test)):
        _pickle(d / name, {b"data": _cifar_rows(data), b"fine_labels": data.labels.tolist(),
                           b"coarse_labels": [0] * len(data.labels)})
    _pickle(d / "meta", {b"fine_label_names": [n.encode() for n in train.class_names]})
    return d


def write_svhn(folder: Path, train: LabeledImages, test: LabeledImages) -> None:
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("train", train), ("test", test)):
        y = data.labels.numpy().copy()
        y[y == 0] = 10  # SVHN's convention
        savemat(folder / f"{name}_32x32.mat", {"X": nhwc(data).transpose(1, 2, 3, 0), "y": y.reshape(-1, 1)})


def write_image_folder(folder: Path, split: str, data: LabeledImages, ext: str = "png",
                       sizes: list[tuple[int, int]] | None = None) -> None:
    """``folder/split/<class name>/<i>.<ext>``; ``sizes`` (w, h) cycles through varied sizes."""
    for i, (img, label) in enumerate(zip(nhwc(data), data.labels.tolist(), strict=True)):
        d = folder / split / data.class_names[label]
        d.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        if sizes:
            pil = pil.resize(sizes[i % len(sizes)])
        pil.save(d / f"img{i:04d}.{ext}")
