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


def _pickle(path: Path, obj: dict, protocol: int = 2, numpy1_names: bool = False) -> None:
    """``numpy1_names``: name numpy's array rebuilder as numpy 1 (and the official files) do,
    ``numpy.core.multiarray``, whichever numpy writes it (protocol 2's text GLOBAL opcodes only)."""
    data = pickle.dumps(obj, protocol=protocol)
    if numpy1_names:
        assert protocol == 2
        data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"_reconstruct" not in data or b"cnumpy.core.multiarray\n_reconstruct\n" in data
    path.write_bytes(data)


def _cifar_rows(data: LabeledImages) -> np.ndarray:
    return data.images.numpy().reshape(len(data.images), -1)  # (N, 3*32*32), channel planes, as released


def write_cifar10(folder: Path, train: LabeledImages, test: LabeledImages, **pickle_options) -> Path:
    """As the official files: every key the released batches hold (batch_label, labels, data,
    filenames; batches.meta's num_cases_per_batch, label_names, num_vis)."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    half = len(train.labels) // 2
    batches = [(f"data_batch_{i}", train, sl) for i, sl in enumerate((slice(0, half), slice(half, None)), start=1)]
    for name, data, sl in [*batches, ("test_batch", test, slice(None))]:
        labels = data.labels[sl].tolist()
        _pickle(d / name, {b"batch_label": f"{name} of 2".encode(), b"labels": labels, b"data": _cifar_rows(data)[sl],
                           b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}, **pickle_options)
    _pickle(d / "batches.meta", {b"num_cases_per_batch": half, b"label_names": [n.encode() for n in train.class_names],
                                 b"num_vis": 3072}, **pickle_options)
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
