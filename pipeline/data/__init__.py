"""The data layer, by module:

  storage      every file access, at any fsspec URL
  writer       prepare: a dataset -> class-sharded WebDataset tars plus manifest.parquet
  manifest     that manifest; shards: the tar format; reader: streams a class's shards back
  inmemory     the small sources read whole (npz files, scikit-learn's digits)
  dataset      the dataset a run reads: its source, checked against the config, its test split
  class_cache  a worker's real images by class (device, host or streamed: ``data.cache``)
  labeled      labelled images in memory
"""
from m3d_condense.pipeline.data.class_cache import ClassCache, StreamingClassCache
from m3d_condense.pipeline.data.dataset import load_split, open_class_cache, resolve_dataset, source_of
from m3d_condense.pipeline.data.labeled import LabeledImages
from m3d_condense.pipeline.data.manifest import Manifest, ManifestError, read_manifest
from m3d_condense.pipeline.data.reader import ClassShardReader
from m3d_condense.pipeline.data.shards import ShardError
from m3d_condense.pipeline.data.storage import StorageError

__all__ = ["ClassCache", "ClassShardReader", "LabeledImages", "Manifest", "ManifestError", "ShardError",
           "StorageError", "StreamingClassCache", "load_split", "open_class_cache", "read_manifest",
           "resolve_dataset", "source_of"]
