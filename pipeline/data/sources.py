"""The dataset formats ``prepare`` reads, each turned into images grouped by class.

An image is referenced either by its file (ImageFolder; decoded later, in a worker) or by
its uint8 pixels (H, W, C) for the formats that ship as arrays: MNIST/Fashion-MNIST IDX
(raw or .gz), the CIFAR-10/100 python pickles, SVHN's .mat files and our .npz.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from m3d_condense.pipeline.errors import RunError

ImageRef = Union[str, np.ndarray]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
TEST_DIRS = ("test", "val")  # ImageFolder: the evaluation split is test/ or val/, written as "test"


class SourceError(RunError, ValueError):
    """SOURCE is not in a format prepare reads, or is inconsistent; the message names the file."""


@dataclass
class SourceSplit:
    """One split of a source: ``items[c]`` are class c's images in source order."""

    class_names: list[str]
    items: list[list[ImageRef]]
    origin: str  # the file or folder it came from, for messages

    def select(self, names: list[str], where: str) -> "SourceSplit":
        """Keep the classes in ``names``, in that order (indices are renumbered)."""
        index = {n: i for i, n in enumerate(self.class_names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise SourceError(f"{where}: classes {unknown[:5]} are not in {self.origin} "
                              f"({len(self.class_names)} classes, e.g. {self.class_names[:3]})")
        return SourceSplit(list(names), [self.items[index[n]] for n in names], self.origin)


@dataclass
class Source:
    kind: str
    path: str
    splits: dict[str, SourceSplit]


def _by_class(x: np.ndarray, y: np.ndarray, names: list[str], origin: str) -> SourceSplit:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(x) != len(y):
        raise SourceError(f"{origin}: {len(x)} images but {len(y)} labels")
    bad = np.flatnonzero((y < 0) | (y >= len(names)))
    if len(bad):
        raise SourceError(f"{origin}: label {y[bad[0]]} at index {bad[0]} is outside 0..{len(names) - 1}")
    x = np.ascontiguousarray(x)
    return SourceSplit(names, [list(x[y == c]) for c in range(len(names))], origin)


# ----------------------------------------------------------------------------- IDX (MNIST)
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise SourceError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
        dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    except (OSError, EOFError, struct.error) as e:
        raise SourceError(f"{path}: unreadable IDX file ({e})") from None
    if body.size != int(np.prod(dims)):
        raise SourceError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes, found {body.size}")
    return body.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx(folder: Path) -> Source | None:
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = _idx_file(folder, f"{prefix}-images-idx3-ubyte"), _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            x, y = _read_idx(images), _read_idx(labels)
            names = [str(c) for c in range(int(y.max()) + 1)] if y.size else []
            splits[split] = _by_class(x[..., None], y, names, str(images))
    return Source("idx", str(folder), splits) if splits else None


# ----------------------------------------------------------------------------- CIFAR
def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2 (``encode(text, 'latin1')``),
    and nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}: only 'latin1' builds bytes")
    return text.encode("latin1", errors)


def _cifar_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR python pickle may name: what a numpy array and its dtype are
    rebuilt from (under numpy 1's module names, as the official files were written, and numpy
    2's, as a re-pickle writes them; protocol 5 rebuilds arrays with ``_frombuffer``), and the
    constructors Python 3 pickles bytes with at protocol 2. Dicts, lists, ints and bytes need no
    other."""
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode,
               ("__builtin__", "bytes"): bytes, ("builtins", "bytes"): bytes}  # b"" at protocol 2: bytes()
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only data: any global outside ``_cifar_globals`` (``os.system``, ``builtins.eval``,
    any class) is refused before it is looked up, so a crafted file cannot run code."""

    allowed = _cifar_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(module, name) from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except _ForbiddenGlobal as e:
        raise SourceError(f"{path}: refused to unpickle the global {e.qualified}: a CIFAR python pickle holds only "
                          "dicts, lists, ints, bytes and numpy arrays, so this file is not one (it may be crafted "
                          "to run code when loaded)") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises many types
        raise SourceError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from None


def _cifar_split(paths: list[Path], label_key: bytes, names: list[str]) -> SourceSplit:
    xs, ys = [], []
    for p in paths:
        d = _unpickle(p)
        if b"data" not in d or label_key not in d:
            raise SourceError(f"{p}: missing {b'data'!r} or {label_key!r} (has {sorted(d)})")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[label_key]))
    return _by_class(np.concatenate(xs), np.concatenate(ys), names, str(paths[0].parent))


