"""Reading and writing bytes at any fsspec URL (local paths, file://, s3://, gs://, ...).

Every failure raises StorageError naming the URL, except a missing file, which stays a
FileNotFoundError. Transient failures are retried by exactly one layer: the object-store client
where it has its own retries (s3fs/botocore, gcsfs), this module's loop everywhere else. A reader
never sees a half-written file under its final name (see ``write_bytes_atomic``).
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from typing import Callable, TypeVar

import fsspec

from m3d_condense.pipeline.errors import RunError

T = TypeVar("T")
ATTEMPTS = 3
BACKOFF_S = 0.5
# s3fs retries throttling, dropped connections, timeouts and truncated bodies (5 tries) on top of
# botocore, which retries connection errors, 5xx and 429 (AWS_MAX_ATTEMPTS); gcsfs retries 5xx,
# 408, 429 and connection errors (6 tries). A loop of ours around those would multiply the attempts.
CLIENT_RETRIES = frozenset({"s3", "s3a", "gs", "gcs"})
# Stores whose single PUT (or completed multipart upload) replaces the object whole.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# Failures that may pass when tried again: a busy resource, a dropped or refused connection, a
# timeout, a stale network-filesystem handle. Disk full, read-only filesystem, permission, I/O
# error and the like fail the same way again, so they fail at once.
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ECONNRESET,
                              errno.ECONNABORTED, errno.ECONNREFUSED, errno.EPIPE, errno.ENETDOWN, errno.ENETRESET,
                              errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESTALE})


class StorageError(RunError, OSError):
    """A URL could not be read or written (unreachable store, permission, full disk, ...)."""


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return bool({"file", "local"} & _protocols(fs))


def _is_transient(e: BaseException) -> bool:
    """A dropped connection, a timeout or a busy resource is worth retrying; a missing file, a
    refused permission, a full disk or a read-only filesystem is not."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno in TRANSIENT_ERRNOS
    if isinstance(e, (ConnectionError, TimeoutError)):  # also fsspec's FSTimeoutError
        return True
    name = type(e).__name__  # HTTP clients' own types (aiohttp, requests) that are not OSErrors
    return "Connect" in name or "Disconnect" in name or "Timeout" in name


def retrying(what: str, url: str, fs: fsspec.AbstractFileSystem, fn: Callable[[], T]) -> T:
    """``fn()``, retried on transient errors unless ``fs``'s client retries them itself; the last
    error becomes a StorageError naming ``url`` (a FileNotFoundError stays one)."""
    # One retry layer: the client's where it has one (CLIENT_RETRIES), else ours.
    attempts = 1 if CLIENT_RETRIES & _protocols(fs) else ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError as e:  # callers rely on the type (a missing manifest, a new run)
            raise type(e)(f"{url}: {what} failed: {e}") from e
        except Exception as e:  # noqa: BLE001 - object-store clients raise many types
            if attempt < attempts and _is_transient(e):
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
                continue
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            raise StorageError(f"{url}: {what} failed{tries}: {type(e).__name__}: {e}") from e
    raise AssertionError("unreachable")


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URL."""
    return "/".join([str(root).rstrip("/"), *[p.strip("/") for p in parts]])


def absolute(url: str) -> str:
    """A local path made absolute (``~`` expanded); a URL (``s3://...``) as it is. Ray workers run
    in other working directories, so every local path they get must be absolute."""
    return str(url) if "://" in str(url) else os.path.abspath(os.path.expanduser(str(url)))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem that serves ``url`` and the path inside it, with no cached listing of
    ``path`` or its folders: object-store filesystems (s3fs, gcsfs) answer ``exists``, ``ls`` and
    ``info`` from listings they cached earlier, which miss what other processes (Ray workers,
    other grid commands) wrote since, so a slice another process stored would read as missing."""
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(str(url)))
    fs.invalidate_cache(path)
    return fs, path


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return retrying("checking existence", url, fs, lambda: fs.exists(path))


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(retrying("reading size", url, fs, lambda: fs.size(path)))


def list_files(url: str, suffix: str) -> list[str]:
    """URLs of the files directly under the folder ``url`` whose names end with ``suffix``, sorted;
    [] if the folder does not exist. Local folders give local paths."""
    fs, path = filesystem(url)
    if not retrying("checking existence", url, fs, lambda: fs.exists(path)):
        return []
    names = retrying("listing", url, fs, lambda: fs.ls(path, detail=False))
    return sorted(join(url, os.path.basename(n)) for n in names if n.endswith(suffix))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return retrying("reading", url, fs, lambda: fs.cat_file(path))


def open_read(url: str):
    """A binary file object streaming ``url`` (the caller closes it)."""
    fs, path = filesystem(url)
    return retrying("opening", url, fs, lambda: fs.open(path, "rb"))


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so that a reader sees either the old content or all of the new.

    On an object store (OBJECT_STORES) one PUT to the final key is already atomic: the object
    appears, or replaces the old one, only when the upload (single or multipart) completes. A
    temporary key and a "move" there would be a server-side copy plus a delete, doubling the
    traffic of every checkpoint. Elsewhere (local disks, network mounts, ...) a file is visible
    while it is being written, so the data goes to a temporary sibling that is then renamed over
    the final name (a rename within one folder is atomic); a failed write removes its temporary."""
    fs, path = filesystem(url)
    if OBJECT_STORES & _protocols(fs):
        retrying("writing", url, fs, lambda: fs.pipe_file(path, data))
        return
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}" if parent else f".tmp-{uuid.uuid4().hex}-{name}"

    def put() -> None:
        if parent and _is_local(fs):
            fs.makedirs(parent, exist_ok=True)
        try:
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):  # the write's own error is the one to report
                if fs.exists(tmp):
                    fs.rm(tmp)
            raise

    retrying("writing", url, fs, put)


def write_files_atomic(files: dict[str, bytes]) -> None:
    """``write_bytes_atomic`` for every (url, data) of ``files``, all on one filesystem. On an object
    store the PUTs go out together (fsspec sends them concurrently, each one atomic): one at a time,
    a store's tens of milliseconds per request add up to hours for ImageNet-scale exports."""
    if not files:
        return
    first = next(iter(files))
    fs, _ = filesystem(first)
    if not OBJECT_STORES & _protocols(fs):
        for url, data in files.items():
            write_bytes_atomic(url, data)
        return
    paths = {filesystem(url)[1]: data for url, data in files.items()}
    retrying("writing", f"{first} and {len(files) - 1} more", fs, lambda: fs.pipe(paths))


def remove(url: str) -> None:
    """Delete the file ``url``; nothing if it does not exist."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        retrying("removing", url, fs, lambda: fs.rm(path))


def check_writable(url: str) -> None:
    """Raise StorageError naming ``url`` unless a small file can be written and removed there."""
    probe = join(url, f".write-probe-{uuid.uuid4().hex}")
    try:
        write_bytes_atomic(probe, b"")
    except (PermissionError, OSError) as e:
        raise StorageError(f"{url}: destination is not writable ({e})") from e
    fs, path = filesystem(probe)
    retrying("removing the write probe", probe, fs, lambda: fs.rm(path))


def register_webdataset_schemes() -> None:
    """Let ``webdataset`` open object-store URLs through fsspec (it has no handler of its own).

    Call it in every process that builds a ``webdataset.WebDataset`` over such URLs."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the package re-exports a function of the same name

    def fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **_kw):
        return fsspec.open(url, mode).open()

    for scheme in ("s3", "gs", "gcs", "az", "abfs", "hf", "memory"):
        gopen.gopen_schemes[scheme] = fsspec_open
