"""Read one class of a prepared dataset from its shards, at any fsspec URL."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Iterator, Sequence

import numpy as np
import torch

from m3d_condense.pipeline.data.manifest import Manifest, read_manifest
from m3d_condense.pipeline.data.shards import ShardError, iter_shard, sample_pixels
from m3d_condense.pipeline.errors import RunError


class ClassShardReader:
    """Streams the shards of a prepared dataset (``root`` holds ``manifest.parquet``).

    Every read checks each shard's byte count and sha256 against the manifest (``verify``)
    and each member's decodability, size, channels and label; errors name shard and member.
    """

    def __init__(self, root: str | Manifest, verify: bool = True):
        self.manifest = root if isinstance(root, Manifest) else read_manifest(root)
        self.verify = verify

    def num_samples(self, split: str, class_index: int) -> int:
        return self.manifest.num_samples(split, class_index)

    def _decode(self, split: str, class_index: int, wanted: dict[int, set[int]] | None) -> list[np.ndarray]:
        m, out = self.manifest, []
        for i, row in enumerate(m.shards(split, class_index)):
            if wanted is not None and i not in wanted:
                continue
            url = m.shard_url(row)
            samples = list(iter_shard(url, sha256=row.sha256 if self.verify else None,
                                      num_bytes=row.num_bytes if self.verify else None,
                                      wanted=None if wanted is None else wanted[i]))
            if wanted is None and len(samples) != row.num_samples:
                raise ShardError(f"{url}: holds {len(samples)} samples, the manifest says {row.num_samples} "
                                 "(truncated or replaced)")
            out += [sample_pixels(url, key, parts, label=class_index, image_size=m.image_size,
                                  channels=m.channels, num_classes=m.num_classes) for _, key, parts in samples]
        return out

    @staticmethod
    def _stack(pixels: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()

    def read_class(self, split: str, class_index: int) -> torch.Tensor:
        """All images of the class in shard order: uint8 (N, C, H, W)."""
        return self._stack(self._decode(split, class_index, None))

    def read_classes(self, split: str, classes: Sequence[int], workers: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
        """(class, read_class(split, class)) for each class, in order; ``workers`` > 1 decodes
        classes in that many processes (decoding is CPU-bound and holds the GIL)."""
        if workers <= 1 or len(classes) <= 1:
            for c in classes:
                yield c, self.read_class(split, c)
            return
        try:
            with ProcessPoolExecutor(min(workers, len(classes)), mp_context=get_context("spawn")) as pool:
                for c, pixels in zip(classes, pool.map(_read_class_array, [(self.manifest, self.verify, split, c)
                                                                           for c in classes]), strict=True):
                    yield c, torch.from_numpy(pixels)
        except BrokenProcessPool:
            raise DecodeProcessError(
                f"{self.manifest.url}: a process decoding the {split} shards died. Called from a script? Put the "
                "call under `if __name__ == \"__main__\":` (the decoding processes re-import the script, as "
                "Python's multiprocessing does); or memory ran out; data.read_workers=1 decodes in this "
                "process") from None

    def read_samples(self, split: str, class_index: int, positions: Sequence[int]) -> torch.Tensor:
        """The images at ``positions`` (indices into the class, in shard order), in the order
        given: uint8 (len(positions), C, H, W). Reads only the shards that hold them."""
        rows = self.manifest.shards(split, class_index)
        starts = np.cumsum([0] + [r.num_samples for r in rows])
        n = int(starts[-1])
        wanted: dict[int, set[int]] = {}
        for p in positions:
            if not 0 <= p < n:
                raise IndexError(f"class {class_index} of split {split!r} has {n} samples, position {p} asked")
            s = int(np.searchsorted(starts, p, side="right") - 1)
            wanted.setdefault(s, set()).add(int(p - starts[s]))
        decoded = self._decode(split, class_index, wanted)
        # _decode returns the wanted samples shard by shard in position order.
        order = sorted({int(p) for p in positions})
        where = {p: i for i, p in enumerate(order)}
        return self._stack([decoded[where[int(p)]] for p in positions])


class DecodeProcessError(RunError, RuntimeError):
    """A shard-decoding process died (an unguarded script re-imported by it, or memory)."""


def _read_class_array(args: tuple[Manifest, bool, str, int]) -> np.ndarray:
    manifest, verify, split, c = args
    return ClassShardReader(manifest, verify).read_class(split, c).numpy()
