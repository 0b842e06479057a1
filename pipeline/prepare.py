#!/usr/bin/env python
"""``python pipeline/prepare.py SOURCE DEST [options]``: convert a dataset into class-sharded
WebDataset tars plus ``DEST/manifest.parquet``. DEST is any fsspec URL (a path, s3://, gs://).

  python pipeline/prepare.py ~/data/cifar-10-batches-py s3://bucket/cifar10
  python pipeline/prepare.py /data/imagenet s3://bucket/in100 --classes class100.txt --size 224
"""
import argparse
import os
import sys

# Run as a script, Python puts pipeline/ first on sys.path. That is harmless: everything is
# imported as m3d_condense.*, and no module in pipeline/ has the name of a standard or installed
# top-level module (tests/test_packaging.py checks both).
from m3d_condense.pipeline.data.sources import LAYOUTS
from m3d_condense.pipeline.data.writer import FORMATS, PrepareOptions, prepare
from m3d_condense.pipeline.errors import command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python pipeline/prepare.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="SOURCE formats:\n  " + "\n  ".join(LAYOUTS))
    p.add_argument("source", metavar="SOURCE", help="local file or folder in one of the formats below")
    p.add_argument("dest", metavar="DEST", help="output URL: /path, file://, s3://bucket/prefix, gs://...")
    p.add_argument("--split", action="append", dest="splits", metavar="NAME",
                   help="split to convert (repeatable; default: all the source has)")
    p.add_argument("--size", type=int, help="resize the shorter side to SIZE, then centre-crop SIZExSIZE (224 for ImageNet)")
    p.add_argument("--format", dest="image_format", choices=FORMATS, default="auto",
                   help="image encoding in the shards (auto: jpeg for JPEG sources, else lossless png)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard at most (default 1000)")
    p.add_argument("--classes", dest="class_list", metavar="FILE",
                   help="keep only these classes, in this order (one name or wnid per line)")
    p.add_argument("--class-names", metavar="FILE", help="rename the classes (one name per line, label order)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="encoding processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    opts = PrepareOptions(splits=tuple(a.splits) if a.splits else None, size=a.size, image_format=a.image_format,
                          quality=a.quality, shard_size=a.shard_size, class_list=a.class_list,
                          class_names=a.class_names, workers=a.workers, progress=not a.no_progress)
    prepare(a.source, a.dest, opts, log=lambda m: print(f"[prepare] {m}", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
