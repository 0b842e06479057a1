"""Exports of a condensed set (pipeline/export.py), each read back from real files by the reader it
is meant for: PIL and prepare (imagefolder), our data layer and a condensation run (webdataset),
pyarrow and Hugging Face ``datasets`` (parquet), the steps DC-Bench's and DD-Ranking's loaders take
(dcbench, ddranking; tests/test_ddranking.py runs DD-Ranking itself); the command line; an object store."""
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
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.data import ClassShardReader, LabeledImages, load_split, read_manifest, storage
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.export import main as export_main
from m3d_condense.pipeline.results.export import CIFAR10_MEAN, CIFAR10_STD, FORMATS, ExportError, dcbench_file, export
from m3d_condense.pipeline.results.synthetic import SyntheticSet

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


# ----------------------------------------------------------------------------- dcbench, ddranking
def _cifar_like(channels: int = 3, classes: int = 10, size: int = 32, seed: int = 2) -> SyntheticSet:
    """IPC stored images per class at factor 2, stored class-interleaved (0, 1, ..., 9, 0, 1, ...) so
    that the class-major order the benchmarks need has to be made; a few pixels outside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(IPC)
    images = torch.rand(len(labels), channels, size, size, generator=g) * 1.1 - 0.05
    return SyntheticSet(images, labels, FACTOR, [f"c{i}" for i in range(classes)])


def _class_major(syn: SyntheticSet) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoded images, computed here per class: class 0's in decoded() order, then class 1's, ...;
    clamped to [0, 1]."""
    decoded, labels = syn.decoded()
    images = torch.cat([decoded[labels == c] for c in range(len(syn.class_names))]).clamp(0, 1)
    return images, torch.arange(len(syn.class_names)).repeat_interleave(IPC * FACTOR * FACTOR)


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _dcbench_load(root, method: str, dataset: str, ipc: int):
    """What DC-Bench's DC/DSA/DM loader does (data_loader/dm_data_loader.py): the file
    ROOT/<method>/<dataset>/IPC<ipc>/res_<METHOD>_<dataset>_ConvNet[D4]_<ipc>ipc.pt, torch.load, and the
    last entry of its "data" list unpacked into images and labels."""
    model = "ConvNetD4" if dataset == "tinyimagenet" else "ConvNet"
    path = root / method / dataset / f"IPC{ipc}" / f"res_{method.upper()}_{dataset}_{model}_{ipc}ipc.pt"
    saved = torch.load(path, weights_only=True)
    images, labels = saved["data"][-1]
    return images, labels, saved


def test_dcbench_writes_the_file_dc_benchmarks_loader_reads_normalised_class_major_decoded(tmp_path):
    syn = _cifar_like()
    root = tmp_path / "distilled_results"
    assert export(syn, str(root), "dcbench", dataset="cifar10") == str(root)  # DC-Bench spells it CIFAR10
    images, labels, saved = _dcbench_load(root, "M3D", "CIFAR10", IPC)  # the path names the stored IPC
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape == (10 * PER_CLASS, 3, 32, 32)
    expected, expected_labels = _class_major(syn)
    assert torch.equal(labels, expected_labels)
    assert torch.equal(images, _normalise(expected, CIFAR10_MEAN, CIFAR10_STD))  # DC-Bench's CIFAR10 statistics
    back = images * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(back, expected, atol=1e-6)  # denormalised: the decoded images, not quantised
    assert saved["m3d"] == {"dataset": "CIFAR10", "method": "M3D", "ipc": IPC, "factor": FACTOR,
                            "images_per_class": PER_CLASS, "class_names": syn.class_names,
                            "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}

    # the DM loader's own folder (an unmodified DC-Bench reads it with --method dm), another IPC in the
    # path, or a file named outright
    export(syn, str(root), "dcbench", dataset="CIFAR10", method="dm", ipc=PER_CLASS)
    assert torch.equal(_dcbench_load(root, "DM", "CIFAR10", PER_CLASS)[0], images)
    export(syn, str(tmp_path / "mine.pt"), "dcbench", dataset="CIFAR10")
    assert torch.equal(torch.load(tmp_path / "mine.pt", weights_only=True)["data"][-1][0], images)
    assert dcbench_file("tinyimagenet", "M3D", 1) == "M3D/tinyimagenet/IPC1/res_M3D_tinyimagenet_ConvNetD4_1ipc.pt"


def test_dcbench_normalises_with_the_benchmarks_statistics_and_refuses_a_set_that_is_not_its_dataset(tmp_path):
    syn = _cifar_like(classes=100, seed=3)
    export(syn, str(tmp_path), "dcbench", dataset="CIFAR100")
    images, _, saved = _dcbench_load(tmp_path, "M3D", "CIFAR100", IPC)
    mean, std = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)  # DC-Bench's CIFAR-100 (DD-Ranking's differ)
    assert saved["m3d"]["mean"] == list(mean) and torch.equal(images, _normalise(_class_major(syn)[0], mean, std))
    with pytest.raises(ExportError, match=r"DC-Bench's CIFAR10 has classes 10 \(this set: 3\), image size "
                                          r"\(32, 32\) \(this set: \(8, 8\)\)"):
        export(_set(), str(tmp_path / "x"), "dcbench", dataset="CIFAR10")
    with pytest.raises(ExportError, match="channels 3 \\(this set: 1\\)"):
        export(_cifar_like(channels=1), str(tmp_path / "x"), "dcbench", dataset="CIFAR10")
    uneven = _cifar_like()
    uneven = SyntheticSet(uneven.images[1:], uneven.labels[1:], FACTOR, uneven.class_names)
    with pytest.raises(ExportError, match="the classes hold 1 to 2 stored images"):
        export(uneven, str(tmp_path / "x"), "dcbench", dataset="CIFAR10")
    with pytest.raises(ExportError, match="ipc 0 cannot name a DC-Bench folder"):
        export(_cifar_like(), str(tmp_path / "x"), "dcbench", dataset="CIFAR10", ipc=0)
    assert not (tmp_path / "x").exists()


