"""models/: network shapes, per-image independence, augmentation and multi-formation."""
import pytest
import torch

from m3d_condense.models import AugmentSpec, augment, create_model, decode, list_models, mix_init
from m3d_condense.models.augment import NUM_UNIFORMS


@pytest.mark.parametrize("size,channels,dim", [((32, 32), 3, 2048), ((28, 28), 1, 2048), ((64, 64), 3, 8192)])
def test_convnet3_feature_dim_follows_the_reference(size, channels, dim):
    net = create_model("convnet3", channels, 10, size)
    assert net.embed(torch.rand(2, channels, *size)).shape == (2, dim)
    assert net(torch.rand(2, channels, *size)).shape == (2, 10)


def test_convnet5_at_128px_gives_2048_features_like_the_released_convnetd5():
    net = create_model("convnet5", 3, 10, (128, 128))
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, torch.nn.GroupNorm)]
    assert len(convs) == 5 and all(n.num_groups == n.num_channels == 128 for n in norms)
    assert net.embed(torch.rand(2, 3, 128, 128)).shape == (2, 2048)
    assert net(torch.rand(2, 3, 128, 128)).shape == (2, 10)


def test_convnet_takes_any_size_and_width():
    net = create_model("convnet3", 3, 7, (20, 36), width=16)
    assert net(torch.rand(3, 3, 20, 36)).shape == (3, 7)
    with pytest.raises(ValueError, match="too small"):
        create_model("convnet4", 3, 10, (8, 8))


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_classifies_small_images(name):
    net = create_model(name, 3, 5, (32, 32)).eval()
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_resnetap10_gives_512_features_at_224px():
    net = create_model("resnetap10", 3, 100, (224, 224))
    assert net.embed(torch.rand(1, 3, 224, 224)).shape == (1, 512)


def test_unknown_model_lists_the_registered_names():
    with pytest.raises(KeyError, match="convnet3"):
        create_model("vgg11", 3, 10, (32, 32))


@pytest.mark.parametrize("name", ["convnet3", "resnetap10"])
def test_instance_norm_encoders_embed_each_image_independently_of_its_batch(name):
    net = create_model(name, 3, 10, (32, 32))
    a, b = torch.rand(3, 3, 32, 32), torch.rand(5, 3, 32, 32)
    together = net.embed(torch.cat([a, b]))
    torch.testing.assert_close(together, torch.cat([net.embed(a), net.embed(b)]), rtol=1e-4, atol=1e-5)


def _uniforms(groups, seed=0):
    return torch.rand(groups, NUM_UNIFORMS, generator=torch.Generator().manual_seed(seed))


def test_augmentation_is_siamese_within_a_group_and_differs_across_groups():
    img = torch.rand(1, 3, 16, 16)
    x = img.repeat(4, 1, 1, 1)
    out = augment(x, _uniforms(2), torch.tensor([0, 0, 1, 1]), AugmentSpec())
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[2], out[3])
    assert not torch.allclose(out[0], out[2])


def test_augmentation_is_identity_when_everything_is_off():
    x = torch.rand(3, 1, 12, 12)
    out = augment(x, _uniforms(3), torch.arange(3), AugmentSpec(color=False, geometric=(), cutout=False))
    torch.testing.assert_close(out, x)


def test_crop_translates_by_whole_pixels_with_zero_fill():
    x = torch.arange(256.0).view(1, 1, 16, 16) + 1.0
    u = torch.full((1, NUM_UNIFORMS), 0.5)
    u[0, 4], u[0, 5] = 0.0, 0.99  # rows by -2, columns by +2 (max shift round(0.125 * 16) = 2)
    out = augment(x, u, torch.tensor([0]), AugmentSpec(color=False, geometric=("crop",), cutout=False))[0, 0]
    torch.testing.assert_close(out[2:, :-2], x[0, 0, :-2, 2:], atol=1e-3, rtol=0)
    assert out[:2].abs().max() < 1e-3 and out[:, -2:].abs().max() < 1e-3


def test_flip_mirrors_exactly():
    x = torch.rand(1, 3, 8, 8)
    u = torch.full((1, NUM_UNIFORMS), 0.1)  # flip chosen (only op), flip draw < 0.5
    out = augment(x, u, torch.tensor([0]), AugmentSpec(color=False, geometric=("flip",), cutout=False))
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)


def test_cutout_erases_a_square_of_half_the_side():
    x = torch.ones(1, 1, 16, 16)
    u = torch.full((1, NUM_UNIFORMS), 0.5)
    out = augment(x, u, torch.tensor([0]), AugmentSpec(color=False, geometric=(), cutout=True))
    assert int((out == 0).sum()) == 8 * 8


def test_augmentation_is_differentiable_wrt_pixels_gradcheck():
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    u = _uniforms(1, seed=3).double()
    for op in ("crop", "scale", "rotate", "flip"):
        spec = AugmentSpec(geometric=(op,), cutout=True)
        assert torch.autograd.gradcheck(lambda a, spec=spec: augment(a, u, torch.tensor([0, 0]), spec), (x,))


def test_decode_cuts_row_major_crops_and_upsamples():
    # 2 stored images, each a 2x2 grid of constant tiles valued 10*i + k
    stored = torch.zeros(2, 1, 8, 8)
    for i in range(2):
        for k in range(4):
            r, c = divmod(k, 2)
            stored[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 10 * i + k
    out = decode(stored, 2)
    assert out.shape == (8, 1, 8, 8)
    expected = torch.tensor([0, 1, 2, 3, 10, 11, 12, 13], dtype=torch.float32)
    torch.testing.assert_close(out.mean((1, 2, 3)), expected)
    torch.testing.assert_close(out.amax((1, 2, 3)), out.amin((1, 2, 3)))


def test_decode_pads_with_half_grey_when_size_is_not_a_multiple():
    out = decode(torch.zeros(1, 1, 28, 28), 3)  # 28 -> 30: the last row/column of crops holds padding
    assert out.shape == (9, 1, 28, 28)
    assert out[8].max() > 0 and out[0].max() == 0


def test_mix_init_tiles_real_images_in_the_order_decode_reads_them():
    real = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16) / 10  # image k is constant k / 10
    stored = mix_init(real, 2)
    assert stored.shape == (2, 3, 16, 16)
    out = decode(stored, 2)
    torch.testing.assert_close(out, real)
    with pytest.raises(ValueError, match="multiple of 4"):
        mix_init(real[:6], 2)


def test_mix_init_with_factor_one_keeps_the_images():
    real = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(mix_init(real, 1), real)
    torch.testing.assert_close(decode(real, 1), real)
