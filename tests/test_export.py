"""Exports of a condensed set (pipeline/export.py), each read back from real files by the reader it
is meant for: PIL and prepare (imagefolder), our data layer and a condensation run (webdataset),
pyarrow and Hugging Face ``datasets`` (parquet); the command line; an object store."""
import io
import json
import subprocess
import sys

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, write_npz
from PIL import Image

from m3d_condense.pipeline.cli import main as run_main
from m3d_condense.pipeline.config import load_config
from m3d_condense.pipeline.data import ClassShardReader, LabeledImages, load_split, read_manifest, storage
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.export import FORMATS, ExportError, export
from m3d_condense.pipeline.export import main as export_main
from m3d_condense.pipeline.synthetic import SyntheticSet

NAMES = ["cat", "ant", "bee"]  # not sorted: readers that sort folder names must still find each class
IPC, FACTOR, SIZE = 2, 2, 8
PER_CLASS = IPC * FACTOR * FACTOR  # decoded images per class


def _set(channels: int = 3, seed: int = 0) -> SyntheticSet:
    """3 classes of IPC stored images, with pixels a little outside [0, 1] so that clamping shows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(NAMES)).repeat_interleave(IPC)
    images = torch.rand(len(labels), channels, SIZE, SIZE, generator=g) * 1.2 - 0.1
    return SyntheticSet(images, labels, FACTOR, list(NAMES))


def _expected(syn: SyntheticSet) -> tuple[np.ndarray, np.ndarray]:
    """The decoded set as uint8 (N, H, W, C), computed here independently: round(x * 255) clamped."""
    images, labels = syn.decoded()
    pixels = np.clip(np.round(images.numpy().astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1), labels.numpy()


def _png_pixels(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode
        pixels = np.asarray(img)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _test_split(channels: int = 3, per_class: int = 3, seed: int = 1) -> LabeledImages:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(NAMES)).repeat(per_class)  # interleaved: the export groups them by class
    images = torch.randint(0, 256, (len(labels), channels, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return LabeledImages(images, labels, list(NAMES))


# ----------------------------------------------------------------------------- imagefolder
@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_imagefolder_holds_every_decoded_image_as_a_png_per_class_that_prepare_reads(tmp_path, channels, mode):
    syn = _set(channels)
    dest = tmp_path / "folder"
    assert export(syn, str(dest), "imagefolder") == str(dest)
    pixels, labels = _expected(syn)
    for c, name in enumerate(NAMES):
        files = sorted((dest / "train" / name).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(PER_CLASS)]
        back = np.stack([_png_pixels(f.read_bytes(), mode) for f in files])
        assert np.array_equal(back, pixels[labels == c])  # in decoded() order within the class
    assert (dest / "classes.txt").read_text().splitlines() == NAMES

    quiet = {"log": lambda m: None}
    in_label_order = prepare(str(dest), str(tmp_path / "shards"),
                             PrepareOptions(progress=False, class_list=str(dest / "classes.txt")), **quiet)
    assert in_label_order.class_names == NAMES
    assert in_label_order.extra["num_samples"] == {"train": len(labels)}
    assert in_label_order.channels == channels  # a grayscale set comes back grayscale, not as RGB
    reader = ClassShardReader(str(tmp_path / "shards"))
    assert torch.equal(reader.read_class("train", 0).permute(0, 2, 3, 1), torch.from_numpy(pixels[labels == 0]))
    sorted_order = prepare(str(dest), str(tmp_path / "sorted"), PrepareOptions(progress=False), **quiet)
    assert sorted_order.class_names == sorted(NAMES)  # ImageFolder's convention: folder names sorted


def test_imagefolder_refuses_class_names_that_are_not_folder_names_and_an_earlier_export(tmp_path):
    syn = _set()
    for bad in (["a/b", "ant", "bee"], ["..", "ant", "bee"], [" cat", "ant", "bee"], ["cat", "cat", "bee"]):
        with pytest.raises(ExportError, match="class names"):
            export(SyntheticSet(syn.images, syn.labels, FACTOR, bad), str(tmp_path / "bad"), "imagefolder")
    assert not (tmp_path / "bad").exists()
    export(syn, str(tmp_path / "once"), "imagefolder")
    with pytest.raises(ExportError, match="train already exists"):
        export(syn, str(tmp_path / "once"), "imagefolder")


# ----------------------------------------------------------------------------- webdataset
def test_webdataset_with_a_test_split_loads_back_through_the_data_layer_as_a_custom_root(tmp_path):
    syn, test = _set(), _test_split()
    dest = tmp_path / "wds"
    export(syn, str(dest), "webdataset", test=test)
    cfg = load_config("custom", [f"data.root={dest}"])
    assert (cfg.data.num_classes, cfg.data.channels, cfg.data.image_size) == (3, 3, [SIZE, SIZE])
    train = load_split(cfg.data, "train")
    pixels, labels = _expected(syn)
    assert train.class_names == NAMES
    assert torch.equal(train.images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert torch.equal(train.labels, torch.from_numpy(labels))
    back = load_split(cfg.data, "test")
    order = torch.argsort(test.labels, stable=True)  # shards are per class, in the split's order within a class
    assert torch.equal(back.images, test.images[order]) and torch.equal(back.labels, test.labels[order])


def test_the_test_split_may_be_arrays_labeled_images_or_a_data_root_and_must_fit_the_set(tmp_path):
    syn, test = _set(), _test_split()
    write_npz(tmp_path / "npz", "test", test)  # a data root of the npz kind: {train,test}.npz
    write_npz(tmp_path / "npz", "train", test)
    forms = {"labeled": test, "arrays": (test.images.permute(0, 2, 3, 1).numpy(), test.labels.numpy()),
             "root": str(tmp_path / "npz")}
    shards = {}
    for form, value in forms.items():
        export(syn, str(tmp_path / form), "webdataset", test=value)
        shards[form] = [r.sha256 for r in read_manifest(str(tmp_path / form)).rows if r.split == "test"]
    assert shards["arrays"] == shards["labeled"] == shards["root"]  # the same bytes from every form
    with pytest.raises(ExportError, match="classes"):
        export(syn, str(tmp_path / "x"), "webdataset", test=LabeledImages(test.images, test.labels, ["a", "b", "c"]))
    with pytest.raises(ExportError, match=r"test images are \(9, 8, 8, 1\)"):
        export(syn, str(tmp_path / "x"), "webdataset", test=_test_split(channels=1))
    with pytest.raises(ExportError, match=r"test images are \(9, 8, 8, 3\) .* the set.s images are \(8, 8, 1\)"):
        export(_set(channels=1), str(tmp_path / "x"), "webdataset", test=str(tmp_path / "npz"))


def test_a_condensation_run_reads_the_webdataset_export_as_its_dataset(tmp_path):
    dest = tmp_path / "wds"
    export(_set(), str(dest), "webdataset", test=_test_split())
    args = ["custom", f"data.root={dest}", f"out_dir={tmp_path}", "run_name=again", "ipc=1", "iterations=2",
            "eval.runs=1", "eval.epochs=1", "encoder.width=8", "batch_real=4", "backend=local", "workers=1",
            "diagnostics.moments=false", "log_every=1"]
    assert run_main(args) == 0
    again = SyntheticSet.load(tmp_path / "again")
    assert again.class_names == NAMES and again.images.shape == (3, 3, SIZE, SIZE)


# ----------------------------------------------------------------------------- parquet
def test_parquet_holds_png_images_and_labels_with_the_huggingface_features(tmp_path):
    syn = _set(channels=1)
    export(syn, str(tmp_path / "out"), "parquet")  # a folder: DEST/train.parquet
    path = tmp_path / "out" / "train.parquet"
    table = pq.read_table(path)
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features == {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": NAMES}}
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    pixels, labels = _expected(syn)
    rows = table.to_pylist()
    assert [r["label"] for r in rows] == labels.tolist()
    assert np.array_equal(np.stack([_png_pixels(r["image"]["bytes"], "L") for r in rows]), pixels)

    export(syn, str(tmp_path / "named.parquet"), "parquet")  # a .parquet DEST is the file itself
    assert pq.read_table(tmp_path / "named.parquet").equals(table)


def test_huggingface_datasets_loads_the_parquet_export_as_images_and_named_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    syn = _set(channels=3)
    export(syn, str(tmp_path / "syn.parquet"), "parquet")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "syn.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.features["label"].names == NAMES and isinstance(ds.features["image"], datasets.Image)
    pixels, labels = _expected(syn)
    assert ds["label"] == labels.tolist()
    images = [ds[i]["image"] for i in range(len(ds))]
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images)
    assert np.array_equal(np.stack([np.asarray(im) for im in images]), pixels)


# ----------------------------------------------------------------------------- dispatch, command line, object store
def test_an_unknown_format_or_option_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown export format 'tfrecord'; choose one of " + ", ".join(FORMATS)):
        export(_set(), "unused", "tfrecord")
    with pytest.raises(ExportError, match=r"format 'parquet' takes the options none, got \['test'\]"):
        export(_set(), "unused", "parquet", test="x")


def test_the_export_script_writes_a_stored_run_with_a_test_split_and_exits_2_naming_a_missing_run(tmp_path, capsys):
    syn = _set()
    syn.save(str(tmp_path / "run"))
    script = REPO / "pipeline" / "export.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "out"),
                           "--format", "parquet"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"wrote 24 images of 3 classes as parquet to {tmp_path / 'out' / 'train.parquet'}"]
    assert pq.read_table(tmp_path / "out" / "train.parquet").num_rows == 24

    for split in ("train", "test"):  # an npz data root: the data layer recognises it by train.npz
        write_npz(tmp_path / "data", split, _test_split())
    assert export_main([str(tmp_path / "run"), str(tmp_path / "wds"), "--format", "webdataset",
                        "--test", str(tmp_path / "data")]) == 0
    assert read_manifest(str(tmp_path / "wds")).extra["num_samples"] == {"train": 24, "test": 9}
    assert capsys.readouterr().out.endswith(f"(with the test split of {tmp_path / 'data'})\n")

    missing = tmp_path / "no-such-run"
    assert export_main([str(missing), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]


@pytest.mark.parametrize("format", ["imagefolder", "parquet"])
def test_an_object_store_destination_holds_the_same_export(tmp_path, s3_bucket, format):
    syn = _set(channels=1)
    export(syn, str(tmp_path / "local"), format)
    export(syn, f"{s3_bucket}/syn", format)
    local = sorted(str(p.relative_to(tmp_path / "local")) for p in (tmp_path / "local").rglob("*") if p.is_file())
    fs = fsspec.filesystem("s3")
    remote = sorted(p.split("/syn/", 1)[1] for p in fs.find(f"{s3_bucket}/syn"))
    assert remote == local and len(remote) == (len(syn) + 1 if format == "imagefolder" else 1)
    for rel in (local[0], local[-1]):  # same bytes: PNG encoding is deterministic
        assert storage.read_bytes(f"{s3_bucket}/syn/{rel}") == (tmp_path / "local" / rel).read_bytes()