def test_dcbench_and_ddranking_take_a_grayscale_set_of_another_dataset_with_its_own_statistics(tmp_path):
    syn = _set(channels=1)  # 3 classes of 8x8, one channel: no dataset the benchmarks ship
    with pytest.raises(ExportError, match=r"does not know the dataset 'MNIST' .*pass mean and std"):
        export(syn, str(tmp_path / "x"), "dcbench", dataset="MNIST")
    syn.mean, syn.std = [0.1307], [0.3081]  # what a run stores: its real data's normalisation
    export(syn, str(tmp_path / "dc"), "dcbench", dataset="MNIST")
    images, labels, saved = _dcbench_load(tmp_path / "dc", "M3D", "MNIST", IPC)
    expected, expected_labels = _class_major(syn)
    assert images.shape == (3 * PER_CLASS, 1, SIZE, SIZE) and torch.equal(labels, expected_labels)
    assert torch.equal(images, _normalise(expected, [0.1307], [0.3081]))
    export(syn, str(tmp_path / "dc2"), "dcbench", dataset="MNIST", mean=[0.5], std=[0.25])  # given ones win
    assert torch.equal(_dcbench_load(tmp_path / "dc2", "M3D", "MNIST", IPC)[0], (expected - 0.5) / 0.25)
    with pytest.raises(ExportError, match="one value per channel"):
        export(syn, str(tmp_path / "x"), "dcbench", dataset="MNIST", mean=[0.5, 0.5, 0.5], std=[1, 1, 1])

    export(syn, str(tmp_path / "ddr"), "ddranking", dataset="MNIST")
    assert torch.equal(torch.load(tmp_path / "ddr" / "images.pt", weights_only=True), images)
    assert torch.equal(torch.load(tmp_path / "ddr" / "labels.pt", weights_only=True), labels)


