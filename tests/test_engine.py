"""pipeline/method/engine.py: the batched engine against the released loop's semantics."""
import dataclasses

import pytest
import torch
from conftest import synthetic_classes
from reference_loop import ReferenceLoop  # tests/reference_loop.py, the oracle beside the tests

from m3d_condense.kernels import mmd2
from m3d_condense.pipeline.config.schema import DataConfig, EncoderConfig, RunConfig
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.method.engine import Condenser, build_encoder, step_until
from m3d_condense.pipeline.method.spec import CondenseSpec, DataSpec


def settings(**kw) -> CondenseSpec:
    """The condensation of the engine tests: 4 classes of 12x12 grey images (conftest's tiny_data)."""
    data = DataConfig(num_classes=4, channels=1, image_size=[12, 12], mean=[0.4], std=[0.25])
    base = dict(data=data, ipc=2, factor=2, ipm=2, batch_real=16, encoder=EncoderConfig(width=16), seed=3, compile=False)
    base.update(kw)
    return CondenseSpec.of(RunConfig(**base))


def test_the_spec_holds_the_condensation_keys_of_the_run_config_as_plain_frozen_values():
    cfg = RunConfig(ipc=3, kernel="linear", encoder=EncoderConfig(width=16))
    s = CondenseSpec.of(cfg)
    assert (s.ipc, s.lr, s.kernel, s.arch, s.width, s.data.image_size) == (3, 3.0, "linear", "convnet3", 16, (32, 32))
    assert type(s.kernel) is str and type(s.update_mode) is str  # choices as the method names them
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ipc = 4
    # Where a run executes, how it is evaluated and where it writes do not reach the method.
    elsewhere = RunConfig(ipc=3, kernel="linear", encoder=EncoderConfig(width=16), device="cpu", out_dir="/elsewhere",
                          workers=4, log_every=1, checkpoint_every=7)
    assert CondenseSpec.of(elsewhere) == s


def test_every_spec_field_but_chunk_classes_comes_from_a_key_in_the_run_fingerprint():
    """So a run directory resumed under another spec is refused; chunk_classes is exact either way."""
    shaping = {f.name: f.metadata["shapes_set"] for f in dataclasses.fields(RunConfig)}
    section = {"arch": "encoder", "width": "encoder"}
    for f in dataclasses.fields(CondenseSpec):
        assert shaping[section.get(f.name, f.name)] == (f.name != "chunk_classes"), f.name
    data_shaping = {f.name: f.metadata["shapes_set"] for f in dataclasses.fields(DataConfig)}
    assert all(data_shaping[f.name] for f in dataclasses.fields(DataSpec))


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_reference_mode_reproduces_the_sequential_released_loop(tiny_data, kernel):
    s = settings(kernel=kernel)
    cache = ClassCache.from_labeled(tiny_data, range(4))
    ours, ref = Condenser(s, cache, range(4)), ReferenceLoop(s, cache, range(4))
    torch.testing.assert_close(ours.images, ref.images.detach())
    for _ in range(5):  # crosses encoder changes (ipm=2)
        torch.testing.assert_close(ours.step(), ref.step(), rtol=1e-4, atol=1e-6)
    buf = ref.optimizer.state[ref.images]["momentum_buffer"]
    torch.testing.assert_close(ours.images, ref.images.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(ours.momentum, buf, rtol=0, atol=2e-5)
    assert (ours.images - ours.images.clamp(0, 1)).abs().max() == 0


def test_batched_mode_is_one_sgd_step_on_the_summed_class_losses(tiny_data):
    s = settings(update_mode="batched", lr=0.5, momentum=0.9)
    cache = ClassCache.from_labeled(tiny_data, range(4))
    ours = Condenser(s, cache, range(4))
    x = ours.images.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.5, momentum=0.9)
    for t in range(3):
        probe = Condenser(s, cache, range(4))
        probe.iteration = t
        loss = probe.class_losses(x, t).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        ours.step()
    torch.testing.assert_close(ours.images, x.detach(), rtol=0, atol=1e-5)


def test_class_losses_equal_per_class_mmd_of_separate_forwards(tiny_data):
    s = settings(kernel="gaussian")
    cache = ClassCache.from_labeled(tiny_data, range(4))
    ours = Condenser(s, cache, range(4))
    batched = ours.class_losses(ours.images, 0)
    ref = ReferenceLoop(s, cache, range(4))
    per_class = ref.step()  # the first class's loss is computed before any update
    assert batched[0].item() == pytest.approx(per_class[0].item(), rel=1e-5)


def test_linear_kernel_loss_is_dm_mean_feature_gap(tiny_data):
    s = settings(kernel="linear")
    ours = Condenser(s, ClassCache.from_labeled(tiny_data, range(4)), range(4))
    losses = ours.class_losses(ours.images, 0)
    assert losses.shape == (4,) and (losses > 0).all()
    x, y = torch.randn(3, 5), torch.randn(4, 5)
    assert mmd2(x, y, "linear").item() == pytest.approx(((x.mean(0) - y.mean(0)) ** 2).sum().item(), rel=1e-5)


