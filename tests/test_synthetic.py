"""The stored synthetic set: slices plus an index, one loader for the whole set or some classes,
legacy synthetic.pt, clear errors, the Dataset view, and training from the stored form."""
import io
import json

import pytest
import torch

from m3d_condense.models import decode, decode_rows
from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import ConfigError
from m3d_condense.pipeline.data import LabeledImages, storage
from m3d_condense.pipeline.evaluation.training import train_and_test
from m3d_condense.pipeline.results.synthetic import SyntheticSet, SyntheticSetError, training_size, write_index

NAMES = [f"c{i}" for i in range(6)]


def _set(classes, ipc=2, factor=2, size=8, seed=0) -> SyntheticSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(ipc)
    return SyntheticSet(torch.rand(len(labels), 3, size, size, generator=g), labels, factor, NAMES)


def _store_in_three_slices(run):
    parts = [_set([0, 1], seed=1), _set([2, 3], seed=2), _set([4, 5], seed=3)]
    entries = [p.write_slice(str(run), sorted(set(p.labels.tolist()))) for p in parts]
    write_index(str(run), entries[::-1], 2, NAMES)  # any order: the index sorts them
    return parts


def test_slices_written_by_several_workers_load_back_as_one_set_in_class_order(tmp_path):
    parts = _store_in_three_slices(tmp_path)
    syn = SyntheticSet.load(tmp_path)
    assert torch.equal(syn.images, torch.cat([p.images for p in parts]))
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and syn.factor == 2 and syn.class_names == NAMES
    index = json.loads((tmp_path / "synthetic" / "index.json").read_text())
    assert [s["file"] for s in index["slices"]] == ["classes-00000-00001.pt", "classes-00002-00003.pt",
                                                    "classes-00004-00005.pt"]
    assert training_size(str(tmp_path)) == 12 * 4 == len(syn)


def test_loading_some_classes_reads_only_the_slices_that_hold_them(tmp_path, monkeypatch):
    parts = _store_in_three_slices(tmp_path)
    read = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda url: read.append(url) or real_read(url))
    syn = SyntheticSet.load(tmp_path, classes=[3])
    assert [u.rsplit("/", 1)[-1] for u in read if u.endswith(".pt")] == ["classes-00002-00003.pt"]
    assert syn.labels.tolist() == [3, 3] and torch.equal(syn.images, parts[1].images[2:])


def test_a_run_directory_from_before_the_slices_still_loads_from_synthetic_pt(tmp_path):
    old = _set([0, 1, 2, 3, 4, 5])
    torch.save({"images": old.images, "labels": old.labels, "factor": 2, "class_names": NAMES},
               tmp_path / "synthetic.pt")
    syn = SyntheticSet.load(tmp_path)
    assert torch.equal(syn.images, old.images) and syn.class_names == NAMES
    assert SyntheticSet.load(tmp_path, classes=[5]).labels.tolist() == [5, 5]
    assert training_size(str(tmp_path)) == 48


def test_a_missing_set_a_missing_slice_and_a_corrupt_index_are_errors_naming_the_file(tmp_path):
    with pytest.raises(SyntheticSetError, match="synthetic/index.json is missing"):
        SyntheticSet.load(tmp_path)
    _store_in_three_slices(tmp_path)
    (tmp_path / "synthetic" / "classes-00002-00003.pt").unlink()
    with pytest.raises(SyntheticSetError, match=r"classes-00002-00003\.pt: listed in the synthetic set's index"):
        SyntheticSet.load(tmp_path)
    (tmp_path / "synthetic" / "index.json").write_text("{not json")
    with pytest.raises(SyntheticSetError, match=r"index\.json: not valid JSON"):
        SyntheticSet.load(tmp_path)


def test_a_truncated_slice_is_an_error_naming_it(tmp_path):
    _store_in_three_slices(tmp_path)
    path = tmp_path / "synthetic" / "classes-00004-00005.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SyntheticSetError, match=r"classes-00004-00005\.pt: unreadable"):
        SyntheticSet.load(tmp_path)


def test_as_a_dataset_it_yields_the_decoded_images_and_their_labels():
    syn = _set([0, 1, 2], factor=2)
    images, labels = syn.decoded()
    assert len(syn) == len(images) == 24
    for i in (0, 5, 23, -1):
        x, y = syn[i]
        assert torch.equal(x, images[i]) and y == int(labels[i])
    with pytest.raises(IndexError):
        syn[24]
    loaded = next(iter(torch.utils.data.DataLoader(syn, batch_size=24)))
    assert torch.equal(loaded[0], images) and torch.equal(loaded[1], labels)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_decoding_chosen_rows_equals_decoding_everything_then_choosing(factor):
    images = torch.rand(5, 3, 10, 10)
    rows = torch.randint(0, 5 * factor * factor, (9,))
    assert torch.equal(decode_rows(images, rows, factor), decode(images, factor)[rows])