def test_ddranking_writes_the_image_tensor_and_hard_labels_and_states_both_ipc_counts(tmp_path):
    syn = _cifar_like()
    dest = tmp_path / "ddr"
    assert export(syn, str(dest), "ddranking", dataset="cifar10") == str(dest)
    images = torch.load(dest / "images.pt", weights_only=True)
    labels = torch.load(dest / "labels.pt", weights_only=True)
    expected, expected_labels = _class_major(syn)
    assert images.dtype == torch.float32 and images.shape == (10 * PER_CLASS, 3, 32, 32)  # (N x IPC, C, H, W)
    assert labels.dtype == torch.int64 and torch.equal(labels, expected_labels)
    assert torch.equal(images, _normalise(expected, CIFAR10_MEAN, CIFAR10_STD))
    meta = json.loads((dest / "ddranking.json").read_text())
    assert {k: meta[k] for k in ("dataset", "ipc", "factor", "images_per_class", "num_classes", "im_size",
                                 "normalised", "image_tensor", "hard_labels")} == {
        "dataset": "CIFAR10", "ipc": IPC, "factor": FACTOR, "images_per_class": PER_CLASS, "num_classes": 10,
        "im_size": [32, 32], "normalised": True, "image_tensor": "images.pt", "hard_labels": "labels.pt"}

    cifar100 = _cifar_like(classes=100, seed=3)  # DD-Ranking normalises CIFAR-100 with CIFAR-10's statistics
    export(cifar100, str(tmp_path / "c100"), "ddranking", dataset="CIFAR100")
    assert torch.equal(torch.load(tmp_path / "c100" / "images.pt", weights_only=True),
                       _normalise(_class_major(cifar100)[0], CIFAR10_MEAN, CIFAR10_STD))
    with pytest.raises(ExportError, match="DD-Ranking's TinyImageNet has classes 200"):
        export(syn, str(tmp_path / "x"), "ddranking", dataset="TinyImageNet")


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_ddranking_folder_holds_the_decoded_pngs_under_label_folders_that_sort_in_label_order(tmp_path, channels,
                                                                                              mode):
    syn = _cifar_like(channels=channels, classes=12, size=8)  # 12 classes: "00010" must sort after "00009"
    dest = tmp_path / "ddr"
    export(syn, str(dest), "ddranking", dataset="mine", mean=[0.5] * channels, std=[0.5] * channels, folder=True)
    pixels, labels = _expected(syn)
    folders = sorted(p.name for p in (dest / "images").iterdir())
    assert folders == [f"{c:05d}" for c in range(12)]  # ImageFolder's sorted index is the label
    for c, name in enumerate(folders):
        files = sorted((dest / "images" / name).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(PER_CLASS)]
        assert np.array_equal(np.stack([_png_pixels(f.read_bytes(), mode) for f in files]), pixels[labels == c])
    meta = json.loads((dest / "ddranking.json").read_text())
    assert meta["image_path"] == "images" and meta["normalised"] is False and meta["mean"] == [0.5] * channels
    assert not (dest / "images.pt").exists()
    with pytest.raises(ExportError, match="images already exists"):
        export(syn, str(dest), "ddranking", dataset="mine", mean=[0.5] * channels, std=[0.5] * channels, folder=True)


def test_the_benchmark_formats_from_the_command_line(tmp_path, capsys):
    syn = _cifar_like()
    syn.save(str(tmp_path / "run"))
    root = tmp_path / "results"
    assert export_main([str(tmp_path / "run"), str(root), "--format", "dcbench", "--dataset", "CIFAR10"]) == 0
    path = root / "M3D" / "CIFAR10" / f"IPC{IPC}" / f"res_M3D_CIFAR10_ConvNet_{IPC}ipc.pt"
    assert capsys.readouterr().out == f"wrote {len(syn)} images of 10 classes as dcbench to {path}\n"
    assert torch.equal(_dcbench_load(root, "M3D", "CIFAR10", IPC)[0],
                       _normalise(_class_major(syn)[0], CIFAR10_MEAN, CIFAR10_STD))
    assert export_main([str(tmp_path / "run"), str(tmp_path / "ddr"), "--format", "ddranking", "--dataset", "CIFAR10",
                        "--folder"]) == 0
    assert json.loads((tmp_path / "ddr" / "ddranking.json").read_text())["image_path"] == "images"
    for args, message in ((["--format", "ddranking"], "needs --dataset"),
                          (["--format", "parquet", "--dataset", "CIFAR10"], "--dataset does not apply to --format parquet"),
                          (["--format", "dcbench", "--dataset", "CIFAR10", "--folder"], "--folder does not apply")):
        with pytest.raises(SystemExit) as exit_:
            export_main([str(tmp_path / "run"), str(tmp_path / "y"), *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- dispatch, command line, object store
def test_an_unknown_format_or_option_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown export format 'tfrecord'; choose one of " + ", ".join(FORMATS)):
        export(_set(), "unused", "tfrecord")
    with pytest.raises(ExportError, match=r"format 'parquet' takes the options none, got \['test'\]"):
        export(_set(), "unused", "parquet", test="x")
    with pytest.raises(ExportError, match=r"format 'dcbench' takes the options \['dataset', 'method', 'ipc', 'mean', "
                                          r"'std'\] \(dataset required\), got \[\]"):
        export(_set(), "unused", "dcbench")


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