def _cifar(folder: Path) -> Source | None:
    for sub in (folder, folder / "cifar-10-batches-py", folder / "cifar-100-python"):
        if (sub / "data_batch_1").is_file():
            names = [n.decode() for n in _unpickle(sub / "batches.meta")[b"label_names"]]
            train = sorted(sub.glob("data_batch_*"))
            return Source("cifar10", str(sub), {"train": _cifar_split(train, b"labels", names),
                                                "test": _cifar_split([sub / "test_batch"], b"labels", names)})
        if (sub / "meta").is_file() and (sub / "train").is_file():
            names = [n.decode() for n in _unpickle(sub / "meta")[b"fine_label_names"]]
            return Source("cifar100", str(sub), {"train": _cifar_split([sub / "train"], b"fine_labels", names),
                                                 "test": _cifar_split([sub / "test"], b"fine_labels", names)})
    return None


# ----------------------------------------------------------------------------- SVHN
def _svhn(folder: Path) -> Source | None:
    files = {s: folder / f"{s}_32x32.mat" for s in ("train", "test", "extra")}
    if not files["train"].is_file() and not files["test"].is_file():
        return None
    from scipy.io import loadmat

    splits = {}
    for split, path in files.items():
        if not path.is_file():
            continue
        try:
            d = loadmat(path)
        except Exception as e:  # noqa: BLE001
            raise SourceError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None
        if "X" not in d or "y" not in d:
            raise SourceError(f"{path}: missing 'X' or 'y'")
        x = np.asarray(d["X"], dtype=np.uint8).transpose(3, 0, 1, 2)  # (32, 32, 3, N) -> (N, 32, 32, 3)
        y = np.asarray(d["y"]).reshape(-1) % 10  # SVHN labels the digit 0 as 10
        splits[split] = _by_class(x, y, [str(c) for c in range(10)], str(path))
    return Source("svhn", str(folder), splits)


# ----------------------------------------------------------------------------- arrays in memory
def arrays_source(splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str],
                  origin: str = "arrays") -> Source:
    """A source of images already in memory: per split, uint8 (N, H, W, C) images (C 1 or 3) and
    (N,) labels in 0..len(class_names)-1. ``origin`` names it in messages."""
    out = {}
    for name, (x, y) in splits.items():
        x = np.asarray(x)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise SourceError(f"{origin} {name}: images must be uint8 (N, H, W, C) with C 1 or 3, got {x.dtype} "
                              f"{x.shape}")
        out[name] = _by_class(x, y, list(class_names), f"{origin} {name}")
    return Source("arrays", origin, out)


