"""pipeline/evaluation/training.py: the fast modes change the arithmetic, never the recipe."""
import dataclasses

import pytest
import torch
from conftest import synthetic_classes

from m3d_condense.pipeline.config.loader import load_config
from m3d_condense.pipeline.config.schema import DataConfig, EvalConfig, RunConfig
from m3d_condense.pipeline.evaluation.training import COMPILE_AUTO_STEPS, eval_compiles, train_and_test


@pytest.fixture(scope="module")
def problem():
    data = synthetic_classes(num_classes=4, per_class=20, size=12, channels=1)
    spec = DataConfig(num_classes=4, channels=1, image_size=[12, 12], mean=[0.4], std=[0.25])
    # 80 images in batches of 32: a ragged last batch, CutMix on about half of them.
    return data, RunConfig(data=spec, eval=EvalConfig(epochs=3, batch_size=32, test_every=1, compile=False))


def run(problem, **kw):
    """Train and test with the evaluation keys ``kw`` changed."""
    data, cfg = problem
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **kw))
    return train_and_test(data.images.float() / 255, data.labels, data, "convnet3", cfg, seed=7)


def test_compiled_evaluation_follows_the_eager_losses_to_float_rounding(problem):
    eager, compiled = run(problem), run(problem, compile=True)
    assert len(eager.losses) == 3 and eager.losses[0] > eager.losses[-1]  # it trains
    torch.testing.assert_close(torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=1e-4, atol=1e-5)


def test_bf16_evaluation_tracks_the_fp32_losses_but_changes_the_arithmetic(problem):
    fp32, bf16 = run(problem), run(problem, precision="bf16")
    torch.testing.assert_close(torch.tensor(bf16.losses), torch.tensor(fp32.losses), rtol=0.05, atol=0.02)
    assert bf16.losses != fp32.losses


def test_eval_compile_auto_compiles_long_evaluations_only(monkeypatch):
    from m3d_condense.pipeline.method import compute

    monkeypatch.setattr(compute, "can_compile", lambda: True)
    def compiles(*overrides: str) -> bool:  # digits: 10 classes x 4 decoded images, batch 64 -> 1 step per epoch
        return eval_compiles(load_config("digits", list(overrides)), images_per_class=4)

    assert not compiles(f"eval.epochs={COMPILE_AUTO_STEPS - 1}")
    assert compiles(f"eval.epochs={COMPILE_AUTO_STEPS}")
    assert not compiles("eval.compile=false", "eval.epochs=5000")
    assert compiles("eval.compile=true", "eval.epochs=1")
    monkeypatch.setattr(compute, "can_compile", lambda: False)
    assert not compiles("eval.epochs=5000")


def test_the_test_pass_bounds_its_batch_by_pixels_so_224px_sets_fit_in_memory():
    """1000 images of 224 px through ResNetAP-10 held ~24 GiB at once (more than a 23 GiB
    machine has): the test forward now takes at most TEST_PIXELS pixels per batch."""
    from m3d_condense.pipeline.data import LabeledImages
    from m3d_condense.pipeline.evaluation.training import TEST_PIXELS, test_accuracy

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(len(x))
            return torch.zeros(len(x), 10)

    cfg = load_config("imagenet10", ["ipc=1"])
    test = LabeledImages(torch.zeros(100, 3, 224, 224, dtype=torch.uint8), torch.zeros(100, dtype=torch.long),
                         [str(i) for i in range(10)])
    assert test_accuracy(Recorder(), test, cfg, torch.device("cpu")) == 1.0
    per = TEST_PIXELS // (224 * 224)
    assert seen == [per, per, 100 - 2 * per]
    small = LabeledImages(torch.zeros(1500, 3, 32, 32, dtype=torch.uint8), torch.zeros(1500, dtype=torch.long),
                          [str(i) for i in range(10)])
    seen.clear()
    test_accuracy(Recorder(), small, load_config("cifar10"), torch.device("cpu"))
    assert seen == [1000, 500]  # 32 px sets keep their 1000 images per forward