def test_encoder_depends_only_on_seed_and_iteration_block():
    s = settings()
    a, b, c = build_encoder(s, 0), build_encoder(s, 0), build_encoder(s, 1)
    wa, wb, wc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    other_seed = build_encoder(dataclasses.replace(s, seed=4), 0)
    assert not torch.equal(wa, next(other_seed.parameters()))


def test_splitting_classes_over_condensers_gives_the_same_synthetic_set(tiny_data):
    s = settings()
    cache = ClassCache.from_labeled(tiny_data, range(4))
    whole = Condenser(s, cache, range(4))
    halves = [Condenser(s, ClassCache.from_labeled(tiny_data, cls), cls) for cls in ([0, 1], [2, 3])]
    for _ in range(4):
        whole.step()
        for h in halves:
            h.step()
    torch.testing.assert_close(whole.images, torch.cat([h.images for h in halves]), rtol=0, atol=1e-6)


def test_state_dict_resume_continues_exactly(tiny_data):
    s = settings()
    cache = ClassCache.from_labeled(tiny_data, range(4))
    straight = Condenser(s, cache, range(4))
    step_until(straight, 6)
    first = Condenser(s, cache, range(4))
    step_until(first, 3)
    resumed = Condenser(s, cache, range(4))
    resumed.load_state_dict(first.state_dict())
    step_until(resumed, 6)
    assert resumed.iteration == 6
    assert torch.equal(resumed.images, straight.images)
    with pytest.raises(ValueError, match="classes"):
        Condenser(s, ClassCache.from_labeled(tiny_data, [0, 1]), [0, 1]).load_state_dict(first.state_dict())


def test_condensation_lowers_the_mmd(tiny_data):
    s = settings(ipm=1000, lr=0.5)  # one encoder throughout, so losses are comparable; a step these toy
    # 12 px images take without overshooting (the default lr = ipc = 2 raises their loss)
    ours = Condenser(s, ClassCache.from_labeled(tiny_data, range(4)), range(4))
    before = ours.class_losses(ours.images, 0).mean().item()
    step_until(ours, 30)
    assert ours.class_losses(ours.images, 0).mean().item() < 0.9 * before  # finite-sample floor stays


