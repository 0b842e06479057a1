"""pipeline/data/storage.py: which failures are retried and by whom, which fail at once, and how
writes stay atomic on a local disk (temporary sibling + rename) and on S3 (one PUT, moto server)."""
import errno
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.storage import StorageError


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)


def _failing(monkeypatch, method, errors, cls=LocalFileSystem):
    """Make call i of ``cls.method`` raise ``errors[i]`` (the last entry for every later call), or
    do its real work where that entry is None; returns the list of calls made."""
    calls = []
    original = getattr(cls, method)

    def fake(self, *args, **kwargs):
        calls.append(args)
        error = errors[min(len(calls), len(errors)) - 1]
        if error is not None:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, fake)
    return calls


def test_disk_full_fails_at_once_without_retrying_and_leaves_no_temporary_file(tmp_path, monkeypatch, no_backoff):
    calls = []

    def half_written_then_disk_full(self, path, value, **kwargs):
        calls.append(path)
        with open(path, "wb") as f:
            f.write(value[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileSystem, "pipe_file", half_written_then_disk_full)
    url = str(tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(StorageError, match=f"^{url}: writing failed: OSError: .*No space left on device"):
        storage.write_bytes_atomic(url, b"0123456789")
    assert len(calls) == 1
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EROFS, "Read-only file system"),
                                   OSError(errno.EACCES, "Permission denied"),
                                   OSError(errno.EIO, "Input/output error")],
                         ids=["disk-full", "read-only-filesystem", "permission-denied", "io-error"])
def test_non_transient_write_errors_fail_at_once_as_a_storage_error_naming_the_url(tmp_path, monkeypatch, no_backoff,
                                                                                    error):
    calls = _failing(monkeypatch, "pipe_file", [error])
    url = str(tmp_path / "out.bin")
    with pytest.raises(StorageError, match=f"^{url}: writing failed: {type(error).__name__}: .*{error.strerror}"):
        storage.write_bytes_atomic(url, b"x")
    assert len(calls) == 1


def test_permission_denied_on_read_is_a_storage_error_naming_the_url_without_retrying(tmp_path, monkeypatch,
                                                                                       no_backoff):
    (tmp_path / "f").write_bytes(b"x")
    calls = _failing(monkeypatch, "cat_file", [PermissionError(errno.EACCES, "Permission denied")])
    with pytest.raises(StorageError, match=f"^{tmp_path / 'f'}: reading failed: PermissionError: "):
        storage.read_bytes(str(tmp_path / "f"))
    assert len(calls) == 1


def test_missing_file_raises_file_not_found_at_once_naming_the_url(tmp_path, monkeypatch, no_backoff):
    calls = _failing(monkeypatch, "cat_file", [None])
    url = str(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match=f"^{url}: reading failed: ") as info:
        storage.read_bytes(url)
    assert not isinstance(info.value, StorageError)
    assert len(calls) == 1


@pytest.mark.parametrize("error", [ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
                                   TimeoutError("timed out"), OSError(errno.EAGAIN, "Resource temporarily unavailable"),
                                   OSError(errno.ESTALE, "Stale file handle")],
                         ids=["connection-reset", "timeout", "try-again", "stale-nfs-handle"])
def test_transient_local_error_is_retried_and_the_write_then_succeeds(tmp_path, monkeypatch, no_backoff, error):
    calls = _failing(monkeypatch, "pipe_file", [error, None])
    url = tmp_path / "sub" / "out.bin"
    storage.write_bytes_atomic(str(url), b"payload")
    assert len(calls) == 2
    assert url.read_bytes() == b"payload" and [p.name for p in url.parent.iterdir()] == ["out.bin"]


def test_persistent_transient_error_fails_after_the_bounded_attempts_naming_the_url(tmp_path, monkeypatch, no_backoff):
    calls = _failing(monkeypatch, "cat_file", [TimeoutError("timed out")])
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError, match=f"^{tmp_path / 'f'}: reading failed after 3 attempts: TimeoutError: timed out"):
        storage.read_bytes(str(tmp_path / "f"))
    assert len(calls) == storage.ATTEMPTS == 3