def test_training_on_the_stored_set_decoded_per_batch_equals_training_on_the_decoded_set():
    cfg = load_config("digits", ["eval.epochs=2", "eval.test_every=1", "eval.batch_size=16"])
    syn = _set(list(range(10)), ipc=2, factor=2, size=16)
    syn = SyntheticSet(syn.images[:, :1], syn.labels, 2, [str(i) for i in range(10)])
    g = torch.Generator().manual_seed(1)
    test = LabeledImages(torch.randint(0, 256, (50, 1, 16, 16), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (50,), generator=g), syn.class_names)
    images, labels = syn.decoded()
    whole = train_and_test(images, labels, test, "convnet3", cfg, seed=3)
    per_batch = train_and_test(syn.images, syn.labels, test, "convnet3", cfg, seed=3, factor=2)
    assert per_batch.losses == whole.losses and per_batch.curve == whole.curve


def test_save_then_load_round_trips_through_an_object_store(s3_bucket):
    syn = _set([0, 1, 2, 3, 4, 5], factor=1)
    syn.save(f"{s3_bucket}/roundtrip")
    back = SyntheticSet.load(f"{s3_bucket}/roundtrip")
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels) and back.factor == 1
    raw = storage.read_bytes(f"{s3_bucket}/roundtrip/synthetic/classes-00000-00005.pt")
    assert set(torch.load(io.BytesIO(raw), weights_only=True)) == {"images", "labels", "classes", "factor"}


def _stats_set(factor=2):
    syn = _set([0, 1, 2, 3, 4, 5], ipc=2, factor=factor)
    return SyntheticSet(syn.images, syn.labels, factor, NAMES, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])


def test_training_batches_cover_every_decoded_image_once_per_epoch_normalised_with_the_sets_statistics():
    syn = _stats_set()
    plain = {"augment": {"flip": False, "color": False, "geometric": ["crop"], "crop_ratio": 0.0}, "cutmix_prob": 0.0}
    batches = syn.batches(10, eval=plain)
    assert len(batches) == 5  # 48 decoded images in batches of 10
    xs, ys = zip(*batches, strict=True)
    images, labels = syn.decoded()
    normalised = (images - torch.tensor(syn.mean).view(1, 3, 1, 1)) / torch.tensor(syn.std).view(1, 3, 1, 1)
    got = torch.cat(xs)
    order = [int(torch.nonzero((normalised - x).abs().flatten(1).amax(1) < 1e-5)[0]) for x in got]
    assert sorted(order) == list(range(48)) and torch.equal(torch.cat(ys), labels[order])


def test_training_batches_augment_like_the_evaluation_reproducibly_and_differ_between_epochs():
    syn = _stats_set()
    first, again = syn.batches(16, seed=4), syn.batches(16, seed=4)
    epoch1 = [x for x, _ in first]
    assert all(torch.equal(a, b) for a, b in zip(epoch1, [x for x, _ in again], strict=True))
    epoch2 = [x for x, _ in first]
    assert not torch.equal(epoch1[0], epoch2[0])
    assert first.cfg.eval.augment.op_per == "batch" and first.cfg.eval.augment.flip  # the released DSA


def test_training_batches_with_cutmix_give_label_probabilities_mixed_on_about_half_the_batches():
    syn = _stats_set(factor=1)
    syn = SyntheticSet(torch.rand(600, 3, 8, 8), torch.arange(6).repeat_interleave(100), 1, NAMES, syn.mean, syn.std)
    ys = [y for _, y in syn.batches(8, cutmix=True, seed=1)]
    assert all(y.shape == (8, 6) and torch.allclose(y.sum(1), torch.ones(8)) for y in ys)
    mixed = sum(bool((y.max(1).values < 1).any()) for y in ys) / len(ys)
    assert 0.3 < mixed < 0.7, mixed  # eval.cutmix_prob = 0.5


def test_training_batches_need_a_normalisation_from_the_set_or_the_preset():
    syn = _set([0, 1, 2, 3, 4, 5])  # carries no mean/std
    with pytest.raises(ConfigError, match="has no normalisation and the set carries none"):
        syn.batches(8)
    x, _ = next(iter(SyntheticSet(syn.images, syn.labels, 2, [str(i) for i in range(10)]).batches(8, preset="cifar10")))
    assert x.shape == (8, 3, 8, 8)


def test_a_stored_set_carries_the_normalisation_of_its_real_data(tmp_path):
    syn = _stats_set()
    syn.save(str(tmp_path))
    back = SyntheticSet.load(tmp_path)
    assert back.mean == syn.mean and back.std == syn.std