def test_a_class_smaller_than_the_real_batch_uses_all_its_images_and_scores_as_if_alone():
    """Ragged real batches (class 2 holds 10 images, the batch is 16) go through one forward;
    each class's loss must equal the loss of that class computed on its own."""
    s = settings(batch_real=16)
    data = synthetic_classes(per_class=40)
    keep = torch.ones(len(data.labels), dtype=torch.bool)
    keep[(data.labels == 2).nonzero()[10:]] = False  # class 2 keeps 10 images
    data.images, data.labels = data.images[keep], data.labels[keep]
    cache = ClassCache.from_labeled(data, range(4))
    ours = Condenser(s, cache, range(4))
    assert cache.batch_sizes(range(4), 16) == [16, 16, 10, 16]
    together = ours.class_losses(ours.images, 3)
    rows = s.ipc
    alone = torch.cat([ours.class_losses(ours.images[c * rows:(c + 1) * rows], 3, [c]) for c in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(ours.step()).all()


def test_each_compiled_step_gives_the_eager_step_within_float_rounding(tiny_data):
    """Every step starts from the eager run's state: two free-running trajectories may part after a
    few steps, because a rounding-sized difference can flip a ReLU or pooling kink and lr = ipc = 2
    turns that into a visible pixel change (seen on an AVX2 CPU at step 5); one step cannot."""
    eager = Condenser(settings(), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    compiled = Condenser(settings(compile=True), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    start = eager.images.clone()
    for _ in range(6):  # crosses encoder changes (ipm 2): the compiled graph takes the new weights
        compiled.load_state_dict(eager.state_dict())
        torch.testing.assert_close(compiled.step(), eager.step(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(compiled.images, eager.images, rtol=0, atol=1e-4)
        torch.testing.assert_close(compiled.momentum, eager.momentum, rtol=0, atol=1e-4)
    assert not torch.equal(eager.images, start)  # the images did move


@pytest.mark.parametrize("mode", ["reference", "batched"])
def test_chunked_forwards_give_the_same_synthetic_set(tiny_data, mode):
    whole = Condenser(settings(update_mode=mode), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    chunked = Condenser(settings(update_mode=mode, chunk_classes=1), ClassCache.from_labeled(tiny_data, range(4)),
                        range(4))
    assert (whole.chunk, chunked.chunk) == (4, 1)
    for _ in range(4):
        torch.testing.assert_close(chunked.step(), whole.step(), rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.images, whole.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.momentum, whole.momentum, rtol=0, atol=1e-6)


def test_chunk_candidates_are_divisors_up_to_the_memory_bound_spread_on_a_log_scale():
    from m3d_condense.pipeline.method.engine import chunk_candidates

    assert chunk_candidates(10, 10) == [1, 2, 5, 10]
    assert chunk_candidates(10, 4) == [1, 2]  # 4 would leave a ragged chunk (another compiled shape)
    assert chunk_candidates(100, 100) == [1, 5, 20, 100]
    assert chunk_candidates(7, 7) == [1, 7]


def test_auto_chunk_times_each_candidate_once_per_shape_and_keeps_the_fastest(tiny_data, monkeypatch):
    from m3d_condense.pipeline.method import engine

    monkeypatch.setattr(engine, "_TUNED_CHUNKS", {})
    sizes = []
    original = Condenser.class_losses

    def recording(self, images, iteration, classes=None):
        sizes.append(len(classes))
        return original(self, images, iteration, classes)

    monkeypatch.setattr(Condenser, "class_losses", recording)
    first = Condenser(settings(), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    first.step()
    # A warm-up and a timed dry run per candidate size, then the step in chunks of the winner.
    assert sizes == [1, 1, 2, 2, 4, 4] + [first.chunk] * (4 // first.chunk) and first.chunk in (1, 2, 4)
    sizes.clear()
    second = Condenser(settings(), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    second.step()
    assert second.chunk == first.chunk and sizes == [first.chunk] * (4 // first.chunk)  # tuned once per shape
    fixed = Condenser(settings(chunk_classes=4), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    fixed.step()
    torch.testing.assert_close(second.images, fixed.images, rtol=0, atol=1e-6)


def test_memory_decides_the_classes_per_forward_and_refuses_what_cannot_fit(tiny_data, monkeypatch):
    from m3d_condense.pipeline.method import memory

    s = settings()
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(memory.step_bytes(s, 2) / memory.HEADROOM) + 1)
    assert Condenser(s, ClassCache.from_labeled(tiny_data, range(4)), range(4)).chunk == 2
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    with pytest.raises(memory.MemoryBudgetError, match=r"one class needs about .* GiB per step \(ipc=2, factor=2, "
                                                        r"batch_real=16, convnet3 at 12x12\), but cpu has 0.0 GiB usable"):
        Condenser(s, ClassCache.from_labeled(tiny_data, range(4)), range(4))


def test_a_process_sharing_the_free_memory_sizes_its_step_for_its_share_of_it_but_is_never_refused_for_it(tiny_data, monkeypatch):
    from m3d_condense.pipeline.method import memory

    s = settings()
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(memory.step_bytes(s, 2) / memory.HEADROOM) + 1)
    cache = ClassCache.from_labeled(tiny_data, range(4))
    assert Condenser(s, cache, range(4), memory_share=1.0).chunk == 2
    assert Condenser(s, cache, range(4), memory_share=0.5).chunk == 1
    # The share bounds how many neighbours there may be, not how many there are: it never refuses.
    assert Condenser(s, cache, range(4), memory_share=0.01).chunk == 1


def test_step_memory_estimate_grows_with_classes_ipc_and_resolution():
    from m3d_condense.pipeline.method.memory import step_bytes

    base = settings()
    assert step_bytes(base, 4) > step_bytes(base, 2) > 0
    assert step_bytes(settings(ipc=4), 2) > step_bytes(base, 2)
    big = settings(data=DataConfig(num_classes=4, channels=1, image_size=[24, 24], mean=[0.4], std=[0.25]))
    assert step_bytes(big, 2) > 3 * step_bytes(base, 2)


def test_bf16_autocast_tracks_the_fp32_losses_and_keeps_fp32_images(tiny_data):
    fp32 = Condenser(settings(), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    bf16 = Condenser(settings(precision="bf16"), ClassCache.from_labeled(tiny_data, range(4)), range(4))
    first32, first16 = fp32.step(), bf16.step()
    torch.testing.assert_close(first16, first32, rtol=0.05, atol=0.02)  # bf16 keeps ~3 significant digits
    assert not torch.equal(first16, first32)  # the switch does change the arithmetic
    for _ in range(3):
        bf16.step()
    assert bf16.images.dtype == torch.float32 and torch.isfinite(bf16.images).all()


def test_reference_loop_has_the_released_structure(tiny_data):
    """The baseline of every speed ratio: real features under no_grad (no autograd graph through
    the real batch), synthetic features with grad, encoder weights requiring grad (so the
    backward computes their gradients, as the release does), one encoder per ipm iterations."""
    s = settings(ipm=2)
    ref = ReferenceLoop(s, ClassCache.from_labeled(tiny_data, range(4)), range(4))
    calls, encoders = [], []
    original_embed = type(build_encoder(s, 0)).embed

    def recording_embed(net, x):
        out = original_embed(net, x)
        calls.append((len(x), torch.is_grad_enabled(), out.grad_fn is not None))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(build_encoder(s, 0)), "embed", recording_embed)
        for _ in range(3):
            ref.step()
            encoders.append(ref.encoder)
    n_syn = s.ipc * s.factor**2
    assert calls == [(s.batch_real, False, False), (n_syn, True, True)] * (4 * 3)
    assert encoders[0] is encoders[1] and encoders[1] is not encoders[2]
    embedding = [p for name, p in ref.encoder.named_parameters() if not name.startswith("classifier")]
    assert embedding and all(p.requires_grad and p.grad is not None for p in embedding)
