"""Every kind of bad input gives one clear error naming the culprit, and leaves nothing that
looks complete."""
import dataclasses
import hashlib
import io
import os
import pickle
import re
import tarfile

import numpy as np
import pytest
from conftest import synthetic_classes, write_npz
from PIL import Image
from source_files import write_cifar10, write_image_folder

from m3d_condense.pipeline.data import ClassShardReader, ManifestError, ShardError, StorageError, read_manifest
from m3d_condense.pipeline.data.shards import Sample, build_shard, encode_image
from m3d_condense.pipeline.data.sources import SourceError
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare


def _prepare(source, dest, **kw):
    return prepare(str(source), str(dest), PrepareOptions(progress=False, **kw), log=lambda m: None)


@pytest.fixture
def prepared(tmp_path):
    """A prepared 3-class dataset; returns (root, manifest)."""
    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=3, per_class=6))
    root = tmp_path / "ds"
    return root, _prepare(tmp_path / "src", root, shard_size=3)


def _shard_path(root, m, class_index=1, number=0):
    row = m.shards("train", class_index)[number]
    return root / row.shard, row


def _replace_shard(root, m, samples, class_index=1):
    """Write a shard with ``samples`` in place of class ``class_index``'s first shard and update
    the manifest to match, so that only the members themselves are wrong."""
    path, row = _shard_path(root, m, class_index)
    data = build_shard(samples)
    path.write_bytes(data)
    new = dataclasses.replace(row, num_samples=len(samples), num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    m.rows = [new if r == row else r for r in m.rows]
    m.write()
    return str(path)


def _png(h=12, w=12, c=1):
    return encode_image(np.zeros((h, w, c), np.uint8), "png")


def test_truncated_tar_names_the_shard(prepared):
    root, m = prepared
    path, _ = _shard_path(root, m)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(ShardError, match=f"{path}: .*(truncated|bytes)"):
        ClassShardReader(str(root)).read_class("train", 1)


def test_tar_cut_inside_a_member_is_reported_by_the_tar_reader_even_without_verification(prepared):
    root, m = prepared
    path, _ = _shard_path(root, m)
    path.write_bytes(path.read_bytes()[:600])  # inside the first image's data
    with pytest.raises(ShardError, match=f"{path}: corrupt or truncated tar after 600 bytes"):
        ClassShardReader(str(root), verify=False).read_class("train", 1)


def test_tar_cut_between_members_is_caught_by_the_sample_count(prepared):
    root, m = prepared
    path, _ = _shard_path(root, m)
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[2].offset  # where the second sample's header starts
    path.write_bytes(path.read_bytes()[:cut])  # one whole sample (image + label), nothing after
    with pytest.raises(ShardError, match=f"{path}: holds 1 samples, the manifest says 3 \\(truncated"):
        ClassShardReader(str(root), verify=False).read_class("train", 1)


def test_corrupted_bytes_give_a_sha256_mismatch_naming_the_shard(prepared):
    root, m = prepared
    path, row = _shard_path(root, m)
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # inside the first image's bytes: the tar still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{path}: sha256 .* does not match the manifest's {row.sha256}"):
        ClassShardReader(str(root)).read_class("train", 1)


def test_shard_listed_in_the_manifest_but_missing(prepared):
    root, m = prepared
    path, _ = _shard_path(root, m, number=1)
    path.unlink()
    with pytest.raises(ShardError, match=f"{path}: shard listed in the manifest is missing"):
        ClassShardReader(str(root)).read_class("train", 1)


def test_member_that_is_not_a_decodable_image_names_shard_and_member(prepared):
    root, m = prepared
    url = _replace_shard(root, m, [Sample("00001-0000000", _png(), "png", 1),
                                   Sample("00001-0000001", b"this is not a png", "png", 1)])
    with pytest.raises(ShardError, match=f"{url} member 00001-0000001.png: not a decodable image"):
        ClassShardReader(str(root)).read_class("train", 1)


@pytest.mark.parametrize("shape, what", [((10, 12, 1), "10x12 with 1 channels"), ((12, 12, 3), "12x12 with 3 channels")])
def test_image_of_the_wrong_size_or_channel_count_names_the_member(prepared, shape, what):
    root, m = prepared
    url = _replace_shard(root, m, [Sample("00001-0000000", _png(*shape), "png", 1)])
    with pytest.raises(ShardError, match=f"{url} member 00001-0000000.png: image is {what}, the manifest says 12x12 with 1"):
        ClassShardReader(str(root)).read_class("train", 1)


def test_label_outside_the_manifest_names_the_member(prepared):
    root, m = prepared
    url = _replace_shard(root, m, [Sample("00001-0000000", _png(), "png", 7)])
    with pytest.raises(ShardError, match=f"{url} member 00001-0000000.cls: label 7 is outside the manifest's classes 0..2"):
        ClassShardReader(str(root)).read_class("train", 1)


def test_label_of_another_class_in_a_class_shard_is_an_error(prepared):
    root, m = prepared
    url = _replace_shard(root, m, [Sample("00001-0000000", _png(), "png", 2)])
    with pytest.raises(ShardError, match=f"{url} member 00001-0000000.cls: label 2, but the manifest lists this shard "
                                         "under class 1"):
        ClassShardReader(str(root)).read_class("train", 1)


def test_manifest_row_with_a_class_outside_the_class_list(prepared):
    root, m = prepared
    m.rows[0] = dataclasses.replace(m.rows[0], class_index=5)
    m.write()
    with pytest.raises(ManifestError, match=f"{root / 'manifest.parquet'}: row 0 .* has class_index 5, outside 0..2"):
        read_manifest(str(root))


def test_class_without_shards_in_the_manifest_names_the_class(prepared):
    root, m = prepared
    m.rows = [r for r in m.rows if r.class_index != 2]
    m.write()
    with pytest.raises(ManifestError, match=r"class 2 \(class2\) has no shards in split 'train'"):
        ClassShardReader(str(root)).read_class("train", 2)


def test_empty_class_in_the_source_names_the_class_and_writes_no_manifest(tmp_path):
    data = synthetic_classes(num_classes=3, per_class=4)
    write_image_folder(tmp_path / "src", "train", data)
    (tmp_path / "src" / "train" / "class3").mkdir()
    with pytest.raises(SourceError, match=f"{tmp_path / 'src' / 'train' / 'class3'}: class folder without images"):
        _prepare(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_class_list_entry_missing_from_the_source_names_entry_and_list(tmp_path):
    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=3, per_class=2))
    (tmp_path / "list.txt").write_text("class0\nn09999999\n")
    with pytest.raises(SourceError, match=rf"class list {tmp_path / 'list.txt'}: classes \['n09999999'\] are not in"):
        _prepare(tmp_path / "src", tmp_path / "out", class_list=str(tmp_path / "list.txt"))


