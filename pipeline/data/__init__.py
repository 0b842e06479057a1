"""The data layer: class-sharded WebDataset tars at any fsspec URL, the manifest that lists
them, readers, the per-worker class cache, and the small in-memory sources."""
from m3d_condense.pipeline.data.loading import load_split, open_class_pool, resolve_dataset, source_of
from m3d_condense.pipeline.data.manifest import Manifest, ManifestError, read_manifest
from m3d_condense.pipeline.data.pool import ClassPool, StreamingClassPool
from m3d_condense.pipeline.data.reader import ClassShardReader
from m3d_condense.pipeline.data.shards import ShardError
from m3d_condense.pipeline.data.spec import DataSpec, LabeledImages
from m3d_condense.pipeline.data.storage import StorageError

__all__ = ["ClassPool", "ClassShardReader", "DataSpec", "LabeledImages", "Manifest", "ManifestError", "ShardError",
           "StorageError", "StreamingClassPool", "load_split", "open_class_pool", "read_manifest",
           "resolve_dataset", "source_of"]