# ----------------------------------------------------------------------------- npz
def read_npz(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The one reader of our .npz (prepare's source, and ``data.source=npz``'s in-memory split):
    x uint8 (N, H, W, C) with C 1 or 3, y int64 (N,), class names; SourceError naming ``where``."""
    try:
        with np.load(io.BytesIO(raw)) as d:
            missing = {"x", "y", "class_names"} - set(d.files)
            if missing:
                raise SourceError(f"{where}: missing arrays {sorted(missing)} (has {sorted(d.files)})")
            x, y, names = d["x"], d["y"], [str(n) for n in d["class_names"]]
    except (OSError, ValueError) as e:
        if isinstance(e, SourceError):
            raise
        raise SourceError(f"{where}: not a readable .npz ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise SourceError(f"{where}: 'x' must be uint8 (N, H, W, C) with C 1 or 3, got {x.dtype} {x.shape}")
    return x, y.astype(np.int64), names


def _npz_split(path: Path) -> SourceSplit:
    return _by_class(*read_npz(path.read_bytes(), str(path)), str(path))


def _npz(path: Path) -> Source | None:
    if path.is_file() and path.suffix == ".npz":
        return Source("npz", str(path), {path.stem: _npz_split(path)})
    files = sorted(path.glob("*.npz")) if path.is_dir() else []
    return Source("npz", str(path), {f.stem: _npz_split(f) for f in files}) if files else None


# ----------------------------------------------------------------------------- ImageFolder
def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` without hidden ones: a crashed atomic write's ``.tmp-*`` file,
    ``.ipynb_checkpoints`` or ``.DS_Store`` is never an image or a class."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in _visible(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _image_folder(folder: Path) -> Source | None:
    train = folder / "train"
    if not train.is_dir():
        return None
    names = sorted(p.name for p in _visible(train) if p.is_dir())
    if not names:
        raise SourceError(f"{train}: no class folders (expected train/<class>/*.jpg|png)")
    splits = {"train": SourceSplit(names, [_image_files(train / n) for n in names], str(train))}
    for d in TEST_DIRS:
        if (folder / d).is_dir():
            test = folder / d
            present = {p.name for p in _visible(test) if p.is_dir()}
            splits["test"] = SourceSplit(names, [_image_files(test / n) if n in present else [] for n in names],
                                         str(test))
            break
    return Source("imagefolder", str(folder), splits)


def require_images(kind: str, splits: dict[str, SourceSplit]) -> None:
    """Refuse a class without images in any split: it cannot be condensed (nor tested). For an
    ImageFolder the message names the class folder and what it holds instead."""
    for split, sp in splits.items():
        for name, items in zip(sp.class_names, sp.items, strict=True):
            if items:
                continue
            if kind != "imagefolder":
                raise SourceError(f"{sp.origin}: class {name!r} has no images in split {split!r}")
            folder = Path(sp.origin) / name
            if not folder.is_dir():
                raise SourceError(f"{folder}: no such class folder; every class of train/ needs one in {sp.origin}")
            others = sorted(p.name for p in _visible(folder))
            held = (f"it holds {len(others)} other entries, e.g. {others[:3]}" if others else "it is empty")
            raise SourceError(f"{folder}: class folder without images ({'/'.join(sorted(IMAGE_SUFFIXES))}; {held}); "
                              "a class without images cannot be condensed: add images, remove the folder, or leave "
                              "the class out with --classes")


DETECTORS = (_npz, _idx, _cifar, _svhn, _image_folder)
LAYOUTS = ("an ImageFolder tree (train/<class>/*.jpg|png, optional val/ or test/)",
           "MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...)",
           "CIFAR-10/100 python batches (cifar-10-batches-py/, cifar-100-python/)",
           "SVHN .mat files (train_32x32.mat, test_32x32.mat)",
           ".npz files (x uint8 NHWC, y, class_names)")


def open_source(path: str) -> Source:
    """Detect the format of the local file or folder ``path`` and read its index (arrays load
    into memory; ImageFolder files are only listed)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    for detect in DETECTORS:
        src = detect(p) if p.is_dir() or detect is _npz else None
        if src is not None:
            return src
    raise SourceError(f"{p}: not a dataset prepare can read; expected one of:\n  " + "\n  ".join(LAYOUTS))


def read_name_list(path: str) -> list[str]:
    """One class per line; blank lines and '#' comments are skipped; duplicates are an error."""
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as e:
        raise SourceError(f"{path}: cannot read class list ({e})") from None
    names = [ln.split("#", 1)[0].strip() for ln in lines]
    names = [n for n in names if n]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SourceError(f"{path}: classes listed twice: {dup[:5]}")
    if not names:
        raise SourceError(f"{path}: no class names")
    return names