def test_label_outside_the_source_class_names_names_the_file(tmp_path):
    data = synthetic_classes(num_classes=3, per_class=2)
    data.labels[4] = 9
    path = write_npz(tmp_path / "src", "train", data)
    with pytest.raises(SourceError, match=f"{path}: label 9 at index 4 is outside 0..2"):
        _prepare(tmp_path / "src", tmp_path / "out")


def test_undecodable_source_image_names_the_file_and_leaves_no_manifest(tmp_path):
    write_image_folder(tmp_path / "src", "train", synthetic_classes(num_classes=2, per_class=3))
    bad = tmp_path / "src" / "train" / "class1" / "img0004.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(SourceError, match=f"{bad}: not a decodable image"):
        _prepare(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_failed_rerun_over_a_prepared_dataset_leaves_no_stale_manifest(tmp_path):
    write_image_folder(tmp_path / "src", "train", synthetic_classes(num_classes=2, per_class=3))
    _prepare(tmp_path / "src", tmp_path / "out")
    Image.fromarray(np.full((12, 12), 200, np.uint8)).save(tmp_path / "src" / "train" / "class0" / "img0000.png")
    (tmp_path / "src" / "train" / "class1" / "img0005.png").write_bytes(b"broken")
    with pytest.raises(SourceError):
        _prepare(tmp_path / "src", tmp_path / "out")  # class 0's shard changed, class 1 fails
    assert not (tmp_path / "out" / "manifest.parquet").exists()


class _RunsCode:
    """Pickles as a call of ``function(argument)``, as a crafted file would."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("payload, forbidden", [(lambda marker: _RunsCode(os.system, f"touch {marker}"), f"{os.name}.system"),
                                                (lambda marker: _RunsCode(eval, f"open({str(marker)!r}, 'w')"),
                                                 "builtins.eval")], ids=["os.system", "eval"])
@pytest.mark.parametrize("file", ["data_batch_1", "batches.meta"])
def test_cifar_pickle_that_would_run_code_is_refused_naming_file_and_global_and_nothing_runs(tmp_path, payload,
                                                                                            forbidden, file):
    d = write_cifar10(tmp_path / "src", *(synthetic_classes(num_classes=10, per_class=2, size=32, channels=3),) * 2)
    marker = tmp_path / "payload-ran"
    crafted = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"label_names": [b"x"] * 10,
               b"batch_label": payload(marker)}
    (d / file).write_bytes(pickle.dumps(crafted, protocol=4))
    assert not marker.exists()
    with pytest.raises(SourceError, match=rf"{re.escape(str(d / file))}: refused to unpickle the global "
                                          rf"{re.escape(forbidden)}: a CIFAR python pickle holds only"):
        _prepare(tmp_path / "src", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out" / "manifest.parquet").exists()
    pickle.loads((d / file).read_bytes())  # the same file through pickle.load runs its payload: the test can fail
    assert marker.exists()


def test_images_of_different_sizes_without_size_option_name_the_file(tmp_path):
    # grayscale files, so one channel
    write_image_folder(tmp_path / "src", "train", synthetic_classes(num_classes=1, per_class=2), sizes=[(12, 12), (14, 12)])
    bad = tmp_path / "src" / "train" / "class0" / "img0001.png"
    with pytest.raises(SourceError, match=f"{bad}: image is 12x14x1, others are 12x12x1"):
        _prepare(tmp_path / "src", tmp_path / "out", image_format="png")


def test_destination_that_is_not_writable_fails_before_any_work(tmp_path):
    write_npz(tmp_path / "src", "train", synthetic_classes(num_classes=2, per_class=2))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match=f"{tmp_path / 'afile' / 'ds'}: destination is not writable"):
        _prepare(tmp_path / "src", tmp_path / "afile" / "ds")


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(ManifestError, match="no manifest .*pipeline/prepare.py"):
        read_manifest(str(tmp_path))


def test_damaged_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match=f"{tmp_path / 'manifest.parquet'}: not a readable manifest"):
        read_manifest(str(tmp_path))


def test_streamed_read_of_chosen_positions_equals_the_decoded_class(prepared):
    root, _ = prepared
    reader = ClassShardReader(str(root))
    whole = reader.read_class("train", 1)
    assert (reader.read_samples("train", 1, [5, 0, 3, 3]) == whole[[5, 0, 3, 3]]).all()
    with pytest.raises(IndexError, match="class 1 of split 'train' has 6 samples, position 6"):
        reader.read_samples("train", 1, [6])


def test_png_encoder_round_trips(tmp_path):
    pixels = np.random.RandomState(0).randint(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(pixels, "png")))), pixels)
