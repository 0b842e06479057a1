"""The released code's matching and evaluation semantics, pinned by their observable effects
(SPEC.md "Differentiable siamese augmentation", "Evaluation protocol"; IDC's misc/augment.py,
argument.py, data.py at commit ceac95a)."""
import math

import pytest
import torch
from conftest import synthetic_classes
from omegaconf import OmegaConf

from m3d_condense.models import NUM_UNIFORMS, AugmentSpec, augment
from m3d_condense.models.imagenet_augment import color_jitter, imagenet_augment, lighting, resized_crop, rrc_boxes
from m3d_condense.pipeline.config.loader import compose_config, load_config
from m3d_condense.pipeline.config.schema import AugmentConfig, DataConfig, EvalConfig, RunConfig, released_eval_augment
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.evaluation.training import eval_epochs, imagenet_epochs, train_and_test
from m3d_condense.pipeline.method.engine import initial_images
from m3d_condense.pipeline.method.spec import CondenseSpec
from m3d_condense.pipeline.orchestration.run_store import ResumeError, RunState, RunStore


def _uniforms(n, seed=0):
    return torch.rand(n, NUM_UNIFORMS, generator=torch.Generator().manual_seed(seed))


def _integer_shift(src: torch.Tensor, dst: torch.Tensor, max_shift: int) -> tuple[int, int] | None:
    """The (dy, dx) with dst == src shifted by it (zero fill), or None."""
    h, w = src.shape[-2:]
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            shifted = torch.zeros_like(src)
            shifted[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                src[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            if torch.allclose(dst, shifted, atol=1e-4):
                return dy, dx
    return None


@pytest.mark.parametrize("preset", ["digits", "mnist", "fashion_mnist", "svhn", "cifar10", "cifar100", "tinyimagenet",
                                    "imagewoof", "imagenet10", "imagenet100", "imagenet1k", "custom"])
def test_matching_augmentation_default_is_the_released_color_crop_cutout(preset):
    spec = OmegaConf.to_object(compose_config(preset).augment)  # custom: before a manifest completes it
    assert spec == AugmentConfig() and (spec.flip, spec.color, spec.geometric, spec.cutout) == (False, True, ["crop"], True)


def test_matching_crops_always_and_never_rotates_scales_or_flips():
    """Every draw of the matching spec (colour and cutout off to isolate the geometry) is an
    exact integer translation within round(0.125 W), and over many draws all shifts occur."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16) + 0.5  # no zeros: the fill shows
    spec = AugmentSpec(color=False, cutout=False)
    n = 300
    out = augment(x.expand(n, -1, -1, -1), _uniforms(n), torch.arange(n), spec)
    shifts = [_integer_shift(x[0], out[i], 2) for i in range(n)]
    assert all(s is not None for s in shifts), "a matching draw was not an integer translation"
    assert {s for s in shifts} == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert sum(s == (0, 0) for s in shifts) < n / 10  # crop is not one op among several: it moves nearly always


def test_matching_draws_one_transform_per_class_shared_by_real_and_synthetic():
    x = torch.rand(1, 3, 16, 16).expand(6, -1, -1, -1)
    out = augment(x, _uniforms(2), torch.tensor([0, 0, 0, 1, 1, 1]), AugmentSpec())
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]) and torch.equal(out[3], out[5])
    assert not torch.allclose(out[0], out[3])


def _left_right(x: torch.Tensor) -> torch.Tensor:
    w = x.shape[-1]
    return x[..., : w // 2].mean((1, 2, 3)) - x[..., w // 2:].mean((1, 2, 3))


def test_evaluation_flip_rate_is_one_half_and_independent_of_the_batch_op():
    """A left-dark/right-bright image stays so under crop/scale/rotate; its flip shows in the
    sign of the left-right difference. Per op (chosen per mini-batch) the flip rate is ~0.5."""
    img = torch.cat([-torch.ones(1, 1, 32, 16), torch.ones(1, 1, 32, 16)], dim=-1)
    spec = AugmentSpec(flip=True, color=False, geometric=("crop", "scale", "rotate"), op_per="batch", cutout=False)
    flips = {op: [] for op in range(3)}
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        u = torch.rand(64, NUM_UNIFORMS, generator=g)
        op = min(int(u[0, 3] * 3), 2)
        out = augment(img.expand(64, -1, -1, -1), u, torch.arange(64), spec)
        flips[op] += (_left_right(out) > 0).tolist()
    for op, seen in flips.items():
        assert len(seen) > 64 * 30, f"op {op} was chosen for too few batches"
        assert abs(sum(seen) / len(seen) - 0.5) < 0.03, f"flip rate under op {op}: {sum(seen) / len(seen):.3f}"


def test_evaluation_applies_one_geometric_op_per_mini_batch():
    """op_per=batch: every image of a call gets the op of the first row (with its own
    parameters): the same as forcing every row's op draw to the first row's."""
    x = torch.rand(32, 3, 16, 16)
    u = _uniforms(32, seed=4)
    spec = AugmentSpec(flip=False, color=False, geometric=("crop", "scale", "rotate"), op_per="batch", cutout=False)
    forced = u.clone()
    forced[:, 3] = u[0, 3]
    per_group = AugmentSpec(flip=False, color=False, geometric=("crop", "scale", "rotate"), op_per="group", cutout=False)
    torch.testing.assert_close(augment(x, u, torch.arange(32), spec), augment(x, forced, torch.arange(32), per_group))
    assert not torch.allclose(augment(x, u, torch.arange(32), per_group), augment(x, forced, torch.arange(32), per_group))


@pytest.mark.parametrize("preset,flip", [("mnist", False), ("svhn", False), ("digits", False), ("fashion_mnist", True),
                                         ("cifar10", True), ("cifar100", True)])
def test_evaluation_augmentation_per_dataset_family_is_the_released_one(preset, flip):
    s = load_config(preset).eval
    assert s.recipe == "dsa" and s.cutmix_prob == 0.5 and (s.lr, s.weight_decay, s.batch_size) == (0.01, 5e-4, 64)
    assert s.augment == AugmentConfig(flip=flip, color=True, geometric=["crop", "scale", "rotate"], op_per="batch",
                                      cutout=False)
    if flip:
        assert s.augment == released_eval_augment()


def test_imagenet_evaluation_epochs_follow_idc_table():
    assert imagenet_epochs(90, 100) == 600  # ImageNet-100, IPC 10, factor 3
    assert imagenet_epochs(90, 10) == 1000  # ImageNet-10, IPC 10
    assert imagenet_epochs(180, 100) == 600 and imagenet_epochs(180, 10) == 1000  # IPC 20
    assert [imagenet_epochs(n, 10) for n in (1, 10, 50, 200, 500, 501)] == [3000, 2000, 1500, 1000, 500, 300]
    assert imagenet_epochs(1, 100) == 2000  # int(2/3 * 3000) rounded down to a multiple of 100


@pytest.mark.parametrize("preset,epochs,lr,wd,batch", [("imagenet10", 1000, 0.01, 5e-4, 64),
                                                      ("imagenet100", 600, 0.1, 1e-4, 128)])
def test_imagenet_presets_evaluate_with_the_released_imagenet_recipe(preset, epochs, lr, wd, batch):
    cfg = load_config(preset)
    s = cfg.eval
    assert s.recipe == "imagenet" and s.cutmix_prob == 1.0 and s.epochs is None  # None: IDC's table
    assert (eval_epochs(cfg, cfg.ipc * cfg.factor**2), s.lr, s.weight_decay, s.batch_size) == (epochs, lr, wd, batch)
    assert eval_epochs(cfg, 180) == epochs  # IPC 20: 180 decoded images per class


def test_random_resized_crop_boxes_respect_scale_and_aspect_bounds():
    boxes = rrc_boxes(4000, 224, 224, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    area = h * w / 224**2
    assert area.min() >= 0.49 and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 0.02 and aspect.max() <= 4 / 3 + 0.02
    # torchvision's sampler redraws large areas with a non-square aspect, so the mean is below 0.75
    assert area.mean() == pytest.approx(0.693, abs=0.01)


def test_resized_crop_of_a_quadrant_upsamples_that_quadrant():
    x = torch.zeros(1, 3, 8, 8)
    x[:, :, :4, 4:] = 1.0  # top-right quadrant
    out = resized_crop(x, torch.tensor([[0.0, 4.0, 4.0, 4.0]]), (8, 8))
    torch.testing.assert_close(out, torch.ones(1, 3, 8, 8))
    torch.testing.assert_close(resized_crop(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8)), x)


def test_color_jitter_is_idc_lerp_and_lighting_adds_the_pca_colour():
    x = torch.rand(2, 3, 5, 5)
    only_brightness = torch.tensor([[0.3, 0.0, 0.0], [-0.2, 0.0, 0.0]])
    order = torch.tensor([[0, 1, 2], [2, 1, 0]])
    torch.testing.assert_close(color_jitter(x, only_brightness, order), x * torch.tensor([0.7, 1.2]).view(2, 1, 1, 1))
    alpha = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.0, 0.0]])
    delta = lighting(x, alpha) - x
    assert torch.allclose(delta[1], torch.zeros(3, 5, 5))
    assert torch.allclose(delta[0], delta[0, :, :1, :1].expand(3, 5, 5))  # a constant colour per image
    assert delta[0].abs().max() > 1e-3


def test_imagenet_augmentation_flips_half_of_the_images_and_is_seeded():
    img = torch.cat([torch.zeros(1, 3, 32, 16), torch.ones(1, 3, 32, 16)], dim=-1).expand(2000, -1, -1, -1)
    out = imagenet_augment(img, torch.Generator().manual_seed(0))
    assert abs(float((_left_right(out) > 0).float().mean()) - 0.5) < 0.04
    again = imagenet_augment(img, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_imagenet_recipe_trains_and_is_seeded():
    data = synthetic_classes(num_classes=3, per_class=12, size=16, channels=3)
    spec = DataConfig(num_classes=3, channels=3, image_size=[16, 16], mean=[0.5] * 3, std=[0.25] * 3)
    s = RunConfig(data=spec, eval=EvalConfig(epochs=2, recipe="imagenet", cutmix_prob=1.0, test_every=1, compile=False))
    images = data.images.float() / 255
    a = train_and_test(images, data.labels, data, "convnet3", s, seed=5)
    b = train_and_test(images, data.labels, data, "convnet3", s, seed=5)
    assert a.accuracy == b.accuracy and [acc for _, acc in a.curve] == [acc for _, acc in b.curve]


def _settings(**kw) -> CondenseSpec:
    data = DataConfig(num_classes=4, channels=1, image_size=[12, 12], mean=[0.4], std=[0.25])
    return CondenseSpec.of(RunConfig(**{"data": data, "ipc": 2, "factor": 1, "seed": 3, **kw}))


def test_init_mix_draws_a_seeded_random_sample_of_each_class(tiny_data):
    cache = ClassCache.from_labeled(tiny_data, range(4))
    mix = initial_images(cache, range(4), _settings())
    assert torch.equal(mix, initial_images(cache, range(4), _settings()))
    assert not torch.equal(mix, initial_images(cache, range(4), _settings(seed=4)))
    first = initial_images(cache, range(4), _settings(init="mix_first"))
    assert torch.equal(first[:2], cache.first(0, 2)) and not torch.equal(mix[:2], first[:2])
    class0 = cache.first(0, cache.count[0])  # every initial image is one of its class's real images
    for img in mix[:2]:
        assert any(torch.equal(img, r) for r in class0)
    picks = {tuple(initial_images(cache, [0], _settings(seed=s)).flatten()[:4].tolist()) for s in range(12)}
    assert len(picks) > 6  # not a fixed choice


def test_a_run_started_with_the_old_augmentation_is_refused_naming_the_changed_keys(tmp_path):
    old = load_config("digits", ["init=mix_first", "augment.geometric=[crop,scale,rotate,flip]"])
    store = RunStore(str(tmp_path))
    state = RunState.new(old)
    store.record_checkpoint(state, 500, [])
    with pytest.raises(ResumeError, match=r"differs in: augment\.geometric, init\)"):
        store.open(load_config("digits"))


def test_crop_shift_is_exact_with_the_released_pixel_grid():
    """align_corners=False, as released: an integer shift moves whole pixels exactly."""
    x = torch.arange(1.0, 65.0).view(1, 1, 8, 8)
    u = torch.zeros(1, NUM_UNIFORMS)
    u[0, 4], u[0, 5] = 0.99, 0.0  # sample at dy = +1, dx = -1 (max shift round(0.125 * 8) = 1)
    out = augment(x, u, torch.tensor([0]), AugmentSpec(color=False, cutout=False))
    assert _integer_shift(x[0], out[0], 1) == (-1, 1)  # so the content moves up one row and right one column
    assert math.isclose(float(out[0, 0, 0, 1]), float(x[0, 0, 1, 0]), abs_tol=1e-4)


def test_imagenet1k_evaluates_a_resnet18_from_scratch_with_idc_imagenet_recipe_scaled_to_1000_classes():
    cfg = load_config("imagenet1k")
    e = cfg.eval
    assert e.archs == ["resnet18"] and e.recipe == "imagenet" and e.cutmix_prob == 1.0
    assert (e.lr, e.weight_decay, e.batch_size) == (0.1, 1e-4, 128)
    assert eval_epochs(cfg, cfg.ipc * cfg.factor**2) == 1000  # IDC's table at 90 images per class, no 2/3 cut
    assert (cfg.encoder.arch, cfg.factor, cfg.lr, cfg.batch_real, cfg.data.num_classes) == ("resnetap10", 3, 0.1, 128, 1000)
