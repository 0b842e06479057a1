"""The ddranking export read by DD-Ranking itself (the ``ddranking`` package, 0.2.0): its hard-label
evaluator, ``LabelRobustScoreHard``, built on a tiny Tiny-ImageNet-shaped ImageFolder (200 classes,
one 64x64 image each, so nothing is downloaded) and given our images.pt and labels.pt, then our
PNG folder, trains its MLP on them for one epoch and tests it.

ddranking is not a dependency, nor an extra: it pins numpy<2, which recent pyarrow releases (the
project's 26 here) refuse, and its torchvision pulls another torch.
The test skips without it; to run it, use an environment of its own, from the repository root:
``python -m venv /tmp/ddr && /tmp/ddr/bin/pip install ddranking pytest "pyarrow<21" && /tmp/ddr/bin/pip
install --no-deps -e . && /tmp/ddr/bin/python -m pytest -q tests/test_ddranking.py`` (about 30 s)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m3d_condense.pipeline.results.export import export
from m3d_condense.pipeline.results.synthetic import SyntheticSet

ddranking = pytest.importorskip(
    "ddranking", reason="DD-Ranking is not installed (pip install ddranking; it needs numpy<2, so it lives in an "
                        "environment of its own: see this file's docstring)")

CLASSES, SIZE, IPC, FACTOR = 200, 64, 1, 2  # DD-Ranking's TinyImageNet: 200 classes of 64x64


def _tiny_imagenet(root) -> None:
    """root/train/<class>/0.png and root/val/<class>/0.png: the ImageFolder layout DD-Ranking reads
    for TinyImageNet, one random image per class and split."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(CLASSES):
            folder = root / split / f"n{c:05d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / "0.png")


def _evaluator(tmp_path, monkeypatch, ipc: int, train_transform=None):
    from ddranking.metrics import LabelRobustScoreHard, hard_label
    from ddranking.utils import REAL_DATA_ACC_CACHE

    # the full-data accuracy DD-Ranking subtracts comes from its cache (only ResNet-18 for TinyImageNet);
    # what it is does not matter here. The model: its MLP, which CPUs train in seconds.
    monkeypatch.setitem(REAL_DATA_ACC_CACHE, "TinyImageNet-MLP", 50.0)
    # ddranking 0.2.0 appends each run's LRS twice (hard_label.py, compute_metrics), so its results
    # table has columns of two lengths and pandas refuses to build it; keep the records as JSON instead
    monkeypatch.setattr(hard_label, "save_results",
                        lambda results, path: Path(path).write_text(json.dumps(results, default=float)))
    evaluator = LabelRobustScoreHard(
        dataset="TinyImageNet", real_data_path=str(tmp_path / "tiny"), ipc=ipc, model_name="MLP",
        data_aug_func=None, aug_params=None, optimizer="sgd", lr_scheduler="step", step_size=1, num_eval=1,
        im_size=(SIZE, SIZE), num_epochs=1, real_batch_size=256, syn_batch_size=256, num_workers=0,
        custom_train_trans=train_transform, device="cpu", dist=False, random_data_format="tensor",
        random_data_path=str(tmp_path / "random"), eval_full_data=False, save_path=str(tmp_path / "scores.csv"))
    evaluator.test_interval = 1  # test after the one epoch (every 10 epochs by default)
    return evaluator


def test_ddrankings_hard_label_evaluator_trains_on_the_ddranking_export(tmp_path, monkeypatch):
    _tiny_imagenet(tmp_path / "tiny")
    g = torch.Generator().manual_seed(0)
    syn = SyntheticSet(torch.rand(CLASSES * IPC, 3, SIZE, SIZE, generator=g), torch.arange(CLASSES).repeat(IPC),
                       FACTOR, [f"n{c:05d}" for c in range(CLASSES)])
    export(syn, str(tmp_path / "syn"), "ddranking", dataset="TinyImageNet")
    meta = json.loads((tmp_path / "syn" / "ddranking.json").read_text())
    images = torch.load(tmp_path / "syn" / meta["image_tensor"], weights_only=True)
    labels = torch.load(tmp_path / "syn" / meta["hard_labels"], weights_only=True)
    assert images.shape == (CLASSES * meta["images_per_class"], 3, SIZE, SIZE)  # (N x IPC, C, H, W), decoded

    evaluator = _evaluator(tmp_path, monkeypatch, meta["ipc"])  # the random baseline: stored IPC real images per class
    scores = evaluator.compute_metrics(image_tensor=images, hard_labels=labels, syn_lr=0.01)
    assert set(scores) >= {"hard_label_recovery_mean", "improvement_over_random_mean", "label_robust_score_mean"}
    assert all(np.isfinite(v) for v in scores.values())
    drawn = torch.load(tmp_path / "random" / "rdm_data_iter0.pt", weights_only=True)
    assert drawn.shape == (CLASSES * meta["ipc"], 3, SIZE, SIZE)  # IPC real images per class, as told
    # the real images DD-Ranking draws are normalised as our tensor is: same statistics
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    real = np.asarray(Image.open(tmp_path / "tiny" / "train" / "n00000" / "0.png"), dtype=np.float32) / 255
    assert torch.allclose(evaluator.dst_train[0][0], (torch.from_numpy(real).permute(2, 0, 1)[None] - mean)[0] / std[0],
                          atol=1e-6)

    from torchvision import transforms

    export(syn, str(tmp_path / "pngs"), "ddranking", dataset="TinyImageNet", folder=True)
    folder_meta = json.loads((tmp_path / "pngs" / "ddranking.json").read_text())
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(folder_meta["mean"], folder_meta["std"])])
    evaluator = _evaluator(tmp_path, monkeypatch, folder_meta["ipc"], to_tensor)
    scores = evaluator.compute_metrics(image_path=str(tmp_path / "pngs" / folder_meta["image_path"]), syn_lr=0.01)
    assert all(np.isfinite(v) for v in scores.values())
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(tmp_path / "pngs" / folder_meta["image_path"]), transform=to_tensor)
    assert folder.targets == labels.tolist()  # the sorted label folders give our labels, class-major
    assert torch.allclose(torch.stack([folder[i][0] for i in range(len(folder))]), images, atol=0.5 / 255 / 0.224)
