"""prepare: every SOURCE format becomes class shards + a manifest that read back exactly."""
import io
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SHARED_DATA, synthetic_classes, write_npz
from PIL import Image
from source_files import write_cifar10, write_cifar100, write_idx, write_image_folder, write_svhn

from m3d_condense.pipeline.data import ClassShardReader, read_manifest
from m3d_condense.pipeline.data.arrays import folder_arrays
from m3d_condense.pipeline.data.sources import SourceError
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.prepare import main as prepare_main

QUIET = dict(progress=False)


def _prepare(source, dest, **kw):
    return prepare(str(source), str(dest), PrepareOptions(**QUIET, **kw), log=lambda m: None)


def _class_images(data, c):
    return data.images[data.labels == c]


def _assert_round_trip(dest, split, data):
    reader = ClassShardReader(str(dest))
    for c in range(len(data.class_names)):
        assert torch.equal(reader.read_class(split, c), _class_images(data, c)), f"class {c} of {split}"


def test_npz_source_round_trips_every_pixel_through_png_shards(tmp_path):
    train, test = synthetic_classes(num_classes=4, per_class=25), synthetic_classes(num_classes=4, per_class=5, seed=1)
    write_npz(tmp_path / "src", "train", train)
    write_npz(tmp_path / "src", "test", test)
    m = _prepare(tmp_path / "src", tmp_path / "out", shard_size=10)
    assert (m.image_size, m.channels, m.class_names, m.image_format) == ((12, 12), 1, train.class_names, "png")
    table = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert {"split", "class_index", "class_name", "shard", "num_samples", "num_bytes", "sha256"} <= set(table.column_names)
    rows = table.to_pylist()
    assert sorted(r["shard"] for r in rows if r["split"] == "train" and r["class_index"] == 2) == \
        ["train/00002-00000.tar", "train/00002-00001.tar", "train/00002-00002.tar"]
    assert [r["num_samples"] for r in rows if r["shard"].startswith("train/00002")] == [10, 10, 5]
    pixels = train.images.double() / 255
    assert m.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-5)
    assert m.std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-5)
    _assert_round_trip(tmp_path / "out", "train", train)
    _assert_round_trip(tmp_path / "out", "test", test)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_raw_or_gzip_become_shards(tmp_path, gz):
    train = synthetic_classes(num_classes=10, per_class=6, size=28)
    test = synthetic_classes(num_classes=10, per_class=2, size=28, seed=3)
    write_idx(tmp_path / "src", "train", train, gz)
    write_idx(tmp_path / "src", "t10k", test, gz)
    m = _prepare(tmp_path / "src", tmp_path / "out")
    assert m.class_names == [str(i) for i in range(10)] and m.image_size == (28, 28) and m.extra["source_format"] == "idx"
    _assert_round_trip(tmp_path / "out", "test", test)


def test_idx_class_names_file_renames_the_classes(tmp_path):
    write_idx(tmp_path / "src", "train", synthetic_classes(num_classes=3, per_class=2, size=28), gz=True)
    (tmp_path / "names.txt").write_text("T-shirt/top\nTrouser\nPullover\n")
    m = _prepare(tmp_path / "src", tmp_path / "out", class_names=str(tmp_path / "names.txt"))
    assert m.class_names == ["T-shirt/top", "Trouser", "Pullover"]
    assert m.shards("train", 0)[0].shard == "train/00000-00000.tar"  # names with '/' never reach paths


def test_cifar10_and_cifar100_pickles_read_as_the_official_tarballs_unpack(tmp_path):
    train = synthetic_classes(num_classes=10, per_class=4, size=32, channels=3)
    test = synthetic_classes(num_classes=10, per_class=2, size=32, channels=3, seed=2)
    write_cifar10(tmp_path / "c10", train, test)
    m = _prepare(tmp_path / "c10", tmp_path / "out10")  # the folder that holds cifar-10-batches-py/
    assert m.extra["source_format"] == "cifar10" and m.channels == 3 and m.extra["num_samples"] == {"train": 40, "test": 20}
    _assert_round_trip(tmp_path / "out10", "train", train)
    write_cifar100(tmp_path / "c100", train, test)
    m = _prepare(tmp_path / "c100" / "cifar-100-python", tmp_path / "out100")
    assert m.extra["source_format"] == "cifar100" and m.class_names == train.class_names
    _assert_round_trip(tmp_path / "out100", "test", test)


