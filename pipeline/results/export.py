"""The writers of a condensed set's export formats (``SyntheticSet.export``, the command
``pipeline/export.py``): its decoded training images as imagefolder, webdataset or parquet, or as
the tensors DC-Bench (dcbench) and DD-Ranking (ddranking) read. The formats and their layouts:
``pipeline/export.py``'s help, docs/python-api.md ("Exporting a set") and docs/benchmarks.md.
"""
from __future__ import annotations

import inspect
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

import numpy as np
import torch

from m3d_condense.models import decode
from m3d_condense.pipeline.data import LabeledImages, storage
from m3d_condense.pipeline.data.arrays import labeled_split
from m3d_condense.pipeline.data.shards import encode_image, unit_to_uint8
from m3d_condense.pipeline.errors import RunError

if TYPE_CHECKING:
    from m3d_condense.pipeline.results.synthetic import SyntheticSet

FORMATS = ("imagefolder", "webdataset", "parquet", "dcbench", "ddranking")
CLASS_LIST = "classes.txt"  # imagefolder: the class names in label order, for prepare --classes
PARQUET_FILE = "train.parquet"
DECODED_PER_CHUNK = 1024  # decoded images converted at a time: bounds memory (and parquet row groups, ~100 MB at 224 px)
# Characters a class name may not hold as a folder name of ours: path separators and NUL split or
# end the path, and "#" starts a comment in classes.txt (sources.read_name_list).
UNSAFE_CHARS = ("/", "\\", "\0", "#")

# A test split for the webdataset format: uint8 (N, H, W, C) images and (N,) labels; labelled images
# in memory; or the data root (path or URL) of a prepared dataset or of train.npz/test.npz.
TestSplit = Union[tuple[Any, Any], LabeledImages, str]


class ExportError(RunError, ValueError):
    """The set cannot be written as asked: unknown format or option, unsafe class names, a test split
    that does not fit the set, or a destination that already holds an export."""


