"""Where a worker keeps its classes: device, host within a budget, or streaming; all three
draw the same batches."""
import pytest
import torch
from conftest import synthetic_classes, write_npz

from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import ConfigError, DataConfig
from m3d_condense.pipeline.data import ClassCache, StreamingClassCache, open_class_cache
from m3d_condense.pipeline.data.dataset import cache_tier
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare


def _data_cfg(root, **kw) -> DataConfig:
    return DataConfig(**{"source": "shards", "root": str(root), "read_workers": 1, **kw})


def test_auto_tier_uses_host_memory_within_the_budget_and_streams_beyond_it():
    cpu = torch.device("cpu")
    assert cache_tier(_data_cfg("x"), 2**30, cpu) == "host"
    assert cache_tier(_data_cfg("x", cache_gb=0.5), 2**30, cpu) == "stream"
    assert cache_tier(_data_cfg("x", cache="device"), 2**40, cpu) == "device"  # an explicit choice is obeyed
    with pytest.raises(ConfigError, match="'gpu'.*key data.cache"):
        load_config("digits", ["data.cache=gpu"])


def test_cached_and_streaming_pools_draw_identical_batches(tmp_path):
    data = synthetic_classes(num_classes=3, per_class=11)
    write_npz(tmp_path / "src", "train", data)
    prepare(str(tmp_path / "src"), str(tmp_path / "ds"), PrepareOptions(progress=False, shard_size=4), log=lambda m: None)
    cached = open_class_cache(_data_cfg(tmp_path / "ds", cache="host"), [0, 2], torch.device("cpu"), progress=False)
    streamed = open_class_cache(_data_cfg(tmp_path / "ds", cache_gb=1e-9), [0, 2], torch.device("cpu"), progress=False)
    in_memory = ClassCache.from_labeled(data, [0, 2])
    assert type(cached) is ClassCache and type(streamed) is StreamingClassCache
    for t in range(3):
        a, b, c = (p.sample([0, 2], 5, seed=1, iteration=t) for p in (cached, streamed, in_memory))
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(streamed.first(2, 4), in_memory.first(2, 4))
    assert cached.class_names == streamed.class_names == data.class_names


def test_a_worker_whose_classes_fall_back_to_streaming_says_so(tmp_path):
    """cache=auto streams from the shards when a worker's classes do not fit; that is slow, so
    the worker warns (the driver shows its warnings), unless the user chose data.cache=stream."""
    from m3d_condense.pipeline.config.loader import load_config
    from m3d_condense.pipeline.orchestration.worker import ClassWorker

    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=3, per_class=8))
    prepare(str(tmp_path / "src"), str(tmp_path / "ds"), PrepareOptions(progress=False), log=lambda m: None)
    common = [f"data.root={tmp_path / 'ds'}", "ipc=1", "factor=1", "batch_real=4", "encoder.width=8", "device=cpu"]
    small = ClassWorker(load_config("custom", [*common, "data.cache_gb=1e-9"]), [0, 1], str(tmp_path / "run"))
    assert any("reads and decodes its real batches from the shards" in w for w in small.info().warnings)
    chosen = ClassWorker(load_config("custom", [*common, "data.cache=stream"]), [0, 1], str(tmp_path / "run2"))
    roomy = ClassWorker(load_config("custom", common), [0, 1], str(tmp_path / "run3"))
    assert chosen.info().warnings == [] and roomy.info().warnings == []
