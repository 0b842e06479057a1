"""pipeline/orchestration/run_store.py: what a resume reads, and the run state in run.json."""
import pytest
import torch

from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.orchestration import run_store as checkpoint
from m3d_condense.pipeline.orchestration.run_store import ResumeError, RunState, RunStore
from m3d_condense.pipeline.results.synthetic import SyntheticSet, slice_classes, write_index

IPC = 2


def _slice(classes: list[int]) -> tuple[SyntheticSet, list[int], dict]:
    """A checkpoint slice whose image rows hold their class index as pixel values: the set of
    ``classes``, and the optimiser state (momentum = -images) and loss history stored with it."""
    images = torch.stack([torch.full((1, 4, 4), float(c)) for c in classes for _ in range(IPC)])
    condensed = SyntheticSet(images, torch.tensor(classes).repeat_interleave(IPC), 1, [f"c{i}" for i in range(10)])
    return condensed, classes, {"iteration": 6, "momentum": -images, "times": [0, 5],
                                "losses": torch.arange(2 * len(classes), dtype=torch.float32).view(2, len(classes))}


def test_a_worker_reads_only_the_slices_that_hold_its_classes_whatever_the_new_split(tmp_path, monkeypatch):
    store = RunStore(str(tmp_path))
    splits = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    rels = [store.write_checkpoint_slice(6, *_slice(s)) for s in splits]
    state = RunState.new(RunConfig())
    store.record_checkpoint(state, 6, rels)
    sizes = {rel: (tmp_path / rel).stat().st_size for rel in rels}
    read = []
    original = checkpoint.storage.read_bytes
    monkeypatch.setattr(checkpoint.storage, "read_bytes", lambda url: read.append(url) or original(url))

    same = store.restore(state, [3, 4, 5])  # the same split as the checkpoint: one slice
    assert [r.removeprefix(str(tmp_path) + "/") for r in read] == [rels[1]]
    assert torch.equal(same["images"][:, 0, 0, 0], torch.tensor([3.0, 3, 4, 4, 5, 5]))
    read.clear()
    other = store.restore(state, [2, 3])  # a resume with another worker count: the two slices that hold them
    assert sorted(r.removeprefix(str(tmp_path) + "/") for r in read) == rels[:2]
    assert sum(sizes[r] for r in rels[:2]) < sum(sizes.values()) / 1.5
    assert torch.equal(other["images"][:, 0, 0, 0], torch.tensor([2.0, 2, 3, 3]))
    assert torch.equal(other["momentum"], -other["images"]) and other["losses"].shape == (2, 2)
    assert other["losses"][:, 0].tolist() == [2.0, 5.0]  # class 2 is column 2 of the first slice


def test_slice_names_carry_their_class_range():
    assert slice_classes("checkpoints/it0000500/synthetic/classes-00012-00024.pt") == (12, 24)


def test_a_checkpoint_slice_is_a_set_slice_with_the_optimiser_state_added(tmp_path):
    """One slice format: the checkpoint directory of an iteration loads as that iteration's set."""
    store = RunStore(str(tmp_path))
    condensed, classes, state = _slice([0, 1, 2])
    rel = store.write_checkpoint_slice(6, condensed, classes, state)
    assert rel == "checkpoints/it0000006/synthetic/classes-00000-00002.pt"
    entry = {"file": rel.rsplit("/", 1)[-1], "classes": [0, 2], "rows": 6, "bytes": 0}
    write_index(str(tmp_path / "checkpoints/it0000006"), [entry], 1, condensed.class_names)
    loaded = SyntheticSet.load(str(tmp_path / "checkpoints/it0000006"))
    assert torch.equal(loaded.images, condensed.images) and torch.equal(loaded.labels, condensed.labels)
    assert torch.equal(store.read_checkpoint_slice(rel)["momentum"], -condensed.images)


def test_a_checkpoint_written_before_the_one_slice_format_still_resumes(tmp_path):
    """Run directories of earlier versions hold checkpoints/it<t>/classes-<a>-<b>.pt with the
    engine's state dict and no labels: a resume reads them as before."""
    images = torch.rand(4, 1, 4, 4)
    old = {"images": images, "momentum": -images, "iteration": 6, "classes": [0, 1], "times": [0, 5],
           "losses": torch.ones(2, 2)}
    (tmp_path / "checkpoints/it0000006").mkdir(parents=True)
    torch.save(old, tmp_path / "checkpoints/it0000006/classes-00000-00001.pt")
    store, state = RunStore(str(tmp_path)), RunState.new(RunConfig())
    state.iteration, state.slices = 6, ["checkpoints/it0000006/classes-00000-00001.pt"]
    restored = store.restore(state, [0, 1])
    assert torch.equal(restored["images"], images) and torch.equal(restored["momentum"], -images)


def test_a_set_slice_in_place_of_a_checkpoint_slice_is_refused_naming_it(tmp_path):
    store, state = RunStore(str(tmp_path)), RunState.new(RunConfig())
    condensed, classes, _ = _slice([0, 1])
    entry = condensed.write_slice(str(tmp_path / "checkpoints/it0000006"), classes)
    state.iteration, state.slices = 6, [f"checkpoints/it0000006/synthetic/{entry['file']}"]
    with pytest.raises(ResumeError, match=r"classes-00000-00001\.pt: a set's slice without the optimiser state"):
        store.restore(state, [0, 1])
