"""Convert a dataset into class-sharded WebDataset tars plus ``manifest.parquet`` at any
fsspec URL: ``DEST/<split>/<class:05d>-<shard:05d>.tar``, one class per shard.

The manifest is written last, so an interrupted or failed prepare leaves nothing that looks
complete. A rerun re-encodes (deterministically) and skips uploading every shard whose
sha256 equals the one the previous manifest lists.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import numpy as np
from PIL import Image

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.manifest import FILENAME, Manifest, ManifestError, ShardRow, read_manifest
from m3d_condense.pipeline.data.shards import Sample, build_shard, encode_image, resize_pixels
from m3d_condense.pipeline.data.sources import (
    ImageRef,
    Source,
    SourceError,
    SourceSplit,
    open_source,
    read_name_list,
    require_images,
)
from m3d_condense.pipeline.logs import progress_bar

FORMATS = ("auto", "png", "jpeg")


@dataclass(frozen=True)
class PrepareOptions:
    splits: tuple[str, ...] | None = None  # None: every split the source has
    size: int | None = None                # square side after resize (shorter side) + centre crop
    image_format: str = "auto"             # auto: jpeg for JPEG files, png (lossless) otherwise
    quality: int = 90                      # JPEG quality
    shard_size: int = 1000                 # images per shard at most
    class_list: str | None = None          # file: the classes to keep, in this order (e.g. ImageNet-100 wnids)
    class_names: str | None = None         # file: new names for the classes, one per line, in label order
    workers: int = 1
    progress: bool = True


@dataclass(frozen=True)
class ShardTask:
    split: str
    class_index: int
    class_name: str
    number: int
    first: int                 # position of the first image within the class
    refs: tuple[ImageRef, ...]
    origin: str


# ----------------------------------------------------------------------------- images
GRAYSCALE_MODES = ("1", "L")  # PIL modes of one-channel files


def first_images(splits: dict[str, SourceSplit]) -> list[ImageRef]:
    """The first image of every class of every split: the sample the format and mode are chosen by."""
    return [r for sp in splits.values() for items in sp.items for r in items[:1]]


def _open_image(path: str, decode: bool = True) -> Image.Image:
    """The image file, decoded unless ``decode`` is False (then only its header is read, which
    gives the mode and size); a SourceError naming the file if PIL cannot read it."""
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            return img
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise SourceError(f"{path}: not a decodable image ({type(e).__name__}: {e})") from None


def image_mode(splits: dict[str, SourceSplit]) -> str:
    """The PIL mode every image file of ``splits`` becomes, one for all splits: "L" (one channel)
    when every file is grayscale, as an exported MNIST set is, else "RGB": ImageNet's few grayscale
    JPEGs join its colour ones, and CMYK JPEGs (and palette or RGBA PNGs) are converted to RGB by
    PIL (CMYK without a colour profile). The first file of each class (50 at most) is sampled; only
    when all of those are grayscale is every file's header read, since a colour file among them
    would otherwise lose its colour. Arrays keep their own channels."""
    files = [r for r in first_images(splits) if isinstance(r, str)][:50]
    modes = {_open_image(f, decode=False).mode for f in files}  # the header says it
    if not modes or not modes <= set(GRAYSCALE_MODES):
        return "RGB"
    every = (r for sp in splits.values() for items in sp.items for r in items if isinstance(r, str))
    return "RGB" if any(_header_mode(f) not in (*GRAYSCALE_MODES, None) for f in every) else "L"


def _header_mode(path: str) -> str | None:
    """The PIL mode the header of ``path`` gives, None when it cannot be read: the encoder reports
    such a file, naming it, when it reaches it."""
    try:
        with Image.open(path) as img:
            return img.mode
    except Exception:  # noqa: BLE001 - PIL raises many types for bad files
        return None


def check_sizes(splits: dict[str, SourceSplit], size: int | None) -> None:
    """Without ``size``, refuse before encoding anything when the sampled files (the first of each
    class, 50 at most) differ in size, naming two of them; ``prepare`` checks every image as it
    encodes it."""
    if size is not None:
        return
    seen: dict[tuple[int, int], str] = {}
    for f in [r for r in first_images(splits) if isinstance(r, str)][:50]:
        seen.setdefault(_open_image(f, decode=False).size, f)
    if len(seen) > 1:
        (a, fa), (b, fb) = list(seen.items())[:2]
        raise SourceError(f"{fb}: image is {b[1]}x{b[0]} (height x width), but {fa} is {a[1]}x{a[0]}; images of "
                          "several sizes need --size S (resize the shorter side to S, then centre-crop SxS)")


def load_pixels(ref: ImageRef, size: int | None, mode: str) -> np.ndarray:
    """uint8 (H, W, C) for a file (converted to PIL ``mode``, see ``image_mode``) or an array;
    resized so the shorter side is ``size`` and centre-cropped to size x size when ``size`` is given."""
    if isinstance(ref, str):
        pixels = np.asarray(_open_image(ref).convert(mode))
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    else:
        pixels = ref
    h, w = pixels.shape[:2]
    if size is not None and (h, w) != (size, size):
        scale = size / min(w, h)
        pixels = resize_pixels(pixels, max(size, round(h * scale)), max(size, round(w * scale)))
        h, w = pixels.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        pixels = pixels[top:top + size, left:left + size]
    return pixels


def _format_for(refs: list[ImageRef], requested: str) -> str:
    if requested != "auto":
        return requested
    files = [r for r in refs if isinstance(r, str)]
    jpeg = files and all(os.path.splitext(f)[1].lower() in (".jpg", ".jpeg") for f in files[:50])
    return "jpeg" if jpeg else "png"


# ----------------------------------------------------------------------------- one shard (runs in a worker)
def build_task(task: ShardTask, dest: str, image_format: str, quality: int, size: int | None,
               previous: dict[str, tuple[str, int]], mode: str) -> dict:
    """Encode one shard, write it unless the previous manifest already has these bytes, and
    return its manifest row plus the pixel statistics of its images."""
    samples, shape = [], None
    total, total_sq = None, None
    for i, ref in enumerate(task.refs):
        pixels = load_pixels(ref, size, mode)
        if shape is None:
            shape = pixels.shape
        elif pixels.shape != shape:  # the image named only here, on the error path
            where = ref if isinstance(ref, str) else f"{task.origin} class {task.class_name!r} image {task.first + i}"
            raise SourceError(f"{where}: image is {pixels.shape[0]}x{pixels.shape[1]}x{pixels.shape[2]}, others "
                              f"are {shape[0]}x{shape[1]}x{shape[2]} (pass --size S to resize the shorter side to "
                              "S and centre-crop SxS)")
        p = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
        total = p.sum(0) if total is None else total + p.sum(0)
        total_sq = (p**2).sum(0) if total_sq is None else total_sq + (p**2).sum(0)
        ext = "png" if image_format == "png" else "jpg"
        samples.append(Sample(f"{task.class_index:05d}-{task.first + i:07d}", encode_image(pixels, image_format, quality),
                              ext, task.class_index))
    data = build_shard(samples)
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{task.split}/{task.class_index:05d}-{task.number:05d}.tar"
    url = storage.join(dest, rel)
    written = False
    if previous.get(rel) != (sha, len(data)) or not storage.exists(url) or storage.size(url) != len(data):
        storage.remove(storage.join(dest, FILENAME))  # the old manifest no longer describes what is on disk
        storage.write_bytes_atomic(url, data)
        written = True
    row = ShardRow(task.split, task.class_index, task.class_name, rel, len(samples), len(data), sha)
    first = task.refs[0] if isinstance(task.refs[0], str) else f"{task.origin} class {task.class_name!r} image {task.first}"
    return {"row": asdict(row), "shape": shape, "first": first, "sum": total, "sum_sq": total_sq, "written": written}


# ----------------------------------------------------------------------------- the whole dataset
def _select(source: Source, opts: PrepareOptions) -> dict[str, SourceSplit]:
    splits = dict(source.splits)
    if opts.splits:
        missing = [s for s in opts.splits if s not in splits]
        if missing:
            raise SourceError(f"{source.path}: no split {missing} (has {sorted(splits)})")
        splits = {s: splits[s] for s in opts.splits}
    reference = next(iter(splits.values())).class_names
    for name, sp in splits.items():
        if sp.class_names != reference:
            raise SourceError(f"{sp.origin}: split {name!r} has different classes than {next(iter(splits))!r}")
    if opts.class_list:
        keep = read_name_list(opts.class_list)
        splits = {k: sp.select(keep, f"class list {opts.class_list}") for k, sp in splits.items()}
    require_images(source.kind, splits)
    if opts.class_names:
        names = read_name_list(opts.class_names)
        if len(names) != len(reference if not opts.class_list else keep):
            raise SourceError(f"{opts.class_names}: {len(names)} names for {len(next(iter(splits.values())).class_names)} "
                              "classes")
        splits = {k: SourceSplit(names, sp.items, sp.origin) for k, sp in splits.items()}
    return splits


def _tasks(splits: dict[str, SourceSplit], shard_size: int) -> list[ShardTask]:
    tasks = []
    for split, sp in splits.items():
        for c, items in enumerate(sp.items):
            for n, first in enumerate(range(0, len(items), shard_size)):
                tasks.append(ShardTask(split, c, sp.class_names[c], n, first, tuple(items[first:first + shard_size]),
                                       sp.origin))
    return tasks


def _previous_rows(dest: str) -> dict[str, tuple[str, int]]:
    try:
        return {r.shard: (r.sha256, r.num_bytes) for r in read_manifest(dest).rows}
    except ManifestError:
        return {}


def prepare(source: str | Source, dest: str, opts: PrepareOptions = PrepareOptions(), log=print) -> Manifest:
    """Read ``source`` (a local file or folder, or a ``Source`` such as ``sources.arrays_source``),
    write shards and the manifest under ``dest``."""
    if opts.image_format not in FORMATS:
        raise SourceError(f"unknown format {opts.image_format!r}; choose one of {', '.join(FORMATS)}")
    if opts.shard_size < 1 or opts.workers < 1:
        raise SourceError("--shard-size and --workers must be >= 1")
    src = source if isinstance(source, Source) else open_source(source)
    splits = _select(src, opts)
    storage.check_writable(dest)
    check_sizes(splits, opts.size)
    image_format, mode = _format_for(first_images(splits), opts.image_format), image_mode(splits)
    tasks = _tasks(splits, opts.shard_size)
    previous = _previous_rows(dest)
    total = sum(len(t.refs) for t in tasks)
    log(f"{src.kind} {src.path}: {', '.join(f'{k} {sum(map(len, v.items))}' for k, v in splits.items())} images, "
        f"{len(next(iter(splits.values())).class_names)} classes -> {len(tasks)} {image_format} shards in {dest}")
    results = []
    with progress_bar(total=total, unit="img", desc="prepare", progress=opts.progress) as bar:
        args = (dest, image_format, opts.quality, opts.size, previous, mode)
        if opts.workers == 1:
            for t in tasks:
                results.append(build_task(t, *args))
                bar.update(len(t.refs))
        else:
            with ProcessPoolExecutor(opts.workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(build_task, t, *args): t for t in tasks}
                for f in as_completed(futures):
                    results.append(f.result())
                    bar.update(len(futures[f].refs))
    shapes = {r["shape"] for r in results}
    if len(shapes) != 1:  # each shard has one size (build_task), but shards differ: name an image of each
        count: dict[tuple, int] = {}
        for r in results:
            count[r["shape"]] = count.get(r["shape"], 0) + r["row"]["num_samples"]
        common = max(count, key=lambda s: count[s])
        odd = next(r for r in results if r["shape"] != common)
        usual = next(r for r in results if r["shape"] == common)
        raise SourceError(f"{odd['first']}: image is {'x'.join(map(str, odd['shape']))}, but {usual['first']} is "
                          f"{'x'.join(map(str, common))} (images of {len(shapes)} sizes); pass --size S to resize the "
                          "shorter side to S and centre-crop SxS")
    h, w, channels = shapes.pop()
    stats_split = "train" if "train" in splits else next(iter(splits))
    stats = [r for r in results if r["row"]["split"] == stats_split]
    n = sum(r["row"]["num_samples"] for r in stats) * h * w
    mean = sum(r["sum"] for r in stats) / n
    std = np.sqrt(np.maximum(sum(r["sum_sq"] for r in stats) / n - mean**2, 0.0))
    manifest = Manifest(root=dest, rows=[ShardRow(**r["row"]) for r in results], image_size=(h, w), channels=channels,
                        class_names=next(iter(splits.values())).class_names, image_format=image_format,
                        mean=tuple(round(float(v), 6) for v in mean), std=tuple(round(float(v), 6) for v in std),
                        extra={"source_format": src.kind, "stats_split": stats_split,
                               "num_samples": {k: sum(map(len, v.items)) for k, v in splits.items()}})
    manifest.write()
    written = sum(r["written"] for r in results)
    log(f"wrote {written} shards, {len(results) - written} unchanged; {manifest.url} "
        f"({h}x{w}x{channels}, mean {list(manifest.mean)}, std {list(manifest.std)})")
    return manifest