# ----------------------------------------------------------------------------- pixels
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C) by ``unit_to_uint8``: every
    export format holds these pixels."""
    return unit_to_uint8(images.detach().float().cpu().permute(0, 2, 3, 1).numpy())


def decoded_uint8(syn: SyntheticSet) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``syn.decoded()`` in order, chunk by chunk: (uint8 (M, H, W, C), int64 (M,) labels). Decoding a
    chunk at a time keeps memory at the stored set plus one chunk, not the whole float decoded set."""
    rows = max(1, DECODED_PER_CHUNK // syn.tiles)  # stored images per chunk
    for first in range(0, len(syn.labels), rows):
        images = decode(syn.images[first:first + rows], syn.factor)
        yield to_uint8(images), syn.labels[first:first + rows].repeat_interleave(syn.tiles).numpy()


def _all_uint8(syn: SyntheticSet) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(decoded_uint8(syn))
    return np.concatenate([x for x, _ in chunks]), np.concatenate([y for _, y in chunks])


# ----------------------------------------------------------------------------- imagefolder
def check_folder_names(class_names: list[str]) -> None:
    """Raise ExportError unless every class name can be a folder name as it is: not empty, not "."
    or "..", no path separator, NUL, control character or "#", no leading or trailing space, and no
    name twice. Names are refused rather than rewritten: a rewritten name is a different class name
    for every reader, and two names could become one."""
    bad = [n for n in class_names if n in ("", ".", "..") or n != n.strip() or not n.isprintable()
           or any(ch in n for ch in UNSAFE_CHARS)]
    if bad:
        raise ExportError(f"class names {bad[:5]} cannot be folder names (no /, \\, #, control characters, "
                          "leading or trailing spaces, '.' or '..'); export as webdataset or parquet instead")
    twice = sorted({n for n in class_names if class_names.count(n) > 1})
    if twice:
        raise ExportError(f"class names {twice[:5]} occur twice: their images would share one folder")


def write_png_tree(syn: SyntheticSet, root: str, folders: list[str]) -> None:
    """``root/<folders[label]>/<i:05d>.png`` for every decoded image (i counts within its class, in
    ``decoded()`` order). The caller has refused a ``root`` that exists."""
    counts = [0] * len(folders)
    for pixels, labels in decoded_uint8(syn):
        files = {}
        for image, label in zip(pixels, labels, strict=True):
            files[storage.join(root, folders[label], f"{counts[label]:05d}.png")] = encode_image(image, "png")
            counts[label] += 1
        storage.write_files_atomic(files)  # a chunk at a time: concurrent PUTs on an object store


def write_imagefolder(syn: SyntheticSet, dest: str) -> str:
    """``DEST/train/<class name>/<i:05d>.png`` for every decoded image (i counts within its class, in
    ``decoded()`` order), then ``DEST/classes.txt``. Refuses a DEST whose train/ exists: images left
    there by an earlier export would silently join this set."""
    check_folder_names(syn.class_names)
    train = storage.join(dest, "train")
    if storage.exists(train):
        raise ExportError(f"{train} already exists; remove it or choose another destination")
    storage.check_writable(dest)
    write_png_tree(syn, train, syn.class_names)
    names = "".join(f"{n}\n" for n in syn.class_names)
    storage.write_bytes_atomic(storage.join(dest, CLASS_LIST), names.encode())  # last: the export is complete
    return dest


# ----------------------------------------------------------------------------- webdataset
def write_webdataset(syn: SyntheticSet, dest: str, test: TestSplit | None = None, shard_size: int = 1000,
                     log: Callable[[str], Any] = lambda m: None) -> str:
    """Class-sharded PNG tars and ``DEST/manifest.parquet`` (``pipeline/prepare.py``'s format), split
    "train" the decoded set and, when ``test`` is given, split "test" (see ``as_test_split``), so DEST
    serves as ``data.root`` of the ``custom`` preset. ``shard_size``: images per shard at most."""
    from m3d_condense.pipeline.data.sources import arrays_source
    from m3d_condense.pipeline.data.writer import PrepareOptions, prepare

    x, y = _all_uint8(syn)
    splits = {"train": (x, y)}
    if test is not None:
        splits["test"] = as_test_split(test, syn.class_names, x.shape[1:])
    source = arrays_source(splits, syn.class_names, origin="synthetic set")
    prepare(source, dest, PrepareOptions(image_format="png", shard_size=shard_size, progress=False), log=log)
    return dest


def as_test_split(test: TestSplit, class_names: list[str], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A test split as uint8 (N, H, W, C) images and (N,) labels. ``test`` is such a pair (numpy
    arrays or tensors), a ``LabeledImages`` (uint8 (N, C, H, W)), or the data root (path or URL) of a
    dataset a run reads (prepared shards, or train.npz/test.npz), whose "test" split is read. The
    classes must be ``class_names`` (for a LabeledImages or a root) and every image (H, W, C) ``shape``."""
    if isinstance(test, str) or hasattr(test, "__fspath__"):
        try:
            test = labeled_split(str(test), "test")
        except RunError as e:
            raise ExportError(f"cannot use the test split of {test} for this set: {e}") from None
    if isinstance(test, LabeledImages):
        if list(test.class_names) != list(class_names):
            raise ExportError(f"the test split's classes {list(test.class_names)[:5]}... are not the set's "
                              f"{list(class_names)[:5]}...")
        test = (test.images.permute(0, 2, 3, 1).numpy(), test.labels.numpy())
    x, y = (np.asarray(a) for a in test)
    if x.ndim != 4 or x.shape[1:] != tuple(shape):
        raise ExportError(f"test images are {x.shape} (N, H, W, C); the set's images are {tuple(shape)}")
    return x, y


# ----------------------------------------------------------------------------- parquet
def parquet_url(dest: str) -> str:
    """The file the parquet format writes: ``dest`` itself when it ends in .parquet, else ``dest/train.parquet``."""
    return str(dest) if str(dest).endswith(".parquet") else storage.join(dest, PARQUET_FILE)


def huggingface_features(class_names: list[str]) -> dict[str, Any]:
    """The ``datasets`` features of the parquet export, as ``datasets.Features.to_dict()`` writes them
    under the schema metadata key "huggingface" (``{"info": {"features": ...}}``)."""
    return {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": list(class_names)}}


def parquet_schema(class_names: list[str]):
    """``image`` struct<bytes: binary, path: string> (the ``datasets`` Image storage; field order as
    ``datasets`` has it, which it compares before applying the metadata) and ``label`` int64."""
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    meta = {"huggingface": json.dumps({"info": {"features": huggingface_features(class_names)}})}
    return pa.schema([("image", image), ("label", pa.int64())]).with_metadata(meta)


def write_parquet(syn: SyntheticSet, dest: str) -> str:
    """One parquet file (``parquet_url(dest)``) of every decoded image as PNG bytes and its label, one
    row group per decode chunk. PNG bytes are stored uncompressed, as ``datasets`` does: they are
    compressed already."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = parquet_url(dest)
    schema = parquet_schema(syn.class_names)
    sink = pa.BufferOutputStream()  # the file is written whole at the end (one atomic write at any URL)
    with pq.ParquetWriter(sink, schema, compression={"image.bytes": "none", "image.path": "none", "label": "snappy"},
                          use_dictionary=["label"]) as writer:
        for pixels, labels in decoded_uint8(syn):
            images = [{"bytes": encode_image(p, "png"), "path": None} for p in pixels]
            writer.write_table(pa.table({"image": images, "label": labels}, schema=schema))
    storage.write_bytes_atomic(url, sink.getvalue().to_pybytes())
    return dest


# ----------------------------------------------------------------------------- benchmarks: dcbench, ddranking
@dataclass(frozen=True)
class BenchmarkDataset:
    """A dataset as a benchmark's own loader defines it: classes, channels, the size of its test
    images (None: it resizes them to the size it is given), and the per-channel mean and std it
    normalises its real images with, which the synthetic tensor it trains on must share."""

    classes: int
    channels: int
    size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# DC-Bench (justincui03/dc_benchmark, evaluator/evaluator_utils.py get_dataset; its --normalize_data
# is always on): the test set is ToTensor + Normalize(mean, std), and the names are its --dataset values.
DCBENCH_DATASETS = {
    "CIFAR10": BenchmarkDataset(10, 3, (32, 32), CIFAR10_MEAN, CIFAR10_STD),
    "CIFAR100": BenchmarkDataset(100, 3, (32, 32), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": BenchmarkDataset(200, 3, (64, 64), IMAGENET_MEAN, IMAGENET_STD),
}
# DD-Ranking (ddranking 0.2.0, ddranking/utils/data.py get_dataset, use_zca off): CIFAR-100 takes
# CIFAR-10's statistics there; the ImageNet sets are resized to the evaluator's im_size.
DDRANKING_DATASETS = {
    "CIFAR10": BenchmarkDataset(10, 3, (32, 32), CIFAR10_MEAN, CIFAR10_STD),
    "CIFAR100": BenchmarkDataset(100, 3, (32, 32), CIFAR10_MEAN, CIFAR10_STD),
    "TinyImageNet": BenchmarkDataset(200, 3, (64, 64), IMAGENET_MEAN, IMAGENET_STD),
    "ImageNet1K": BenchmarkDataset(1000, 3, None, IMAGENET_MEAN, IMAGENET_STD),
    **{name: BenchmarkDataset(10, 3, None, IMAGENET_MEAN, IMAGENET_STD)
       for name in ("ImageNette", "ImageWoof", "ImageMeow", "ImageSquawk", "ImageFruit", "ImageYellow")},
}
DDRANKING_IMAGES, DDRANKING_LABELS, DDRANKING_META = "images.pt", "labels.pt", "ddranking.json"
DDRANKING_FOLDER = "images"


def stored_ipc(syn: SyntheticSet) -> int:
    """Stored images per class, which must be one number: the IPC the benchmarks name a set by."""
    counts = torch.bincount(syn.labels, minlength=len(syn.class_names))
    if len(counts) == 0 or int(counts.min()) != int(counts.max()) or int(counts.min()) == 0:
        raise ExportError(f"the classes hold {int(counts.min())} to {int(counts.max())} stored images; a benchmark "
                          "set has one IPC for every class")
    return int(counts[0])


def benchmark_dataset(syn: SyntheticSet, benchmark: str, known: dict[str, BenchmarkDataset], dataset: str,
                      mean: list[float] | None, std: list[float] | None) -> tuple[str, list[float], list[float]]:
    """The benchmark's spelling of ``dataset`` and the mean and std to normalise with: the
    benchmark's own for a dataset it knows (matched case-insensitively; the set must have its
    classes, channels and size), else ``mean``/``std``, else the set's (its real data's)."""
    channels, h, w = syn.images.shape[1:]
    name = {k.lower(): k for k in known}.get(str(dataset).lower())
    if name is not None:
        spec = known[name]
        wrong = [f"{what} {want} (this set: {have})" for what, want, have in
                 (("classes", spec.classes, len(syn.class_names)), ("channels", spec.channels, channels),
                  ("image size", spec.size, (h, w))) if want is not None and want != have]
        if wrong:
            raise ExportError(f"{benchmark}'s {name} has " + ", ".join(wrong))
        mean, std = spec.mean if mean is None else mean, spec.std if std is None else std
    else:
        if not dataset or any(ch in str(dataset) for ch in UNSAFE_CHARS):
            raise ExportError(f"dataset {dataset!r} cannot name a {benchmark} dataset")
        name, mean, std = str(dataset), syn.mean if mean is None else mean, syn.std if std is None else std
        if mean is None or std is None:
            raise ExportError(f"{benchmark} does not know the dataset {name!r} (it knows {', '.join(known)}), and "
                              "this set carries no mean and std: pass mean and std (per channel, pixels in [0, 1])")
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ExportError(f"mean {mean} and std {std} must have one value per channel ({channels}), std > 0")
    return name, mean, std


def normalised_decoded(syn: SyntheticSet, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoded set class-major (every image of class 0, then class 1, ...; ``decoded()`` order
    within a class) as float32 (M, C, H, W) ``(clamp(x, 0, 1) - mean) / std`` and int64 (M,) labels."""
    order = torch.argsort(syn.labels, stable=True)
    images = decode(syn.images[order].detach().float().cpu(), syn.factor).clamp(0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((images - m) / s).contiguous(), syn.labels[order].cpu().long().repeat_interleave(syn.tiles)


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def dcbench_file(dataset: str, method: str, ipc: int) -> str:
    """Where DC-Bench's DC/DSA/DM loaders look, under its distilled_results folder:
    ``<METHOD>/<dataset>/IPC<ipc>/res_<METHOD>_<dataset>_<model>_<ipc>ipc.pt``, the model ConvNetD4
    for tinyimagenet and ConvNet otherwise (its ``get_data_file_name``)."""
    model = "ConvNetD4" if dataset == "tinyimagenet" else "ConvNet"
    return f"{method}/{dataset}/IPC{ipc}/res_{method}_{dataset}_{model}_{ipc}ipc.pt"


def dcbench_url(syn: SyntheticSet, dest: str, dataset: str, method: str = "M3D", ipc: int | None = None) -> str:
    """The file ``write_dcbench`` writes: ``dest`` itself when it ends in .pt, else ``dcbench_file``
    under ``dest`` (the dataset spelled as DC-Bench spells it, ``ipc`` by default the stored IPC)."""
    if str(dest).endswith(".pt"):
        return str(dest)
    name = {k.lower(): k for k in DCBENCH_DATASETS}.get(str(dataset).lower(), str(dataset))
    return storage.join(dest, dcbench_file(name, _method_name(method), stored_ipc(syn) if ipc is None else int(ipc)))


def _method_name(method: str) -> str:
    method = str(method).upper()
    if not method or any(ch in method for ch in UNSAFE_CHARS):
        raise ExportError(f"method {method!r} cannot name a DC-Bench folder")
    return method


def write_dcbench(syn: SyntheticSet, dest: str, dataset: str, method: str = "M3D", ipc: int | None = None,
                  mean: list[float] | None = None, std: list[float] | None = None) -> str:
    """The file DC-Bench's DC/DSA/DM loader (``torch.load(path)["data"][-1]``) reads: a dict whose
    "data" is ``[[images, labels]]``, images the decoded set class-major as float32 (N, C, H, W)
    normalised with DC-Bench's mean and std of ``dataset``, labels int64 (N,), the layout DC/DM's
    own ``res_*.pt`` files have; "m3d" records the factor, both IPC counts and the normalisation.
    Written at ``dcbench_url`` (``ipc``: the IPC the path names, by default the stored one)."""
    name, mean, std = benchmark_dataset(syn, "DC-Bench", DCBENCH_DATASETS, dataset, mean, std)
    per_class = stored_ipc(syn)
    if ipc is not None and int(ipc) < 1:
        raise ExportError(f"ipc {ipc} cannot name a DC-Bench folder (IPC<ipc>): it must be >= 1")
    url = dcbench_url(syn, dest, name, method, ipc)
    images, labels = normalised_decoded(syn, mean, std)
    meta = {"dataset": name, "method": _method_name(method), "ipc": per_class, "factor": int(syn.factor),
            "images_per_class": per_class * syn.tiles, "class_names": list(syn.class_names),
            "mean": mean, "std": std}
    storage.write_bytes_atomic(url, _torch_bytes({"data": [[images, labels]], "m3d": meta}))
    return dest


def write_ddranking(syn: SyntheticSet, dest: str, dataset: str, mean: list[float] | None = None,
                    std: list[float] | None = None, folder: bool = False) -> str:
    """DD-Ranking's input under ``dest``: ``images.pt``, the decoded set class-major as float32
    (N, C, H, W) normalised with DD-Ranking's mean and std of ``dataset`` (its ``image_tensor``, which
    it trains on as is), and ``labels.pt``, int64 (N,) hard labels (its ``hard_labels``); with
    ``folder``, PNGs in ``images/<label:05d>/<i:05d>.png`` instead (its ``image_path``, an ImageFolder
    whose sorted folders are the labels). ``ddranking.json``, written last, gives the stored IPC,
    the decoded images per class, the normalisation and the files."""
    name, mean, std = benchmark_dataset(syn, "DD-Ranking", DDRANKING_DATASETS, dataset, mean, std)
    per_class = stored_ipc(syn)
    storage.check_writable(dest)
    if folder:
        root = storage.join(dest, DDRANKING_FOLDER)
        if storage.exists(root):
            raise ExportError(f"{root} already exists; remove it or choose another destination")
        write_png_tree(syn, root, [f"{c:05d}" for c in range(len(syn.class_names))])
        files = {"image_path": DDRANKING_FOLDER}
    else:
        images, labels = normalised_decoded(syn, mean, std)
        storage.write_bytes_atomic(storage.join(dest, DDRANKING_IMAGES), _torch_bytes(images))
        storage.write_bytes_atomic(storage.join(dest, DDRANKING_LABELS), _torch_bytes(labels))
        files = {"image_tensor": DDRANKING_IMAGES, "hard_labels": DDRANKING_LABELS}
    channels, h, w = syn.images.shape[1:]
    meta = {"dataset": name, "ipc": per_class, "factor": int(syn.factor), "images_per_class": per_class * syn.tiles,
            "num_classes": len(syn.class_names), "im_size": [h, w], "channels": channels, "mean": mean, "std": std,
            "normalised": not folder, **files, "class_names": list(syn.class_names)}
    storage.write_bytes_atomic(storage.join(dest, DDRANKING_META), (json.dumps(meta, indent=1) + "\n").encode())
    return dest


# ----------------------------------------------------------------------------- dispatch
WRITERS: dict[str, Callable[..., str]] = {"imagefolder": write_imagefolder, "webdataset": write_webdataset,
                                          "parquet": write_parquet, "dcbench": write_dcbench,
                                          "ddranking": write_ddranking}


def export(syn: SyntheticSet, dest: str, format: str, **options: Any) -> str:
    """Write ``syn``'s decoded images to ``dest`` (path or fsspec URL) as ``format`` (one of FORMATS);
    ``options`` go to its writer (webdataset: ``test``, ``shard_size``, ``log``; dcbench: ``dataset``,
    ``method``, ``ipc``, ``mean``, ``std``; ddranking: ``dataset``, ``mean``, ``std``, ``folder``).
    Returns ``dest``."""
    if format not in WRITERS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    writer = WRITERS[format]
    try:
        inspect.signature(writer).bind(syn, dest, **options)
    except TypeError:
        params = list(inspect.signature(writer).parameters.values())[2:]
        takes = [p.name for p in params]
        required = [p.name for p in params if p.default is inspect.Parameter.empty]
        raise ExportError(f"format {format!r} takes the options {takes or 'none'}"
                          + (f" ({', '.join(required)} required)" if required else "")
                          + f", got {sorted(options)}") from None
    return writer(syn, str(dest), **options)
