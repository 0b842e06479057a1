"""WebDataset shard format: a plain tar whose members are ``<key>.<ext>`` (the image) and
``<key>.cls`` (the class index as text), written deterministically so that the same images
always give the same bytes and the same sha256.

Reading streams a shard once from any fsspec URL, hashing as it goes, and checks every
member: decodable, the manifest's image size and channel count, the shard's class.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.errors import RunError

IMAGE_EXTS = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}


class ShardError(RunError, ValueError):
    """A shard (or a member of it) is missing, truncated, corrupt, or holds the wrong images."""


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes
    ext: str  # "png" | "jpg"
    label: int


def unit_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] (any layout) -> uint8 as ``round(x * 255)`` (half to even) clamped to
    0..255: the one float-to-uint8 conversion, for exports and for float datasets alike."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 90) -> bytes:
    """uint8 (H, W, C) with C in {1, 3} -> PNG or JPEG bytes."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif image_format in ("jpeg", "jpg"):
        img.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image format {image_format!r}; choose png or jpeg")
    return buf.getvalue()


def resize_pixels(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (height, width, C) with PIL's bicubic filter: the one resizer of
    the data layer, so a set read from npz with ``data.resize`` and the same set prepared into
    shards with ``--size`` hold the same pixels."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    out = np.asarray(img.resize((width, height), Image.BICUBIC))
    return out[..., None] if out.ndim == 2 else out


def decode_image(data: bytes, where: str) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, C); ShardError naming ``where`` if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            pixels = np.asarray(img)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise ShardError(f"{where}: not a decodable image ({type(e).__name__}: {e})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def build_shard(samples: list[Sample]) -> bytes:
    """The tar bytes for ``samples``; fixed mtime/owner/mode so equal content hashes equally."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for name, data in ((f"{s.key}.{s.ext}", s.image), (f"{s.key}.cls", str(s.label).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _HashingReader(io.RawIOBase):
    """Wraps a binary stream, hashing and counting what passes through."""

    def __init__(self, raw):
        self.raw, self.sha, self.count = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.readinto(bytearray(1 << 20)):
            pass


def _members(tar: tarfile.TarFile, url: str) -> Iterator[tuple[str, str, tarfile.TarFile, tarfile.TarInfo]]:
    for info in tar:
        if not info.isfile():
            continue
        base = info.name.rsplit("/", 1)[-1]
        if "." not in base:
            raise ShardError(f"{url}: member {info.name!r} has no extension (expected <key>.<ext>)")
        key, ext = base.split(".", 1)
        yield key, ext.lower(), tar, info


def iter_shard(url: str, *, sha256: str | None, num_bytes: int | None,
               wanted: set[int] | None = None) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """Stream the shard at ``url``: yields (position, key, {ext: bytes}) per sample in order
    (only the positions in ``wanted`` when given). After the last sample it checks the byte
    count and sha256 against the manifest and raises ShardError on a mismatch, so a caller
    that collects everything before using it never uses a damaged shard."""
    try:
        raw = storage.open_read(url)
    except FileNotFoundError:
        raise ShardError(f"{url}: shard listed in the manifest is missing") from None
    reader = _HashingReader(raw)
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader, 1 << 20), mode="r|") as tar:
            pos, key, parts = -1, None, {}
            for k, ext, t, info in _members(tar, url):
                if k != key:
                    if key is not None and (wanted is None or pos in wanted):
                        yield pos, key, parts
                    pos, key, parts = pos + 1, k, {}
                if wanted is None or pos in wanted:
                    parts[ext] = t.extractfile(info).read()
            if key is not None and (wanted is None or pos in wanted):
                yield pos, key, parts
        reader.drain()
    except (tarfile.TarError, EOFError) as e:
        raise ShardError(f"{url}: corrupt or truncated tar after {reader.count} bytes"
                         + (f" (manifest: {num_bytes})" if num_bytes is not None else "") + f": {e}") from None
    finally:
        raw.close()
    if num_bytes is not None and reader.count != num_bytes:
        raise ShardError(f"{url}: {reader.count} bytes, the manifest says {num_bytes} (truncated or replaced)")
    if sha256 is not None and reader.sha.hexdigest() != sha256:
        raise ShardError(f"{url}: sha256 {reader.sha.hexdigest()} does not match the manifest's {sha256}")


def sample_pixels(url: str, key: str, parts: dict[str, bytes], *, label: int, image_size: tuple[int, int],
                  channels: int, num_classes: int) -> np.ndarray:
    """Decode and check one sample of a shard: uint8 (H, W, C)."""
    where = f"{url} member {key}"
    images = [ext for ext in parts if ext in IMAGE_EXTS.values() or ext == "jpeg"]
    if len(images) != 1:
        raise ShardError(f"{where}: expected one image member (.png/.jpg), found {sorted(parts)}")
    if "cls" in parts:
        try:
            got = int(parts["cls"].decode().strip())
        except ValueError:
            raise ShardError(f"{where}.cls: label {parts['cls'][:20]!r} is not an integer") from None
        if not 0 <= got < num_classes:
            raise ShardError(f"{where}.cls: label {got} is outside the manifest's classes 0..{num_classes - 1}")
        if got != label:
            raise ShardError(f"{where}.cls: label {got}, but the manifest lists this shard under class {label}")
    pixels = decode_image(parts[images[0]], f"{where}.{images[0]}")
    if pixels.shape[:2] != tuple(image_size) or pixels.shape[2] != channels:
        h, w, c = pixels.shape
        raise ShardError(f"{where}.{images[0]}: image is {h}x{w} with {c} channels, the manifest says "
                         f"{image_size[0]}x{image_size[1]} with {channels}")
    return pixels
