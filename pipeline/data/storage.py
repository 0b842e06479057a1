"""Reading and writing bytes at any fsspec URL (local paths, file://, s3://, gs://, ...).

Object stores fail transiently, so every call retries a bounded number of times and then
raises StorageError naming the URL. Writes go to a temporary name and are then moved, so a
reader never sees a half-written file under its final name.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Callable, TypeVar

import fsspec

T = TypeVar("T")
ATTEMPTS = 3
BACKOFF_S = 0.5


class StorageError(OSError):
    """A URL could not be read or written (unreachable store, permission, missing file)."""


def _is_transient(e: BaseException) -> bool:
    """Connection-level failures are worth retrying; a missing file or a refused permission is not."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    name = type(e).__name__
    return isinstance(e, (ConnectionError, TimeoutError, OSError)) or "Connect" in name or "Timeout" in name


def retrying(what: str, url: str, fn: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """``fn()``, retried on transient errors; the last error becomes a StorageError naming ``url``."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (FileNotFoundError, PermissionError) as e:
            raise type(e)(f"{url}: {what} failed: {e}") from e
        except Exception as e:  # noqa: BLE001 - object-store clients raise many types
            if not _is_transient(e) or attempt == attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise StorageError(f"{url}: {what} failed{tries}: {type(e).__name__}: {e}") from e
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URL."""
    return "/".join([str(root).rstrip("/"), *[p.strip("/") for p in parts]])


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem that serves ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(str(url)))
    return fs, path


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return retrying("checking existence", url, lambda: fs.exists(path))


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(retrying("reading size", url, lambda: fs.size(path)))


def list_files(url: str, suffix: str) -> list[str]:
    """URLs of the files directly under the folder ``url`` whose names end with ``suffix``, sorted;
    [] if the folder does not exist. Local folders give local paths."""
    fs, path = filesystem(url)
    if not retrying("checking existence", url, lambda: fs.exists(path)):
        return []
    names = retrying("listing", url, lambda: fs.ls(path, detail=False))
    return sorted(join(url, os.path.basename(n)) for n in names if n.endswith(suffix))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return retrying("reading", url, lambda: fs.cat_file(path))


def open_read(url: str):
    """A binary file object streaming ``url`` (the caller closes it)."""
    fs, path = filesystem(url)
    return retrying("opening", url, lambda: fs.open(path, "rb"))


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` via a temporary sibling name and a move."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}" if parent else f".tmp-{uuid.uuid4().hex}"

    def put() -> None:
        if parent and _is_local(fs):  # object stores have no folders, and s3fs's makedirs creates buckets
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)

    retrying("writing", url, put)


def check_writable(url: str) -> None:
    """Raise StorageError naming ``url`` unless a small file can be written and removed there."""
    probe = join(url, f".write-probe-{uuid.uuid4().hex}")
    try:
        write_bytes_atomic(probe, b"")
    except (PermissionError, OSError) as e:
        raise StorageError(f"{url}: destination is not writable ({e})") from e
    fs, path = filesystem(probe)
    retrying("removing the write probe", probe, lambda: fs.rm(path))


def register_webdataset_schemes() -> None:
    """Let ``webdataset`` open object-store URLs through fsspec (it has no handler of its own).

    Call it in every process that builds a ``webdataset.WebDataset`` over such URLs."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the package re-exports a function of the same name

    def fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **_kw):
        return fsspec.open(url, mode).open()

    for scheme in ("s3", "gs", "gcs", "az", "abfs", "hf", "memory"):
        gopen.gopen_schemes[scheme] = fsspec_open
