"""The slot-diffusion model: joint training leaves the VAE alone, masks, samplers, latent scale, errors."""

import pytest
import torch
import torch.nn.functional as F

from col775.slots.diffusion.ddpm import GaussianDiffusion
from col775.slots.build import build_model
from col775.slots.config import SlotsConfig
from col775.slots.diffusion.model import SlotDiffusion
from col775.slots.diffusion.unet import UNetConfig
from col775.slots.diffusion.vae import VQVAE
from col775.slots.encoder import SlotEncoderConfig

IMAGE = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae() -> VQVAE:
    """2x downsampling, 3-channel latent, 16 codes: a 16x16 image becomes a 3x8x8 latent."""
    return VQVAE(channels=8, channel_mults=(1, 2), num_res_blocks=1, num_codes=16, norm_groups=4)


def tiny_model(slot_init: str = "learned", stride: int = 2, num_steps: int = 20) -> SlotDiffusion:
    torch.manual_seed(0)
    encoder = SlotEncoderConfig(
        image_size=IMAGE, num_slots=3, slot_dim=16, slot_hidden_dim=16, slot_init=slot_init,
        encoder_channels=(8, 8), encoder_strides=(stride, 1), encoder_kernel=3,
    )  # fmt: skip
    unet = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                      head_channels=8, slot_dim=16, norm_groups=4)
    model = SlotDiffusion(encoder, unet, tiny_vae(), GaussianDiffusion(num_steps=num_steps))
    return model


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_loss_is_finite_and_falls_with_training_on_a_fixed_batch():
    model = tiny_model()
    x = images(4)
    model.set_latent_scale(x)
    t = torch.tensor([2, 7, 12, 17])
    noise = torch.randn(4, *model.latent_shape, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(model.loss(x, t=t, noise=noise))
    assert torch.isfinite(torch.tensor(before))
    for _ in range(25):
        optimizer.zero_grad()
        model.loss(x, t=t, noise=noise).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model.loss(x, t=t, noise=noise))
    assert after < 0.7 * before


def test_vae_gets_no_gradient_stays_in_eval_mode_and_unchanged():
    model = tiny_model(slot_init="gaussian")
    x = images(2)
    model.set_latent_scale(x)
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    vae_ids = {id(p) for p in model.vae.parameters()}
    trainable = model.trainable_parameters()
    assert not vae_ids & {id(p) for p in trainable}
    assert len(trainable) == sum(1 for _ in model.parameters()) - len(vae_ids)
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    model.train()
    assert model.training and not model.vae.training
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    assert all(p.grad is None for p in model.vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.slot_attention.parameters())
    for key, value in model.vae.state_dict().items():
        assert torch.equal(value, vae_before[key]), key