def test_local_write_goes_through_a_temporary_sibling_renamed_over_the_final_name(tmp_path, monkeypatch):
    piped, moved = [], []
    pipe_file, mv = LocalFileSystem.pipe_file, LocalFileSystem.mv
    monkeypatch.setattr(LocalFileSystem, "pipe_file", lambda self, p, v, **kw: (piped.append(p), pipe_file(self, p, v, **kw)))
    monkeypatch.setattr(LocalFileSystem, "mv", lambda self, a, b, **kw: (moved.append((a, b)), mv(self, a, b, **kw)))
    final = tmp_path / "run" / "run.json"
    final.parent.mkdir()
    final.write_bytes(b"old")
    storage.write_bytes_atomic(str(final), b"new")
    assert len(piped) == 1 and moved == [(piped[0], final.as_posix())]
    tmp = piped[0].rsplit("/", 1)
    assert tmp[0] == final.parent.as_posix() and tmp[1].startswith(".tmp-") and tmp[1].endswith("-run.json")
    assert final.read_bytes() == b"new" and [p.name for p in final.parent.iterdir()] == ["run.json"]


def test_s3_write_is_one_put_to_the_final_key_with_no_temporary_object_copied_or_deleted(s3_bucket, monkeypatch):
    import s3fs

    calls = []
    call_s3 = s3fs.S3FileSystem._call_s3

    async def recording(self, method, *args, **kwargs):
        calls.append((method, kwargs.get("Key")))
        return await call_s3(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", recording)
    storage.write_bytes_atomic(f"{s3_bucket}/run/checkpoints/it0000010/state.pt", b"old")
    storage.write_bytes_atomic(f"{s3_bucket}/run/checkpoints/it0000010/state.pt", b"new checkpoint")
    assert calls == [("put_object", "run/checkpoints/it0000010/state.pt")] * 2
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert fs.find(s3_bucket) == [f"{s3_bucket[5:]}/run/checkpoints/it0000010/state.pt"]
    assert storage.read_bytes(f"{s3_bucket}/run/checkpoints/it0000010/state.pt") == b"new checkpoint"


class _Unavailable(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with 503 Service Unavailable, counting them."""
    requests: list[str] = []

    def _refuse(self):
        self.requests.append(f"{self.command} {self.path}")
        if self.headers.get("Expect", "").lower() != "100-continue":  # else the client holds the body back
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _refuse

    def log_message(self, *args):
        pass


@pytest.fixture
def unavailable_s3(monkeypatch):
    import s3fs

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Unavailable.requests = []
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}", "AWS_MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    yield _Unavailable.requests
    server.shutdown()
    server.server_close()
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_server_errors_are_retried_by_botocore_alone_so_the_endpoint_sees_aws_max_attempts_requests(
        unavailable_s3):
    with pytest.raises(StorageError, match=r"^s3://bucket/ds/manifest.parquet: reading failed: OSError: "):
        storage.read_bytes("s3://bucket/ds/manifest.parquet")
    # s3fs asks for the size (HEAD) before a GET; that first request fails AWS_MAX_ATTEMPTS=2 times, no more
    assert unavailable_s3 == ["HEAD /bucket/ds/manifest.parquet"] * 2
    with pytest.raises(StorageError, match=r"^s3://bucket/ds/run.json: writing failed: OSError: "):
        storage.write_bytes_atomic("s3://bucket/ds/run.json", b"{}")
    assert unavailable_s3[2:] == ["PUT /bucket/ds/run.json"] * 2


def test_listing_and_exists_on_s3_see_what_another_process_wrote_after_an_earlier_listing(s3_bucket):
    """s3fs answers ``ls`` and ``exists`` from listings it cached; a Ray worker's slice or another
    grid command's cell written since must not read as missing."""
    import s3fs

    folder = f"{s3_bucket}/cells"
    storage.write_bytes_atomic(f"{folder}/a.parquet", b"a")
    assert [u.rsplit("/", 1)[-1] for u in storage.list_files(folder, ".parquet")] == ["a.parquet"]
    other_process = s3fs.S3FileSystem(skip_instance_cache=True)  # its own client and caches
    other_process.pipe(f"{folder.removeprefix('s3://')}/b.parquet", b"b")
    assert [u.rsplit("/", 1)[-1] for u in storage.list_files(folder, ".parquet")] == ["a.parquet", "b.parquet"]
    assert storage.exists(f"{folder}/b.parquet") and storage.size(f"{folder}/b.parquet") == 1
