"""Herding selection and the moment diagnostics (paper Table 1)."""
import json

import torch
from conftest import synthetic_classes

from m3d_condense.pipeline.cli import main
from m3d_condense.pipeline.config.schema import DataConfig, EncoderConfig, RunConfig
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.method.baselines import herding, herding_order
from m3d_condense.pipeline.method.diagnostics import moment_report
from m3d_condense.pipeline.method.spec import CondenseSpec
from m3d_condense.pipeline.results.synthetic import SyntheticSet, is_stored

TINY = CondenseSpec.of(RunConfig(data=DataConfig(num_classes=4, channels=1, image_size=[12, 12], mean=[0.4],
                                                 std=[0.25]), encoder=EncoderConfig(width=16)))


def test_herding_keeps_the_running_mean_closer_to_the_class_mean_than_random_picks():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(500, 16, generator=g) * torch.linspace(0.2, 3, 16)
    order = herding_order(f, 10)
    assert len(set(order)) == 10
    assert order[0] == int((f - f.mean(0)).pow(2).sum(1).argmin())  # the first pick is the point nearest the mean
    herded = (f[order].mean(0) - f.mean(0)).norm()
    random = torch.stack([(f[torch.randperm(500, generator=g)[:10]].mean(0) - f.mean(0)).norm() for _ in range(50)])
    assert herded < random.min()


def test_herding_returns_ipc_real_images_per_class(tiny_data):
    cache = ClassCache.from_labeled(tiny_data, range(4))
    images, labels = herding(cache, range(4), 3, TINY, torch.device("cpu"))
    assert images.shape == (12, 1, 12, 12) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    real = (tiny_data.images.float() / 255).flatten(1)
    assert all(((real - img.flatten()).abs().sum(1) < 1e-6).any() for img in images)  # each is a real image


def test_moment_gaps_are_small_for_real_images_and_large_for_noise(tiny_data):
    cache = ClassCache.from_labeled(tiny_data, range(4))
    held_out = synthetic_classes(num_classes=4, per_class=40, seed=9)
    noise = torch.rand(160, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    sets = {"real": (held_out.images.float() / 255, held_out.labels), "noise": (noise, held_out.labels)}
    gaps = moment_report(sets, cache, range(4), TINY, encoders=2,
                         real_per_class=40, device=torch.device("cpu"))
    assert set(gaps["real"]) == {"mean", "variance", "skewness", "kurtosis"}
    assert gaps["real"]["mean"] < 0.5 * gaps["noise"]["mean"]
    assert gaps["real"]["variance"] < gaps["noise"]["variance"]


def test_herding_method_and_moment_diagnostics_in_a_run(tmp_path):
    common = [f"out_dir={tmp_path}", "eval.runs=0", "encoder.width=16", "diagnostics.encoders=1"]
    assert main(["digits", "method=herding", "run_name=h", *common]) == 0
    h = json.loads((tmp_path / "h" / "summary.json").read_text())
    syn = SyntheticSet.load(tmp_path / "h")
    assert h["method"] == "herding" and syn.images.shape[0] == 10 and syn.factor == 1
    assert set(h["moments"]) == {"synthetic"}
    assert main(["digits", "run_name=m", "iterations=20", "batch_real=16", *common]) == 0
    m = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert set(m["moments"]) == {"synthetic", "initial"} and m["moments"]["synthetic"]["mean"] > 0


def test_init_method_stores_exactly_the_set_m3ds_first_iteration_starts_from_at_its_factor(tmp_path):
    from m3d_condense.pipeline.config.loader import load_config
    from m3d_condense.pipeline.data.dataset import open_class_cache
    from m3d_condense.pipeline.method.engine import Condenser

    common = [f"out_dir={tmp_path}", "run_name=i", "eval.runs=0", "encoder.width=16", "diagnostics.moments=false"]
    assert main(["digits", "method=init", *common]) == 0
    stored = SyntheticSet.load(tmp_path / "i")
    s = json.loads((tmp_path / "i" / "summary.json").read_text())
    cfg = load_config("digits", ["encoder.width=16"])
    classes = list(range(cfg.data.num_classes))
    start = Condenser(CondenseSpec.of(cfg), open_class_cache(cfg.data, classes, torch.device("cpu")), classes,
                      torch.device("cpu")).images
    assert s["method"] == "init" and s["iterations"] == 0 and stored.factor == cfg.factor == 2
    assert torch.equal(stored.images, start.detach())  # the condensation's own start, not a re-draw
    assert stored.decoded()[0].shape[0] == len(classes) * cfg.ipc * cfg.factor ** 2


def test_grid_cell_a_variants_own_keys_win_over_the_overrides_every_cell_gets():
    from m3d_condense.pipeline.config.loader import load_config
    from m3d_condense.pipeline.results.grid import cell_config

    keys = cell_config("m3d", ["iterations=7", "lr=0.5"], 1, 0, "runs", "x", ["iterations=40", "eval.epochs=3"])
    cfg = load_config("digits", keys)
    assert (cfg.iterations, cfg.lr, cfg.eval.epochs, cfg.method, cfg.kernel) == (7, 0.5, 3, "m3d", "gaussian")


def test_whole_method_trains_on_every_training_image_and_stores_no_copy(tmp_path):
    from m3d_condense.pipeline.config.loader import load_config
    from m3d_condense.pipeline.data.dataset import load_split

    common = [f"out_dir={tmp_path}", "run_name=w", "method=whole", "eval.runs=1", "eval.epochs=1", "encoder.width=16"]
    assert main(["digits", *common]) == 0
    s = json.loads((tmp_path / "w" / "summary.json").read_text())
    train = load_split(load_config("digits").data, "train")
    assert s["train_images"] == len(train.labels) > 1000 and 0.0 < s["eval"]["accuracy_mean"] <= 1.0
    assert not is_stored(tmp_path / "w") and "moments" not in s
    assert main(["digits", *common, "reevaluate=true"]) == 0  # a rerun reads the training set again
