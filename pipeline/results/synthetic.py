"""A condensed set: ``SyntheticSet`` in memory, and its stored form in a run directory.

A run stores its set in slices, one per worker, plus an index written last::

    synthetic/index.json                  {"format", "factor", "class_names", "slices": [...]}
    synthetic/classes-00000-00124.pt      {"images", "labels", "classes", "factor"} of classes 0..124

A slice is the one file format of the project: a checkpoint (``orchestration/run_store.py``,
``checkpoints/it<t>/synthetic/classes-<a>-<b>.pt``) writes the same slice with the optimiser's
state added to it (``state``: momentum rows, iteration, loss history), and a snapshot
(``snapshot_every``) is a stored set of its own.

Each worker writes the slice of its own classes, so no process ever holds the whole set to
store it; the driver writes only the index. ``SyntheticSet.load(run_dir)`` reads all of it back
(or, with ``classes``, only the slices that hold those classes). Run directories written before
the slices existed hold one ``synthetic.pt`` of the same fields, which ``load`` still reads.

Images are stored as optimised: (N, C, H, W) float32 in [0, 1] (a published set: uint8,
round(x * 255), read back as x / 255), each holding ``factor`` x
``factor`` tiles (multi-formation; 1 for the selection baselines). The training set they stand
for is ``decoded()``: N * factor^2 images. As a ``torch.utils.data.Dataset`` a SyntheticSet
yields those decoded images, one (image (C, H, W) float32 in [0, 1], label) pair each.
"""
from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from m3d_condense.models import decode, decode_rows
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.shards import unit_to_uint8
from m3d_condense.pipeline.errors import RunError

FORMAT = "m3d-synthetic/1"
FOLDER = "synthetic"
INDEX = f"{FOLDER}/index.json"
SLICE_NAME = re.compile(r"classes-(\d+)-(\d+)\.pt$")
SET_KEYS = ("images", "labels", "classes", "factor")  # what every slice holds; a checkpoint adds state
LEGACY_FILE = "synthetic.pt"  # one file with the whole set: run directories from before the slices


class SyntheticSetError(RunError, ValueError):
    """A run directory holds no synthetic set, or its index or a slice is unreadable."""


