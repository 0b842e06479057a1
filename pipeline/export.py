#!/usr/bin/env python
"""``python pipeline/export.py RUN_DIR DEST [--format F] [--test DATA_ROOT]``: write a run's condensed
set (its decoded training images, ``SyntheticSet.decoded()``) in a standard format. DEST is a local
path or any fsspec URL (s3://, gs://, ...).

  imagefolder  DEST/train/<class name>/<i:05d>.png (i: the image's position within its class) and
               DEST/classes.txt (the class names in label order). torchvision's ImageFolder and
               ``pipeline/prepare.py`` read it; both number the classes in sorted order of the folder
               names, so to keep this set's label order give prepare ``--classes DEST/classes.txt``.
  webdataset   class-sharded tars plus DEST/manifest.parquet, written by ``pipeline/prepare.py``'s own
               writer: our data layer reads it. With a test split (``--test``) DEST is a data root for
               the ``custom`` preset: ``python pipeline/run.py custom data.root=DEST``.
  parquet      DEST/train.parquet (or DEST itself when it ends in .parquet): columns ``image`` (PNG
               bytes, Hugging Face ``datasets`` Image storage) and ``label`` (int64), with the
               ``datasets`` features (Image, ClassLabel with the class names) in the schema metadata:
               ``datasets.load_dataset("parquet", data_files=...)`` yields PIL images and named labels.

Pixels are lossless: every format holds PNGs of ``to_uint8`` of the decoded images; grayscale
sets (C=1) as mode "L" PNGs, RGB sets as "RGB".

  python pipeline/export.py runs/cifar10_m3d_gaussian_ipc10_s0 exports/c10 --format imagefolder
  python pipeline/export.py s3://bucket/runs/in100 s3://bucket/in100-syn --format webdataset --test s3://bucket/in100
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

import numpy as np
import torch

# Run as a script, Python puts pipeline/ first on sys.path. That is harmless: everything is
# imported as m3d_condense.*, and no module in pipeline/ has the name of a standard or installed
# top-level module (tests/test_packaging.py checks both).
from m3d_condense.models import decode
from m3d_condense.pipeline.data import LabeledImages, storage
from m3d_condense.pipeline.data.arrays import labeled_split
from m3d_condense.pipeline.data.shards import encode_image, unit_to_uint8
from m3d_condense.pipeline.errors import RunError

if TYPE_CHECKING:
    from m3d_condense.pipeline.synthetic import SyntheticSet

FORMATS = ("imagefolder", "webdataset", "parquet")
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


def write_imagefolder(syn: SyntheticSet, dest: str) -> str:
    """``DEST/train/<class name>/<i:05d>.png`` for every decoded image (i counts within its class, in
    ``decoded()`` order), then ``DEST/classes.txt``. Refuses a DEST whose train/ exists: images left
    there by an earlier export would silently join this set."""
    check_folder_names(syn.class_names)
    train = storage.join(dest, "train")
    if storage.exists(train):
        raise ExportError(f"{train} already exists; remove it or choose another destination")
    storage.check_writable(dest)
    counts = [0] * len(syn.class_names)
    for pixels, labels in decoded_uint8(syn):
        files = {}
        for image, label in zip(pixels, labels, strict=True):
            files[storage.join(train, syn.class_names[label], f"{counts[label]:05d}.png")] = encode_image(image, "png")
            counts[label] += 1
        storage.write_files_atomic(files)  # a chunk at a time: concurrent PUTs on an object store
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


# ----------------------------------------------------------------------------- dispatch
WRITERS: dict[str, Callable[..., str]] = {"imagefolder": write_imagefolder, "webdataset": write_webdataset,
                                          "parquet": write_parquet}


def export(syn: SyntheticSet, dest: str, format: str, **options: Any) -> str:
    """Write ``syn``'s decoded images to ``dest`` (path or fsspec URL) as ``format`` (one of FORMATS);
    ``options`` go to its writer (webdataset: ``test``, ``shard_size``, ``log``). Returns ``dest``."""
    if format not in WRITERS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    writer = WRITERS[format]
    try:
        inspect.signature(writer).bind(syn, dest, **options)
    except TypeError:
        takes = [p for p in inspect.signature(writer).parameters][2:]
        raise ExportError(f"format {format!r} takes the options {takes or 'none'}, got {sorted(options)}") from None
    return writer(syn, str(dest), **options)


# ----------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python pipeline/export.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (path or URL) holding a synthetic set")
    p.add_argument("dest", metavar="DEST", help="output: /path, file://, s3://bucket/prefix, gs://...")
    p.add_argument("--format", choices=FORMATS, default="imagefolder", help="default: imagefolder")
    p.add_argument("--test", metavar="DATA_ROOT",
                   help="webdataset only: also write this dataset's test split, so DEST is a data.root for preset custom")
    return p


def main(argv: list[str] | None = None) -> int:
    from m3d_condense.pipeline.synthetic import SyntheticSet  # synthetic imports this module lazily, not at import

    p = parser()
    a = p.parse_args(argv)
    if a.test is not None and a.format != "webdataset":
        p.error("--test needs --format webdataset")
    options = {"test": a.test} if a.test is not None else {}
    try:
        syn = SyntheticSet.load(a.run_dir)
        export(syn, a.dest, a.format, **options)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = parquet_url(a.dest) if a.format == "parquet" else a.dest
    print(f"wrote {len(syn)} images of {len(syn.class_names)} classes as {a.format} to {where}"
          + (f" (with the test split of {a.test})" if a.test is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