@pytest.mark.parametrize("options", [dict(protocol=2, numpy1_names=True), dict(protocol=4), dict(protocol=5)],
                         ids=["official-numpy1-names", "protocol4", "protocol5"])
def test_cifar_pickles_load_through_the_restricted_unpickler_whatever_protocol_wrote_them(tmp_path, options):
    """Only data globals are allowed (see test_data_errors): the official files' (numpy 1's
    module names) and a re-pickle's by today's numpy, at each protocol that rebuilds arrays
    differently, all still read."""
    train = synthetic_classes(num_classes=10, per_class=2, size=32, channels=3)
    test = synthetic_classes(num_classes=10, per_class=1, size=32, channels=3, seed=2)
    write_cifar10(tmp_path / "c10", train, test, **options)
    m = _prepare(tmp_path / "c10", tmp_path / "out")
    assert m.extra["num_samples"] == {"train": 20, "test": 10} and m.class_names == train.class_names
    _assert_round_trip(tmp_path / "out", "train", train)
    _assert_round_trip(tmp_path / "out", "test", test)


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path):
    train = synthetic_classes(num_classes=10, per_class=3, size=32, channels=3)
    train.class_names[:] = [str(i) for i in range(10)]
    write_svhn(tmp_path / "svhn", train, synthetic_classes(num_classes=10, per_class=1, size=32, channels=3))
    m = _prepare(tmp_path / "svhn", tmp_path / "out", splits=("train",))
    assert m.splits == ["train"] and m.class_names == [str(i) for i in range(10)]
    _assert_round_trip(tmp_path / "out", "train", train)


def test_image_folder_with_class_list_keeps_that_order_and_resizes_then_centre_crops(tmp_path):
    data = synthetic_classes(num_classes=4, per_class=5, size=20, channels=3)
    data.class_names[:] = ["n01", "n02", "n03", "n04"]
    write_image_folder(tmp_path / "imnet", "train", data, ext="jpg", sizes=[(40, 30), (25, 50), (16, 16)])
    write_image_folder(tmp_path / "imnet", "val", synthetic_classes(num_classes=4, per_class=2, size=20, channels=3,
                                                                      seed=4), ext="jpg")
    for c, name in enumerate(["class0", "class1", "class2", "class3"]):
        (tmp_path / "imnet" / "val" / name).rename(tmp_path / "imnet" / "val" / data.class_names[c])
    (tmp_path / "list.txt").write_text("# two of four\nn03\nn01\n")
    m = _prepare(tmp_path / "imnet", tmp_path / "out", size=16, class_list=str(tmp_path / "list.txt"),
                 image_format="png")  # lossless here, so the crop can be checked exactly
    assert m.class_names == ["n03", "n01"] and m.image_size == (16, 16)
    assert m.splits == ["test", "train"] and m.num_samples("test", 0) == 2
    reader = ClassShardReader(str(tmp_path / "out"))
    first = reader.read_class("train", 0)
    assert first.shape == (5, 3, 16, 16)
    # image 10 of the folder (class n03) is 25x50: the shorter side goes to 16 (16x32), then the middle 16 rows
    from PIL import Image
    src = Image.open(tmp_path / "imnet" / "train" / "n03" / "img0010.jpg").convert("RGB")
    assert src.size == (25, 50)
    expect = np.asarray(src.resize((16, 32), Image.BICUBIC).crop((0, 8, 16, 24)))
    assert np.array_equal(first[0].permute(1, 2, 0).numpy(), expect)
    auto = _prepare(tmp_path / "imnet", tmp_path / "auto", size=16, class_list=str(tmp_path / "list.txt"))
    assert auto.image_format == "jpeg" and ClassShardReader(str(tmp_path / "auto")).read_class("test", 1).shape[0] == 2


def test_image_folder_skips_hidden_files_and_folders_such_as_an_interrupted_writes_temporary(tmp_path):
    data = synthetic_classes(num_classes=2, per_class=3, size=8, channels=3)
    write_image_folder(tmp_path / "src", "train", data)
    cls = tmp_path / "src" / "train" / data.class_names[0]
    (cls / "img0000.png").rename(cls / ".tmp-0123abcd-img0000.png")  # what a crashed atomic write leaves
    (tmp_path / "src" / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "src" / "train" / ".ipynb_checkpoints" / "img.png").write_bytes((cls / "img0002.png").read_bytes())
    m = _prepare(tmp_path / "src", tmp_path / "out")
    assert m.class_names == data.class_names
    assert [m.num_samples("train", c) for c in range(2)] == [2, 3]