@dataclass
class SyntheticSet(torch.utils.data.Dataset):
    """``images`` (N, C, H, W) float32 in [0, 1] as stored, ``labels`` (N,) int64 class indices
    into ``class_names``, and the multi-formation ``factor`` (``decode`` gives the training set).
    ``mean`` and ``std`` (per channel, pixels in [0, 1]) are the normalisation of the real data
    it was condensed from, when known: a network trained on it should normalise with them."""

    images: torch.Tensor
    labels: torch.Tensor
    factor: int
    class_names: list[str]
    mean: list[float] | None = None
    std: list[float] | None = None

    # the training set it stands for -----------------------------------------------------------
    @property
    def tiles(self) -> int:
        """Training images per stored image: factor^2."""
        return self.factor * self.factor

    def __len__(self) -> int:
        return len(self.labels) * self.tiles

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Decoded training image ``i`` (C, H, W) in [0, 1] and its class."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} decoded images")
        i %= len(self)
        return decode_rows(self.images, torch.tensor([i]), self.factor)[0], int(self.labels[i // self.tiles])

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All training images (N * factor^2, C, H, W) in [0, 1] and their labels."""
        return decode(self.images, self.factor), self.training_labels()

    def training_labels(self) -> torch.Tensor:
        """The class of every decoded training image: (N * factor^2,)."""
        return self.labels.repeat_interleave(self.tiles)

    def of_classes(self, classes: Iterable[int]) -> SyntheticSet:
        """The rows of ``classes`` only (class indices keep their meaning)."""
        keep = torch.isin(self.labels, torch.tensor(sorted(set(classes)), dtype=self.labels.dtype))
        return SyntheticSet(self.images[keep], self.labels[keep], self.factor, self.class_names, self.mean, self.std)

    # stored form ---------------------------------------------------------------------------------
    @classmethod
    def of(cls, source: SyntheticSet | str) -> SyntheticSet:
        """``source`` itself when it is a set in memory, else the set stored under the run
        directory ``source``: the one place a "set or where it is stored" argument is resolved."""
        return source if isinstance(source, SyntheticSet) else cls.load(source)

    @classmethod
    def load(cls, run_dir: str, classes: Iterable[int] | None = None) -> SyntheticSet:
        """The set a run stored under ``run_dir`` (a path or fsspec URL). With ``classes``, only the
        slices holding those classes are read and only their rows returned."""
        run_dir = str(run_dir)
        wanted = None if classes is None else sorted({int(c) for c in classes})
        index_url = storage.join(run_dir, INDEX)
        if not storage.exists(index_url):
            legacy = storage.join(run_dir, LEGACY_FILE)
            if storage.exists(legacy):
                whole = cls._from_payload(read_slice(legacy)[0], legacy)
                return whole if wanted is None else whole.of_classes(wanted)
            raise SyntheticSetError(f"{run_dir}: no synthetic set ({INDEX} is missing; has the run condensed?)")
        index = read_index(run_dir)
        parts = []
        for entry in index["slices"]:
            first, last = entry["classes"]
            if wanted is not None and not any(first <= c <= last for c in wanted):
                continue
            url = storage.join(run_dir, FOLDER, entry["file"])
            parts.append(cls._from_payload(read_slice(url)[0], url, index["class_names"]))
        if not parts:
            raise SyntheticSetError(f"{index_url}: no slice holds classes {wanted[:10]}")
        merged = SyntheticSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                              int(index["factor"]), list(index["class_names"]), index.get("mean"), index.get("std"))
        return merged if wanted is None else merged.of_classes(wanted)

    @classmethod
    def _from_payload(cls, payload: dict[str, Any], url: str, class_names: list[str] | None = None) -> SyntheticSet:
        try:
            images = payload["images"]
            images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()  # a published set
            return cls(images, payload["labels"].long(), int(payload["factor"]),
                       list(class_names if class_names is not None else payload["class_names"]))
        except (KeyError, TypeError, AttributeError) as e:
            raise SyntheticSetError(f"{url}: not a synthetic set slice (missing or malformed {e})") from None

    def write_slice(self, run_dir: str, classes: list[int], uint8: bool = False,
                    state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write this set (the rows of ``classes``, a contiguous range) as one slice of the run under
        ``run_dir``; returns its index entry. Rewriting a slice replaces it whole. ``uint8`` stores
        the pixels as round(x * 255), a quarter of the bytes (a published set); ``load`` reads
        either. ``state`` (a checkpoint's: momentum, iteration, loss history) is stored beside
        the set's own keys in the same file."""
        classes = sorted(int(c) for c in classes)
        name = slice_name(classes)
        images = self.images.detach().float().cpu().contiguous()
        if uint8:
            images = torch.from_numpy(unit_to_uint8(images.numpy()))
        payload = {"images": images, "labels": self.labels.cpu().long(), "classes": classes, "factor": int(self.factor)}
        clash = set(payload) & set(state or {})
        if clash:
            raise ValueError(f"a slice's state may not replace its set keys {sorted(clash)}")
        payload.update(state or {})
        buf = io.BytesIO()
        torch.save(payload, buf)
        storage.write_bytes_atomic(storage.join(run_dir, FOLDER, name), buf.getvalue())
        return {"file": name, "classes": [classes[0], classes[-1]], "rows": len(self.labels),
                "bytes": buf.getbuffer().nbytes}

    def batches(self, batch_size: int | None = None, **options: Any):
        """Mini-batches of the decoded set for your own training loop, augmented and normalised
        exactly as our evaluation draws them: ``pipeline/evaluation/batches.py`` (``TrainingBatches``)."""
        from m3d_condense.pipeline.evaluation.batches import TrainingBatches

        return TrainingBatches(self, batch_size, **options)

    def export(self, dest: str, format: str = "imagefolder", **options: Any) -> str:
        """Write the decoded set to ``dest`` as ``imagefolder`` (PNGs in ``train/<class>/``),
        ``webdataset`` (shards and manifest our data layer reads), ``parquet`` (images and
        labels for Hugging Face ``datasets``), ``dcbench`` (the .pt DC-Bench's loader reads;
        ``dataset=`` required) or ``ddranking`` (DD-Ranking's image tensor and hard labels;
        ``dataset=`` required); see ``pipeline/results/export.py``. Returns ``dest``."""
        from m3d_condense.pipeline.results.export import export  # the writers' imports are only paid here

        return export(self, dest, format, **options)

    def save(self, run_dir: str, uint8: bool = False) -> None:
        """Store the whole set under ``run_dir`` as one slice and its index (``uint8``: see
        ``write_slice``)."""
        classes = list(range(len(self.class_names)))
        write_index(run_dir, [self.write_slice(run_dir, classes, uint8)], self.factor, self.class_names,
                    self.mean, self.std)


def write_index(run_dir: str, slices: list[dict[str, Any]], factor: int, class_names: list[str],
                mean: list[float] | None = None, std: list[float] | None = None) -> None:
    """The index of a stored set, written after every slice it lists: a reader that finds it finds
    the whole set. ``slices`` are ``write_slice``'s entries, in any order; ``mean``/``std`` the
    real data's normalisation."""
    slices = sorted(slices, key=lambda s: s["classes"][0])
    index = {"format": FORMAT, "factor": int(factor), "class_names": list(class_names),
             "mean": None if mean is None else [float(v) for v in mean],
             "std": None if std is None else [float(v) for v in std],
             "rows": sum(s["rows"] for s in slices), "slices": slices}
    storage.write_bytes_atomic(storage.join(run_dir, INDEX), (json.dumps(index, indent=1) + "\n").encode())


def read_index(run_dir: str) -> dict[str, Any]:
    """``synthetic/index.json`` of ``run_dir``, checked."""
    url = storage.join(str(run_dir), INDEX)
    try:
        index = json.loads(storage.read_bytes(url))
    except json.JSONDecodeError as e:
        raise SyntheticSetError(f"{url}: not valid JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or "slices" not in index:
        raise SyntheticSetError(f"{url}: not a synthetic set index (expected format {FORMAT!r})")
    return index


def training_size(source: SyntheticSet | str) -> int:
    """How many decoded training images the set ``source`` (in memory, or the run directory
    storing it) stands for; for a stored set read from its index alone."""
    if isinstance(source, SyntheticSet):
        return len(source)
    if not storage.exists(storage.join(str(source), INDEX)):  # a legacy synthetic.pt: small, read it
        return len(SyntheticSet.load(source))
    index = read_index(source)
    return int(index["rows"]) * int(index["factor"]) ** 2


def is_stored(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a complete stored set (an index, or a legacy synthetic.pt)."""
    return storage.exists(storage.join(str(run_dir), INDEX)) or storage.exists(storage.join(str(run_dir), LEGACY_FILE))


def slice_name(classes: list[int]) -> str:
    """The file name of the slice holding the contiguous class range ``classes``."""
    return f"classes-{classes[0]:05d}-{classes[-1]:05d}.pt"


def slice_classes(name: str) -> tuple[int, int]:
    """The first and last class a slice holds, from its name or path (``slice_name``)."""
    m = SLICE_NAME.search(name)
    if m is None:
        raise SyntheticSetError(f"{name}: not a slice name (classes-FIRST-LAST.pt)")
    return int(m.group(1)), int(m.group(2))


def read_slice(url: str, listed_in: str = "the synthetic set's index") -> tuple[dict[str, Any], int]:
    """The payload of the slice file at ``url`` and its size in bytes; a missing, truncated or
    foreign file is a SyntheticSetError naming it (and ``listed_in``, what said it exists)."""
    try:
        raw = storage.read_bytes(url)
    except FileNotFoundError:
        raise SyntheticSetError(f"{url}: listed in {listed_in} but missing") from None
    try:
        payload = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # truncated or not a torch file
        raise SyntheticSetError(f"{url}: unreadable slice ({e})") from None
    if not isinstance(payload, dict) or "images" not in payload:
        raise SyntheticSetError(f"{url}: not a slice (no images)")
    return payload, len(raw)
