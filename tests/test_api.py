"""The library API: condense() on torchvision-style, tensor, Hugging Face and array datasets
(real runs on tiny data), resuming by content, Ray workers, and evaluate() on any set."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from m3d_condense import SyntheticSet, condense, evaluate
from m3d_condense.pipeline.config.schema import ConfigError
from m3d_condense.pipeline.data.arrays import DatasetFormatError, dataset_arrays

FAST = {"iterations": 3, "batch_real": 4, "encoder": {"width": 8}, "log_every": 1, "diagnostics": {"moments": False}}
NAMES = ["cat", "dog", "owl"]


def _pixels(n=36, size=8, channels=3, seed=0):
    g = np.random.default_rng(seed)
    y = np.arange(n) % len(NAMES)
    x = g.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    x[..., 0] = (x[..., 0] // 4 + 60 * y[:, None, None]).astype(np.uint8)  # classes differ a little
    return x, y


class PILDataset(torch.utils.data.Dataset):
    """A torchvision-style dataset (``classes``, ``__getitem__`` -> (PIL image, int)), built here."""

    classes = NAMES

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        return Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x), int(self.y[i])


class TensorDataset(PILDataset):
    """As torchvision with transform=ToTensor(): float (C, H, W) in [0, 1]."""

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]).permute(2, 0, 1).float() / 255, torch.tensor(self.y[i])


def test_condense_a_torchvision_style_dataset_returns_its_set_and_a_rerun_returns_the_same(tmp_path):
    x, y = _pixels()
    syn = condense(PILDataset(x, y), ipc=1, out_dir=str(tmp_path), progress=False, backend="local", **FAST)
    assert isinstance(syn, SyntheticSet) and syn.class_names == NAMES and syn.labels.tolist() == [0, 1, 2]
    assert syn.images.shape == (3, 3, 8, 8) and syn.factor == 2
    (data_dir,) = (tmp_path / "datasets").iterdir()  # written once, named by its content
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name != "datasets"]
    assert run_dir.name.startswith(f"custom_{data_dir.name}_m3d_gaussian_ipc1_s0")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == 3 and "eval" not in summary
    again = condense(PILDataset(x, y), ipc=1, out_dir=str(tmp_path), progress=False, backend="local", **FAST)
    assert torch.equal(again.images, syn.images) and len(list((tmp_path / "datasets").iterdir())) == 1
    datasets = pytest.importorskip("datasets")  # the same images as a Hugging Face dataset: the same run
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    hf = datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in x], "label": y.tolist()}, features=features)
    from_hf = condense(hf, ipc=1, out_dir=str(tmp_path), progress=False, backend="local", **FAST)
    assert torch.equal(from_hf.images, syn.images) and len(list((tmp_path / "datasets").iterdir())) == 1


def test_tensor_hugging_face_and_array_inputs_read_as_the_same_images_as_pil():
    x, y = _pixels()
    reference = dataset_arrays(PILDataset(x, y))
    for given in (TensorDataset(x, y), (x, y)):
        gx, gy, names = dataset_arrays(given, None if isinstance(given, PILDataset) else NAMES)
        assert np.array_equal(gx, reference[0]) and np.array_equal(gy, reference[1]) and names == NAMES
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    hf = datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in x], "label": y.tolist()}, features=features)
    for form in (hf, hf.with_format("torch")):
        hx, hy, names = dataset_arrays(form)
        assert np.array_equal(hx, x) and np.array_equal(hy, y) and names == NAMES


def test_grayscale_images_keep_one_channel():
    x, y = _pixels(channels=1)
    gx, _, _ = dataset_arrays(PILDataset(x, y))
    assert gx.shape == (36, 8, 8, 1) and np.array_equal(gx, x)


def test_a_dataset_whose_images_differ_in_size_is_refused_naming_the_item():
    x, y = _pixels()
    items = [(Image.fromarray(i), int(c)) for i, c in zip(x, y, strict=True)]
    items[5] = (Image.fromarray(np.zeros((9, 9, 3), np.uint8)), 0)
    with pytest.raises(DatasetFormatError, match=r"dataset\[5\]: image is \(9, 9, 3\)"):
        dataset_arrays(items)
    with pytest.raises(DatasetFormatError, match=r"dataset\[0\]: expected \(image, label\) or a dict"):
        dataset_arrays([object()])


def test_condense_with_a_test_dataset_evaluates_and_evaluate_scores_any_set_the_same_way(tmp_path):
    x, y = _pixels()
    tx, ty = _pixels(n=30, seed=1)
    syn = condense((x, y), ipc=1, test_dataset=(tx, ty), class_names=NAMES, out_dir=str(tmp_path), progress=False,
                   backend="local", eval={"runs": 1, "epochs": 2, "test_every": 1}, **FAST)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name != "datasets"]
    in_run = json.loads((run_dir / "summary.json").read_text())["eval"]
    assert in_run["epochs"] == 2 and len(in_run["runs"]) == 1
    # The same set and test split through evaluate(): the same protocol, so the same accuracy.
    (data_dir,) = (tmp_path / "datasets").iterdir()
    records = evaluate(str(run_dir), str(data_dir), runs=1, epochs=2, progress=False, eval={"test_every": 1})
    assert records[0]["runs"] == in_run["runs"] and records[0]["arch"] == "convnet3"
    # Real images (a coreset, another method's output) from arrays, and a set in memory.
    real = evaluate((x[:6], y[:6]), PILDataset(tx, ty), runs=2, epochs=1, progress=False)
    assert len(real[0]["runs"]) == 2 and all(0 <= a <= 1 for a in real[0]["runs"])
    assert evaluate(syn, (tx, ty), runs=1, epochs=2, progress=False, eval={"test_every": 1})[0]["runs"] == in_run["runs"]


def test_evaluate_reads_the_test_split_of_an_npz_data_root(tmp_path):
    from conftest import write_npz

    from m3d_condense.pipeline.data import LabeledImages

    tx, ty = _pixels(n=30, seed=1)
    for split in ("train", "test"):
        write_npz(tmp_path, split, LabeledImages(torch.from_numpy(tx).permute(0, 3, 1, 2), torch.from_numpy(ty), NAMES))
    x, y = _pixels()
    from_root = evaluate((x[:6], y[:6]), str(tmp_path), runs=1, epochs=1, progress=False)
    assert from_root[0]["runs"] == evaluate((x[:6], y[:6]), (tx, ty), runs=1, epochs=1, progress=False)[0]["runs"]


def test_evaluate_refuses_a_training_set_with_other_classes_than_the_test_set():
    x, y = _pixels()
    with pytest.raises(ConfigError, match="the training set has 2 classes, the test set 3"):
        evaluate(SyntheticSet(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), 1, ["a", "b"]), (x, y), runs=1, epochs=1,
                 progress=False)


def test_evaluate_refuses_training_images_of_another_shape_than_the_test_images_naming_both():
    x, y = _pixels(channels=3)
    gray = SyntheticSet(torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]), 1, NAMES)
    with pytest.raises(ConfigError, match="the training images are 1x8x8, the test images 3x8x8"):
        evaluate(gray, (x, y), runs=1, epochs=1, progress=False)
    small = SyntheticSet(torch.rand(3, 3, 6, 6), torch.tensor([0, 1, 2]), 1, NAMES)
    with pytest.raises(ConfigError, match="the training images are 3x6x6, the test images 3x8x8"):
        evaluate(small, (x, y), runs=1, epochs=1, progress=False)


def test_eval_runs_without_a_test_dataset_is_a_clear_error(tmp_path):
    x, y = _pixels()
    with pytest.raises(ConfigError, match="eval.runs > 0 needs test_dataset"):
        condense((x, y), ipc=1, out_dir=str(tmp_path), progress=False, eval={"runs": 1}, **FAST)


def test_condense_with_two_ray_workers_gives_the_set_of_one_in_process_worker(ray_head, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative out_dir: the actors' working directory is not this one
    x, y = _pixels()
    args = dict(ipc=1, class_names=NAMES, out_dir="runs", progress=False, device="cpu", **FAST)
    local = condense((x, y), run_name="local", backend="local", **args)
    on_ray = condense((x, y), run_name="ray", backend="ray", workers=2, ray={"address": ray_head[0]}, **args)
    assert torch.equal(on_ray.images, local.images)
    assert sorted(p.name for p in (tmp_path / "runs" / "ray" / "synthetic").iterdir()) == [
        "classes-00000-00001.pt", "classes-00002-00002.pt", "index.json"]


def _image_folder(root, x, y, split):
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        (root / split / NAMES[c]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / split / NAMES[c] / f"{i:03d}.png")


def test_the_evaluation_command_scores_an_image_folder_against_an_image_folder(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    x, y = _pixels()
    tx, ty = _pixels(n=30, seed=1)
    _image_folder(tmp_path / "theirs", x[:6], y[:6], "train")
    _image_folder(tmp_path / "real", tx, ty, "test")
    (tmp_path / "real" / "train").mkdir()
    for c in NAMES:
        (tmp_path / "real" / "train" / c).mkdir()
    cmd = [sys.executable, str(REPO / "pipeline" / "eval_set.py"), str(tmp_path / "theirs"), str(tmp_path / "real"),
           "--no-progress", "--out", str(tmp_path / "r.json"), "eval.runs=2", "eval.epochs=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "r.json").read_text())
    assert len(records[0]["runs"]) == 2 and proc.stdout.startswith("convnet3: ")
    # The same through the API, from arrays: the same protocol and seeds, so the same accuracies.
    assert evaluate((x[:6], y[:6]), (tx, ty), runs=2, epochs=1, progress=False)[0]["runs"] == \
        records[0]["runs"]
    bad = subprocess.run([*cmd[:2], str(tmp_path / "missing"), *cmd[3:]], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "missing" in bad.stderr


def test_the_readme_python_example_runs_as_written_on_a_small_torchvision_style_dataset(tmp_path, monkeypatch):
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    block = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    monkeypatch.chdir(tmp_path)
    x, y = _pixels(n=150)
    tx, ty = _pixels(n=30, seed=1)
    scope = {"train": PILDataset(x, y), "test": PILDataset(tx, ty)}
    exec(compile(block, "README.md (Python API)", "exec"), scope)
    syn = scope["syn"]
    assert syn.images.shape == (30, 3, 8, 8) and len(syn) == 120 and syn.class_names == NAMES
    assert sorted(p.name for p in (tmp_path / "condensed_set" / "train").iterdir()) == sorted(NAMES)
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "datasets"]
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 500


SCRIPT = """
import numpy as np
from m3d_condense import condense

def main():
    g = np.random.default_rng(0)
    x, y = g.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8), np.arange(60) % 3
    syn = condense((x, y), ipc=1, out_dir="runs", progress=False, backend="local", iterations=2, batch_real=4,
                   encoder={"width": 8}, diagnostics={"moments": False}, data={"read_workers": 2})
    print("condensed", tuple(syn.images.shape))
"""


@pytest.mark.parametrize("guarded", [True, False])
def test_a_script_calling_condense_needs_the_main_guard_and_is_told_so(tmp_path, guarded):
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(SCRIPT + ('if __name__ == "__main__":\n    main()\n' if guarded else "main()\n"))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if guarded:  # the decoding processes re-import the script, and the guard keeps them from condensing
        assert proc.returncode == 0 and "condensed (3, 3, 8, 8)" in proc.stdout, proc.stderr[-3000:]
    else:
        assert proc.returncode != 0
        assert "condense() was called at the top level of a script that a worker process re-imports" in proc.stderr
        assert 'a process decoding the train shards died. Called from a script? Put the call under `if __name__' \
            in proc.stderr
