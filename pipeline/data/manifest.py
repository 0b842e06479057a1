"""The dataset manifest: ``ROOT/manifest.parquet``, one row per class shard.

Columns: split, class_index, class_name, shard (path relative to ROOT), num_samples,
num_bytes, sha256. The schema metadata (key ``m3d``, JSON) holds what the engine needs to
know before reading any shard: image size, channels, class names, image format and the
per-channel mean/std that ``prepare`` measured on the train split.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError

FILENAME = "manifest.parquet"
FORMAT_VERSION = 1
SCHEMA = pa.schema([("split", pa.string()), ("class_index", pa.int32()), ("class_name", pa.string()),
                    ("shard", pa.string()), ("num_samples", pa.int64()), ("num_bytes", pa.int64()),
                    ("sha256", pa.string())])


class ManifestError(RunError, ValueError):
    """The manifest is missing, unreadable, or disagrees with itself or with the config."""


@dataclass(frozen=True)
class ShardRow:
    split: str
    class_index: int
    class_name: str
    shard: str
    num_samples: int
    num_bytes: int
    sha256: str


@dataclass
class Manifest:
    """Everything ``ROOT/manifest.parquet`` says; ``root`` is the URL the shard paths are relative to."""

    root: str
    rows: list[ShardRow]
    image_size: tuple[int, int]
    channels: int
    class_names: list[str]
    image_format: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return storage.join(self.root, FILENAME)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.rows})

    def shards(self, split: str, class_index: int) -> list[ShardRow]:
        """The shards of one class in one split, in order; an error names the class if there are none."""
        rows = [r for r in self.rows if r.split == split and r.class_index == class_index]
        if not rows:
            if split not in self.splits:
                raise ManifestError(f"{self.url}: no split {split!r} (has {self.splits})")
            name = self.class_names[class_index] if 0 <= class_index < self.num_classes else "?"
            raise ManifestError(f"{self.url}: class {class_index} ({name}) has no shards in split {split!r}")
        return sorted(rows, key=lambda r: r.shard)

    def num_samples(self, split: str, class_index: int) -> int:
        return sum(r.num_samples for r in self.shards(split, class_index))

    def shard_url(self, row: ShardRow) -> str:
        return storage.join(self.root, row.shard)

    def metadata(self) -> dict:
        return {"format_version": FORMAT_VERSION, "image_size": list(self.image_size), "channels": self.channels,
                "class_names": self.class_names, "image_format": self.image_format, "mean": list(self.mean),
                "std": list(self.std), **self.extra}

    def to_bytes(self) -> bytes:
        rows = sorted(self.rows, key=lambda r: (r.split, r.shard))
        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=SCHEMA)
        table = table.replace_schema_metadata({"m3d": json.dumps(self.metadata())})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    def write(self) -> None:
        storage.write_bytes_atomic(self.url, self.to_bytes())


def read_manifest(root: str) -> Manifest:
    """Read and check ``ROOT/manifest.parquet``; errors name the file and the offending row."""
    url = storage.join(root, FILENAME)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ManifestError(f"{url}: no manifest (prepare the dataset with `python pipeline/prepare.py "
                            f"SOURCE {root}`)") from None
    try:
        table = pq.read_table(io.BytesIO(data))
        meta = json.loads((table.schema.metadata or {})[b"m3d"])
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise ManifestError(f"{url}: not a readable manifest ({type(e).__name__}: {e})") from e
    missing = set(SCHEMA.names) - set(table.column_names)
    if missing:
        raise ManifestError(f"{url}: missing columns {sorted(missing)}")
    rows = [ShardRow(**{k: d[k] for k in SCHEMA.names}) for d in table.to_pylist()]
    names = [str(n) for n in meta["class_names"]]
    for i, r in enumerate(rows):
        if not 0 <= r.class_index < len(names):
            raise ManifestError(f"{url}: row {i} ({r.shard}) has class_index {r.class_index}, outside "
                                f"0..{len(names) - 1}")
    extra = {k: v for k, v in meta.items() if k not in {"format_version", "image_size", "channels", "class_names",
                                                        "image_format", "mean", "std"}}
    return Manifest(root=str(root), rows=rows, image_size=tuple(meta["image_size"]), channels=int(meta["channels"]),
                    class_names=names, image_format=meta["image_format"], mean=tuple(meta.get("mean", ())),
                    std=tuple(meta.get("std", ())), extra=extra)
