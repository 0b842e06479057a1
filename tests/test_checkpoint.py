"""pipeline/orchestration/run_store.py: what a resume reads, and the run state in run.json."""
import torch

from m3d_condense.pipeline.config.schema import RunConfig
from m3d_condense.pipeline.orchestration import run_store as checkpoint
from m3d_condense.pipeline.orchestration.run_store import RunState, RunStore, slice_classes

IPC = 2


def _slice(classes: list[int]) -> dict:
    """A checkpoint slice whose image rows hold their class index as pixel values."""
    images = torch.stack([torch.full((1, 4, 4), float(c)) for c in classes for _ in range(IPC)])
    return {"classes": classes, "iteration": 6, "images": images, "momentum": -images, "times": [0, 5],
            "losses": torch.arange(2 * len(classes), dtype=torch.float32).view(2, len(classes))}


def test_a_worker_reads_only_the_slices_that_hold_its_classes_whatever_the_new_split(tmp_path, monkeypatch):
    store = RunStore(str(tmp_path))
    splits = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    rels = [store.write_checkpoint_slice(6, s, _slice(s)) for s in splits]
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
    assert slice_classes("checkpoints/it0000500/classes-00012-00024.pt") == (12, 24)