def test_image_folder_stays_rgb_when_one_of_its_files_is_grayscale(tmp_path):
    data = synthetic_classes(num_classes=2, per_class=3, size=8, channels=3)
    write_image_folder(tmp_path / "src", "train", data)
    gray = sorted((tmp_path / "src" / "train" / data.class_names[1]).iterdir())[0]
    Image.open(gray).convert("L").save(gray)  # as ImageNet has a few grayscale JPEGs among colour ones
    m = _prepare(tmp_path / "src", tmp_path / "out")
    assert m.channels == 3
    back = ClassShardReader(str(tmp_path / "out")).read_class("train", 1)[0]
    assert back.shape == (3, 8, 8) and torch.equal(back[0], back[2])


# ----------------------------------------------------------------------------- odd files of real ImageFolders
def _jpeg(path, mode: str, width: int, height: int, seed: int = 0) -> None:
    """A JPEG of random colour pixels converted to PIL ``mode`` (RGB, L or CMYK), as cameras and
    scanners write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, quality=95)


def test_image_folder_is_rgb_when_a_colour_file_follows_grayscale_first_images(tmp_path):
    # the first image of every class (the sample) is grayscale, a later one is colour: reading it as
    # one channel would silently drop its colour, so every header is read and the set is RGB
    _jpeg(tmp_path / "src" / "train" / "a" / "0.jpg", "L", 16, 16)
    _jpeg(tmp_path / "src" / "train" / "a" / "1.jpg", "RGB", 16, 16, seed=1)
    _jpeg(tmp_path / "src" / "train" / "b" / "0.jpg", "L", 16, 16, seed=2)
    m = _prepare(tmp_path / "src", tmp_path / "out", image_format="png")
    assert m.channels == 3
    colour = ClassShardReader(str(tmp_path / "out")).read_class("train", 0)[1].permute(1, 2, 0).numpy()
    assert np.array_equal(colour, np.asarray(Image.open(tmp_path / "src" / "train" / "a" / "1.jpg").convert("RGB")))
    gray = ClassShardReader(str(tmp_path / "out")).read_class("train", 1)[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])  # the grayscale file, three times


def test_image_folder_converts_cmyk_jpegs_to_rgb(tmp_path):
    _jpeg(tmp_path / "src" / "train" / "a" / "0.jpg", "CMYK", 16, 16)  # the sampled first image is CMYK
    _jpeg(tmp_path / "src" / "train" / "a" / "1.jpg", "RGB", 16, 16, seed=1)
    _jpeg(tmp_path / "src" / "train" / "b" / "0.jpg", "RGB", 16, 16, seed=2)
    cmyk = tmp_path / "src" / "train" / "a" / "0.jpg"
    assert Image.open(cmyk).mode == "CMYK"
    m = _prepare(tmp_path / "src", tmp_path / "out", image_format="png")
    assert m.channels == 3
    back = ClassShardReader(str(tmp_path / "out")).read_class("train", 0)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(back, np.asarray(Image.open(cmyk).convert("RGB")))  # PIL's conversion, no colour profile


def test_image_folder_with_a_333x500_image_among_320x320_names_it_or_resizes_and_centre_crops(tmp_path):
    src = tmp_path / "src" / "train"
    _jpeg(src / "a" / "0.jpg", "RGB", 320, 320)
    _jpeg(src / "a" / "1.jpg", "RGB", 333, 500, seed=1)  # width 333, height 500
    _jpeg(src / "b" / "0.jpg", "RGB", 320, 320, seed=2)
    _jpeg(src / "b" / "1.jpg", "RGB", 320, 320, seed=3)
    odd = src / "a" / "1.jpg"
    with pytest.raises(SourceError, match=f"{odd}: image is 500x333x3, others are 320x320x3 .*--size S"):
        _prepare(tmp_path / "src", tmp_path / "x")  # in one shard with a 320x320 image
    with pytest.raises(SourceError, match=f"{odd}: image is 500x333x3, but {src / 'a' / '0.jpg'} is 320x320x3"):
        _prepare(tmp_path / "src", tmp_path / "x", shard_size=1)  # alone in its shard: named all the same
    (src / "b" / "0.jpg").rename(src / "b" / "9.jpg")
    _jpeg(src / "b" / "0.jpg", "RGB", 333, 500, seed=4)  # the sampled first image of class b: refused before encoding
    with pytest.raises(SourceError, match=f"{src / 'b' / '0.jpg'}: image is 500x333 \\(height x width\\), but "
                                          f"{src / 'a' / '0.jpg'} is 320x320"):
        _prepare(tmp_path / "src", tmp_path / "x")
    assert not (tmp_path / "x" / "manifest.parquet").exists()

    m = _prepare(tmp_path / "src", tmp_path / "out", size=320, image_format="png")  # --size 320
    assert m.image_size == (320, 320)
    back = ClassShardReader(str(tmp_path / "out")).read_class("train", 0)[1].permute(1, 2, 0).numpy()
    # the shorter side 333 -> 320, so 500 -> 480; then the middle 320 rows
    expect = np.asarray(Image.open(odd).convert("RGB").resize((320, 480), Image.BICUBIC).crop((0, 80, 320, 400)))
    assert np.array_equal(back, expect)


def test_image_folder_with_an_empty_class_folder_names_it_and_the_class_list_can_leave_it_out(tmp_path):
    data = synthetic_classes(num_classes=2, per_class=3, size=8, channels=3)
    write_image_folder(tmp_path / "src", "train", data)
    empty = tmp_path / "src" / "train" / "zebra"
    empty.mkdir()
    with pytest.raises(SourceError, match=f"{empty}: class folder without images .*it is empty.*cannot be condensed"):
        _prepare(tmp_path / "src", tmp_path / "out")
    (empty / "notes.txt").write_text("to do")
    (empty / ".DS_Store").write_text("")  # hidden: not mentioned
    with pytest.raises(SourceError, match=r"zebra: class folder without images .*1 other entries, e.g. \['notes.txt'\]"):
        _prepare(tmp_path / "src", tmp_path / "out")
    with pytest.raises(SourceError, match=f"{empty}: class folder without images"):
        folder_arrays(str(tmp_path / "src"), "train")  # condense(folder) reads it the same way
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    (tmp_path / "list.txt").write_text("class0\nclass1\n")
    m = _prepare(tmp_path / "src", tmp_path / "out", class_list=str(tmp_path / "list.txt"))
    assert m.class_names == ["class0", "class1"]


def test_condense_reading_an_image_folder_names_an_image_of_another_size(tmp_path):
    src = tmp_path / "src" / "train"
    _jpeg(src / "a" / "0.jpg", "RGB", 32, 32)
    _jpeg(src / "a" / "1.jpg", "CMYK", 32, 32, seed=1)
    _jpeg(src / "b" / "0.jpg", "L", 32, 32, seed=2)
    x, y, names = folder_arrays(str(tmp_path / "src"), "train")  # CMYK and L files join as RGB
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [0, 0, 1] and names == ["a", "b"]
    _jpeg(src / "b" / "1.jpg", "RGB", 33, 50, seed=3)
    with pytest.raises(SourceError, match=f"{src / 'b' / '1.jpg'}: image is 50x33x3, but {src / 'a' / '0.jpg'} is "
                                          "32x32x3; prepare the folder .*--size S"):
        folder_arrays(str(tmp_path / "src"), "train")


def test_rerun_skips_unchanged_shards_and_rewrites_changed_ones(tmp_path):
    data = synthetic_classes(num_classes=3, per_class=8)
    write_npz(tmp_path / "src", "train", data)
    logs = []
    m1 = prepare(str(tmp_path / "src"), str(tmp_path / "out"), PrepareOptions(progress=False), log=logs.append)
    assert "wrote 3 shards, 0 unchanged" in logs[-1]
    prepare(str(tmp_path / "src"), str(tmp_path / "out"), PrepareOptions(progress=False), log=logs.append)
    assert "wrote 0 shards, 3 unchanged" in logs[-1]
    data.images[data.labels == 1] = 255 - data.images[data.labels == 1]
    write_npz(tmp_path / "src", "train", data)
    m3 = prepare(str(tmp_path / "src"), str(tmp_path / "out"), PrepareOptions(progress=False), log=logs.append)
    assert "wrote 1 shards, 2 unchanged" in logs[-1]
    assert [r.sha256 for r in m1.rows if r.class_index != 1] == [r.sha256 for r in m3.rows if r.class_index != 1]
    _assert_round_trip(tmp_path / "out", "train", data)


def test_parallel_workers_write_byte_identical_shards(tmp_path):
    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=3, per_class=9))
    one = _prepare(tmp_path / "src", tmp_path / "a", shard_size=4)
    two = _prepare(tmp_path / "src", tmp_path / "b", shard_size=4, workers=2)
    assert sorted((r.shard, r.sha256) for r in one.rows) == sorted((r.shard, r.sha256) for r in two.rows)


def test_shards_are_plain_webdataset_readable_by_the_webdataset_library(tmp_path):
    import webdataset as wds

    data = synthetic_classes(num_classes=2, per_class=3)
    write_npz(tmp_path / "src", "train", data)
    m = _prepare(tmp_path / "src", tmp_path / "out")
    urls = [m.shard_url(r) for r in m.rows]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("l8").to_tuple("png", "cls"))
    assert [int(c) for _, c in samples] == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(samples[4][0], data.images[4, 0].numpy())
    with tarfile.open(urls[0]) as tar:
        assert tar.getnames()[:2] == ["00000-0000000.png", "00000-0000000.cls"]
        assert all(i.mtime == 0 for i in tar.getmembers())


@pytest.mark.skipif(not (SHARED_DATA / "mnist" / "test.npz").exists(), reason="../shared/data not present")
def test_shared_mnist_test_split_prepares_and_reads_back_exactly(tmp_path):
    m = _prepare(SHARED_DATA / "mnist", tmp_path / "out", splits=("test",), workers=2)
    with np.load(SHARED_DATA / "mnist" / "test.npz") as d:
        x, y = d["x"], d["y"]
    assert m.extra["num_samples"] == {"test": 10000}
    got = ClassShardReader(str(tmp_path / "out")).read_class("test", 7)
    assert torch.equal(got, torch.from_numpy(x[y == 7]).permute(0, 3, 1, 2))


def test_prepare_cli_writes_the_manifest_and_reports_bad_source_with_exit_2(tmp_path, capsys):
    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=2, per_class=2))
    assert prepare_main([str(tmp_path / "src"), str(tmp_path / "out"), "--no-progress", "--workers", "1"]) == 0
    assert read_manifest(str(tmp_path / "out")).num_classes == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("not a dataset")
    assert prepare_main([str(tmp_path / "junk"), str(tmp_path / "out2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'junk'}: not a dataset prepare can read" in err and "ImageFolder" in err
    assert not (tmp_path / "out2" / "manifest.parquet").exists()


def test_manifest_metadata_is_readable_without_this_project(tmp_path):
    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=2, per_class=2))
    _prepare(tmp_path / "src", tmp_path / "out")
    import json
    meta = json.loads(pq.read_schema(io.BytesIO((tmp_path / "out" / "manifest.parquet").read_bytes())).metadata[b"m3d"])
    assert meta["image_size"] == [12, 12] and meta["channels"] == 1 and len(meta["mean"]) == 1


def test_npz_resized_by_the_config_equals_the_same_set_prepared_with_size(tmp_path):
    """One resizer: `data.resize=true` on an npz set and `prepare --size` give the same pixels."""
    from m3d_condense.pipeline.config.schema import DataConfig
    from m3d_condense.pipeline.data.inmemory import load_arrays

    train = synthetic_classes(num_classes=3, per_class=6, size=12, channels=3)
    write_npz(tmp_path / "src", "train", train)
    _prepare(tmp_path / "src", tmp_path / "out", size=20)
    data = DataConfig(source="npz", root=str(tmp_path / "src"), image_size=[20, 20], channels=3, num_classes=3,
                      resize=True)
    from_npz = load_arrays(data, "train")
    assert from_npz.images.shape == (18, 3, 20, 20)
    reader = ClassShardReader(str(tmp_path / "out"))
    for c in range(3):
        assert torch.equal(reader.read_class("train", c), from_npz.images[from_npz.labels == c]), f"class {c}"