def test_attention_masks_are_the_resized_attention_and_sum_to_one_over_slots():
    model = tiny_model(stride=2).eval()
    x = images(2)
    masks = model.masks(x)
    assert masks.shape == (2, 3, IMAGE, IMAGE)
    assert masks.min() >= 0
    assert torch.allclose(masks.sum(dim=1), torch.ones(2, IMAGE, IMAGE), atol=1e-5)
    # Reference: slot attention's own [B, K, N] output, pixel n at row n // side, column n % side,
    # then torch's bilinear resize.
    _, attn = model.encoder(x)
    side = IMAGE // 2
    grid = torch.zeros(2, 3, side, side)
    for n in range(side * side):
        grid[:, :, n // side, n % side] = attn[:, :, n]
    expected = F.interpolate(grid, size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)
    assert torch.allclose(masks, expected, atol=1e-6)


def test_attention_masks_at_full_resolution_are_the_attention_itself():
    model = tiny_model(stride=1).eval()
    x = images(1)
    _, attn = model.encoder(x)
    assert torch.equal(model.masks(x), attn.view(1, 3, IMAGE, IMAGE))


@pytest.mark.parametrize("sampler,steps,expected_calls", [("ddim", 5, 5), ("ancestral", 5, 20)])
def test_reconstruct_shape_range_and_number_of_denoising_calls(sampler, steps, expected_calls):
    model = tiny_model(num_steps=20).eval()
    x = images(2)
    model.set_latent_scale(x)
    calls = []
    model.unet.register_forward_hook(lambda module, args, output: calls.append(args[1]))
    model.use_sampler(sampler, steps)
    recon = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape
    assert recon.min() >= -1 and recon.max() <= 1
    assert len(calls) == expected_calls
    assert int(calls[0][0]) == 19 and int(calls[-1][0]) == 0  # from t = T-1 down to t = 0


def test_ddim_reconstruction_is_repeatable_with_a_seeded_generator():
    model = tiny_model().eval()
    x = images(2)
    model.set_latent_scale(x)
    model.use_sampler("ddim", 4)
    first = model.reconstruct(x, generator=torch.Generator().manual_seed(7))
    second = model.reconstruct(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_decode_takes_any_number_of_slots_and_rejects_a_wrong_slot_size():
    model = tiny_model().eval()
    model.set_latent_scale(images(2))
    model.use_sampler("ddim", 2)
    assert model.decode(torch.randn(2, 5, 16)).shape == (2, 3, IMAGE, IMAGE)
    with pytest.raises(ValueError, match="slots"):
        model.decode(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="sampler"):
        model.use_sampler("euler", 2)


def test_latent_scale_gives_unit_std_is_set_once_and_is_required():
    model = tiny_model().eval()
    x = images(4)
    with pytest.raises(RuntimeError, match="latent_scale"):
        model.loss(x)
    scale = model.set_latent_scale(x)
    with torch.no_grad():
        assert scale == pytest.approx(1.0 / float(model.vae.encode(x).std()), rel=1e-5)
        assert float(model.latents(x).std()) == pytest.approx(1.0, rel=1e-4)
    assert model.set_latent_scale(images(4, seed=9)) == scale  # already set: kept
    assert "latent_scale" in model.state_dict()


def test_mismatched_parts_and_images_raise_clear_errors():
    encoder = SlotEncoderConfig(image_size=IMAGE, slot_dim=16, encoder_channels=(8,), encoder_strides=(1,))
    unet = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                      head_channels=8, slot_dim=32, norm_groups=4)
    with pytest.raises(ValueError, match="slot_dim"):
        SlotDiffusion(encoder, unet, tiny_vae(), GaussianDiffusion(num_steps=10))
    deep = UNetConfig(base_channels=8, channel_mults=(1, 2, 2, 2, 2), num_res_blocks=1, attention_resolutions=(2,),
                      head_channels=8, slot_dim=16, norm_groups=4)
    with pytest.raises(ValueError, match="image_size"):
        SlotDiffusion(encoder, deep, tiny_vae(), GaussianDiffusion(num_steps=10))
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        tiny_model().encode(torch.zeros(1, 3, 32, 32))


def test_config_builds_the_model_and_rejects_bad_values():
    config = SlotsConfig(
        decoder="diffusion", image_size=32, num_slots=4, slot_dim=16, slot_hidden_dim=16, encoder_channels=[8, 8],
        encoder_strides=[2, 1], vae_arch="small", vae_num_codes=32, unet_base_channels=16,
        unet_channel_mults=[1, 2], unet_num_res_blocks=1, unet_attention_resolutions=[2], unet_head_channels=8,
        unet_norm_groups=8, num_timesteps=50, sampler_steps=10, latent_scale=0.5,
    )  # fmt: skip
    model = build_model(config, VQVAE.small(num_codes=32))
    assert model.latent_shape == (3, 8, 8)
    assert float(model.latent_scale) == 0.5
    assert model.diffusion.num_steps == 50
    for bad in ({"sampler": "euler"}, {"vae_arch": "huge"}, {"sampler": "ddim", "sampler_steps": 51},
                {"beta_schedule": "cosine"}, {"decoder": "transformer"}):
        with pytest.raises(ValueError):
            SlotsConfig(**{**config.__dict__, **bad})
