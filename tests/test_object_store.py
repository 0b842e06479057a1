"""The data layer on a real S3 API (moto server on 127.0.0.1): prepare -> condense -> evaluate
from s3://, and the same synthetic set as from local shards and from the in-memory npz."""
import time

import pytest
import torch
from conftest import synthetic_classes, write_npz

from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.data import ClassShardReader, StorageError, read_manifest
from m3d_condense.pipeline.data.storage import register_webdataset_schemes
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.results.synthetic import SyntheticSet

FAST = ["ipc=1", "workers=1", "iterations=4", "batch_real=8", "encoder.width=16", "eval.epochs=2", "eval.test_every=1",
        "device=cpu"]


@pytest.fixture
def mnist_like(tmp_path):
    """A 10-class 28x28 grey dataset as npz, so that the mnist preset runs on it."""
    src = tmp_path / "npz"
    write_npz(src, "train", synthetic_classes(num_classes=10, per_class=12, size=28))
    write_npz(src, "test", synthetic_classes(num_classes=10, per_class=3, size=28, seed=1))
    return src


def _run(tmp_path, name, root, *extra):
    assert main(["mnist", f"data.root={root}", f"out_dir={tmp_path / 'runs'}", f"run_name={name}", *FAST, *extra]) == 0
    return SyntheticSet.load(tmp_path / "runs" / name).images


def test_condensing_from_s3_local_shards_and_npz_gives_the_same_synthetic_set(tmp_path, s3_bucket, mnist_like):
    opts = PrepareOptions(progress=False, shard_size=5)
    prepare(str(mnist_like), f"{s3_bucket}/mnist", opts, log=lambda m: None)
    prepare(str(mnist_like), str(tmp_path / "shards"), opts, log=lambda m: None)
    from_s3 = _run(tmp_path, "s3", f"{s3_bucket}/mnist", "eval.runs=1")  # evaluation reads the test split from S3
    from_local = _run(tmp_path, "local", tmp_path / "shards", "eval.runs=0")
    from_npz = _run(tmp_path, "npz", mnist_like, "eval.runs=0")
    assert torch.equal(from_s3, from_local) and torch.equal(from_s3, from_npz)
    import json
    summary = json.loads((tmp_path / "runs" / "s3" / "summary.json").read_text())
    assert len(summary["eval"]["runs"]) == 1 and 0 <= summary["eval"]["runs"][0] <= 1


def test_streaming_from_s3_without_a_cache_gives_the_same_synthetic_set(tmp_path, s3_bucket, mnist_like):
    prepare(str(mnist_like), f"{s3_bucket}/mnist", PrepareOptions(progress=False, shard_size=5), log=lambda m: None)
    cached = _run(tmp_path, "cached", f"{s3_bucket}/mnist", "eval.runs=0", "data.cache=host")
    streamed = _run(tmp_path, "streamed", f"{s3_bucket}/mnist", "eval.runs=0", "data.cache=stream", "iterations=2")
    again = _run(tmp_path, "cached2", f"{s3_bucket}/mnist", "eval.runs=0", "data.cache=host", "iterations=2")
    assert torch.equal(streamed, again) and not torch.equal(cached, again)


def test_rerunning_prepare_to_s3_uploads_nothing_when_nothing_changed(s3_bucket, mnist_like):
    logs = []
    prepare(str(mnist_like), f"{s3_bucket}/ds", PrepareOptions(progress=False), log=logs.append)
    prepare(str(mnist_like), f"{s3_bucket}/ds", PrepareOptions(progress=False), log=logs.append)
    assert "wrote 0 shards, 20 unchanged" in logs[-1]


def test_webdataset_streams_the_s3_shards_once_fsspec_is_registered(s3_bucket, mnist_like):
    import webdataset as wds

    prepare(str(mnist_like), f"{s3_bucket}/ds", PrepareOptions(progress=False), log=lambda m: None)
    register_webdataset_schemes()
    m = read_manifest(f"{s3_bucket}/ds")
    urls = [m.shard_url(r) for r in m.shards("train", 3)]
    assert urls[0].startswith("s3://")
    labels = [int(s["cls"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert labels == [3] * 12


def test_missing_bucket_is_reported_as_not_writable_before_any_work(s3_server, mnist_like):
    with pytest.raises(StorageError, match="s3://no-such-bucket-x/ds: destination is not writable"):
        prepare(str(mnist_like), "s3://no-such-bucket-x/ds", PrepareOptions(progress=False), log=lambda m: None)


def test_unreachable_object_store_is_tried_once_by_us_and_fails_naming_the_url(s3_server, monkeypatch):
    """botocore retries a refused connection itself (AWS_MAX_ATTEMPTS), so storage adds no attempts."""
    import s3fs

    calls = []
    call_s3 = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls.append(method)
        return await call_s3(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    start = time.perf_counter()
    try:
        with pytest.raises(StorageError, match=r"^s3://bucket/ds/manifest.parquet: reading failed: "
                                               r"EndpointConnectionError: "):
            ClassShardReader("s3://bucket/ds")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert len(calls) == 1, calls  # one S3 call (s3fs asks for the size first), botocore retried inside it
    assert time.perf_counter() - start < 60
