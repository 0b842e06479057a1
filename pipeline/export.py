#!/usr/bin/env python
"""``python pipeline/export.py RUN_DIR DEST [--format F] [--test DATA_ROOT]``: write a run's condensed
set (its decoded training images, ``SyntheticSet.decoded()``) in a standard format. DEST is a local
path or any fsspec URL (s3://, gs://, ...).

  imagefolder  DEST/train/<class name>/<i:05d>.png (i: the image's position within its class) and
               DEST/classes.txt (the class names in label order). torchvision's ImageFolder and
               ``pipeline/prepare.py`` read it; both number the classes in sorted order of the folder
               names, so to keep this set's label order give prepare ``--classes DEST/classes.txt``.
  webdataset   class-sharded tars plus DEST/manifest.parquet, written by ``pipeline/prepare.py``'s own
               writer: our data layer reads it. With a test split (``--test``) DEST is a data root for
               the ``custom`` preset: ``python pipeline/run.py custom data.root=DEST``.
  parquet      DEST/train.parquet (or DEST itself when it ends in .parquet): columns ``image`` (PNG
               bytes, Hugging Face ``datasets`` Image storage) and ``label`` (int64), with the
               ``datasets`` features (Image, ClassLabel with the class names) in the schema metadata:
               ``datasets.load_dataset("parquet", data_files=...)`` yields PIL images and named labels.

  dcbench      the .pt file DC-Bench's DC/DSA/DM loader reads: DEST/<METHOD>/<dataset>/IPC<ipc>/
               res_<METHOD>_<dataset>_<ConvNet|ConvNetD4>_<ipc>ipc.pt (DEST: its distilled_results folder;
               or DEST itself when it ends in .pt), a dict whose "data" list ends with [images, labels]:
               float32 (N, C, H, W) normalised with DC-Bench's mean/std of the dataset, int64 (N,),
               class-major. ``--dataset`` names DC-Bench's dataset (CIFAR10, CIFAR100, tinyimagenet).
  ddranking    DD-Ranking's input: DEST/images.pt (float32 (N, C, H, W), class-major, normalised with
               DD-Ranking's mean/std of ``--dataset``: CIFAR10, CIFAR100, TinyImageNet, ImageNet1K, ...),
               DEST/labels.pt (int64 hard labels) and DEST/ddranking.json; with ``--folder``, the images as
               PNGs in DEST/images/<label:05d>/ instead (its ``image_path``; normalise in custom_train_trans).

Pixels: the image formats hold lossless PNGs of ``to_uint8`` of the decoded images (grayscale sets
(C=1) as mode "L" PNGs, RGB sets as "RGB"); the benchmark tensors (dcbench, ddranking) hold the
decoded float images themselves, clamped to [0, 1] and normalised, not quantised. Their IPC: the
file names and ddranking.json give the stored images per class; each decodes to factor^2 training
images, all of which the files hold (docs/benchmarks.md says which IPC to pass each benchmark).

  python pipeline/export.py runs/cifar10_m3d_gaussian_ipc10_s0 exports/c10 --format imagefolder
  python pipeline/export.py s3://bucket/runs/in100 s3://bucket/in100-syn --format webdataset --test s3://bucket/in100
  python pipeline/export.py runs/cifar10_m3d_gaussian_ipc10_s0 dc_benchmark/distilled_results --format dcbench --dataset CIFAR10
  python pipeline/export.py runs/cifar10_m3d_gaussian_ipc10_s0 exports/c10-ddr --format ddranking --dataset CIFAR10
"""
import argparse
import sys

# Run as a script, Python puts pipeline/ first on sys.path. That is harmless: everything is
# imported as m3d_condense.*, and no module in pipeline/ has the name of a standard or installed
# top-level module (tests/test_packaging.py checks both).
from m3d_condense.pipeline.errors import command
from m3d_condense.pipeline.results.export import FORMATS, dcbench_url, export, parquet_url
from m3d_condense.pipeline.results.synthetic import SyntheticSet


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python pipeline/export.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (path or URL) holding a synthetic set")
    p.add_argument("dest", metavar="DEST", help="output: /path, file://, s3://bucket/prefix, gs://...")
    p.add_argument("--format", choices=FORMATS, default="imagefolder", help="default: imagefolder")
    p.add_argument("--test", metavar="DATA_ROOT",
                   help="webdataset only: also write this dataset's test split, so DEST is a data.root for preset custom")
    p.add_argument("--dataset", metavar="NAME",
                   help="dcbench, ddranking (required): the benchmark's dataset name, which sets the normalisation "
                        "(DC-Bench: CIFAR10, CIFAR100, tinyimagenet; DD-Ranking: CIFAR10, CIFAR100, TinyImageNet, "
                        "ImageNet1K, ...; another name normalises with the set's own mean and std)")
    p.add_argument("--method", metavar="NAME", help="dcbench only: the method folder and file name (default M3D)")
    p.add_argument("--ipc", type=int, metavar="N", help="dcbench only: the IPC the path names (default: the stored IPC)")
    p.add_argument("--mean", type=float, nargs="+", metavar="M", help="dcbench, ddranking: normalise with this mean")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="dcbench, ddranking: normalise with this std")
    p.add_argument("--folder", action="store_true",
                   help="ddranking only: PNGs in DEST/images/<label>/ (DD-Ranking's image_path) instead of images.pt")
    return p


BENCHMARK_OPTIONS = {"dcbench": ("dataset", "method", "ipc", "mean", "std"), "ddranking": ("dataset", "mean", "std", "folder")}


@command
def main(argv: list[str] | None = None) -> int:

    p = parser()
    a = p.parse_args(argv)
    if a.test is not None and a.format != "webdataset":
        p.error("--test needs --format webdataset")
    given = {k for k in ("dataset", "method", "ipc", "mean", "std") if getattr(a, k) is not None}
    given |= {"folder"} if a.folder else set()
    unused = sorted(given - set(BENCHMARK_OPTIONS.get(a.format, ())))
    if unused:
        p.error(f"--{unused[0]} does not apply to --format {a.format}")
    if a.format in BENCHMARK_OPTIONS and a.dataset is None:
        p.error(f"--format {a.format} needs --dataset (the benchmark's dataset name)")
    options = {"test": a.test} if a.test is not None else {}
    options.update({k: getattr(a, k) for k in given})
    syn = SyntheticSet.load(a.run_dir)
    export(syn, a.dest, a.format, **options)
    where = (parquet_url(a.dest) if a.format == "parquet" else
             dcbench_url(syn, a.dest, a.dataset, a.method or "M3D", a.ipc) if a.format == "dcbench" else a.dest)
    print(f"wrote {len(syn)} images of {len(syn.class_names)} classes as {a.format} to {where}"
          + (f" (with the test split of {a.test})" if a.test is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
