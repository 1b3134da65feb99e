"""Slot autoencoder: shapes, mask algebra, decode/forward agreement, overfitting, configs, its SlotModel methods."""

import dataclasses
import json
import math

import pytest
import torch

import torch.nn.functional as F

from col775.slots.encoder import position_grid
from col775.slots.sbd import SlotAutoencoder, SlotAutoencoderConfig, course_config, demo_config, mask_entropy

TINY = SlotAutoencoderConfig(
    image_size=16,
    num_slots=3,
    slot_dim=8,
    slot_hidden_dim=16,
    encoder_channels=(8, 8),
    encoder_strides=(2, 1),
    decoder_broadcast=4,
    decoder_channels=(8, 8),
    decoder_strides=(2, 2),
)


def tiny_model() -> SlotAutoencoder:
    torch.manual_seed(0)
    return SlotAutoencoder(TINY)


def test_forward_shapes():
    out = tiny_model()(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert out["recon"].shape == (2, 3, 16, 16)
    assert out["masks"].shape == (2, 3, 1, 16, 16)
    assert out["slot_recons"].shape == (2, 3, 3, 16, 16)
    assert out["slots"].shape == (2, 3, 8)
    assert out["attn"].shape == (2, 3, 8 * 8)


def test_masks_partition_and_recon_is_their_mixture():
    out = tiny_model()(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert (out["masks"] >= 0).all()
    torch.testing.assert_close(out["masks"].sum(dim=1), torch.ones(2, 1, 16, 16))
    torch.testing.assert_close(out["recon"], (out["masks"] * out["slot_recons"]).sum(dim=1))


def test_decode_reproduces_forward_and_accepts_any_slot_count():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 16, 16) * 2 - 1)
        torch.testing.assert_close(model.decode_parts(out["slots"])["recon"], out["recon"])
        torch.testing.assert_close(model.decode(out["slots"]), out["recon"])
        composed = model.decode_parts(torch.randn(5, 7, 8))
    assert composed["recon"].shape == (5, 3, 16, 16)
    assert composed["masks"].shape == (5, 7, 1, 16, 16)


def test_slot_model_methods_are_the_forward_pass_seen_through_the_interface():
    model = SlotAutoencoder(dataclasses.replace(TINY, slot_init="learned")).eval()  # deterministic slots
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(images)
        torch.testing.assert_close(model.loss(images), F.mse_loss(out["recon"], images))
        torch.testing.assert_close(model.masks(images), out["masks"][:, :, 0])
        explained = model.explain(images)
    torch.testing.assert_close(explained["slot_images"], out["slot_recons"])
    assert model.prepare(images) == {} and len(model.trainable_parameters()) == len(list(model.parameters()))


def square_scenes(n: int) -> torch.Tensor:
    """n images [3, 16, 16] in [-1, 1]: a grey background and two coloured squares."""
    gen = torch.Generator().manual_seed(0)
    images = torch.full((n, 3, 16, 16), -0.5)
    for img in images:
        for _ in range(2):
            y, x = torch.randint(0, 11, (2,), generator=gen).tolist()
            img[:, y : y + 5, x : x + 5] = torch.rand(3, 1, 1, generator=gen) * 2 - 1
    return images


def test_a_few_steps_overfit_one_batch():
    model = tiny_model()
    images = square_scenes(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model.loss(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_course_model_matches_the_paper_shapes():
    cfg = course_config()
    assert (cfg.image_size, cfg.num_slots, cfg.slot_dim, cfg.slot_iters) == (128, 11, 64, 3)
    assert cfg.feature_size == 128
    model = SlotAutoencoder(cfg)
    convs = [m for m in model.encoder.cnn if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(64, (5, 5), (1, 1))] * 4
    with torch.no_grad():
        per_slot = model.decoder(torch.randn(1, 1, 64))
    assert per_slot.shape == (1, 1, 4, 128, 128)


def test_demo_model_runs():
    cfg = demo_config()
    with torch.no_grad():
        out = SlotAutoencoder(cfg)(torch.zeros(2, 3, cfg.image_size, cfg.image_size))
    assert out["attn"].shape == (2, cfg.num_slots, cfg.feature_size**2)


def test_config_round_trip_through_dict_and_json():
    for cfg in (course_config(), demo_config(), TINY):
        assert SlotAutoencoderConfig.from_dict(dataclasses.asdict(cfg)) == cfg
        as_json = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples come back as lists
        assert SlotAutoencoderConfig.from_dict(as_json) == cfg


def test_bad_configs_and_inputs_raise():
    with pytest.raises(ValueError, match="decoder grows"):
        dataclasses.replace(TINY, decoder_strides=(2, 1))
    with pytest.raises(ValueError, match="not divisible"):
        dataclasses.replace(TINY, image_size=17, decoder_broadcast=17, decoder_strides=(1, 1))
    with pytest.raises(ValueError, match="unknown SlotAutoencoderConfig keys"):
        SlotAutoencoderConfig.from_dict({"slots": 3})
    with pytest.raises(ValueError, match="image_size"):
        tiny_model()(torch.zeros(1, 3, 32, 32))


def test_position_grid_corners():
    grid = position_grid(2, 3)
    assert grid.shape == (2, 3, 4)
    assert grid[0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert grid[1, 2].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert grid[0, 1].tolist() == [0.5, 0.0, 0.5, 1.0]


def test_decoder_is_a_broadcast_slot_plus_its_position_embedding_through_the_cnn():
    """The spatial broadcast decoder written out: every slot tiled over the grid plus Linear(x, y, 1-x, 1-y),
    the transposed convolutions with ReLU, the 3x3 output conv; then the alpha masks softmax over the slots."""
    config = dataclasses.replace(TINY, decoder_broadcast=16, decoder_channels=(8, 8), decoder_strides=(1, 1))
    torch.manual_seed(0)
    model = SlotAutoencoder(config).eval()
    slots = torch.randn(2, 3, 8)
    decoder = model.decoder
    rows, cols = torch.meshgrid(torch.arange(16) / 15, torch.arange(16) / 15, indexing="ij")  # y down, x right
    grid = torch.stack([cols, rows, 1 - cols, 1 - rows], dim=-1)
    position = (grid @ decoder.position.proj.weight.T + decoder.position.proj.bias).permute(2, 0, 1)
    x = slots.reshape(6, 8, 1, 1) + position  # [B*K, D, 16, 16]
    first, second, out_conv = decoder.cnn[0], decoder.cnn[2], decoder.cnn[4]
    for layer in (first, second):
        x = F.relu(F.conv_transpose2d(x, layer.weight, layer.bias, padding=config.decoder_kernel // 2))
    x = F.conv2d(x, out_conv.weight, out_conv.bias, padding=1).view(2, 3, 4, 16, 16)
    masks = torch.exp(x[:, :, :1]) / torch.exp(x[:, :, :1]).sum(dim=1, keepdim=True)
    parts = model.decode_parts(slots)
    torch.testing.assert_close(parts["masks"], masks)
    torch.testing.assert_close(parts["recon"], (masks * x[:, :, 1:]).sum(dim=1))
    assert position[:, 0, :].std(dim=1).min() > 0 and position[:, :, 0].std(dim=1).min() > 0  # varies both ways


def test_layers_start_as_the_papers_tensorflow_model_glorot_uniform_with_zero_biases():
    """Keras' defaults, which the paper's model was trained from: weights U(-a, a) with a = sqrt(6 / (fan_in +
    fan_out)), biases 0. With PyTorch's defaults the CNN's content was ~50x smaller than the position embedding."""
    torch.manual_seed(0)
    model = SlotAutoencoder(demo_config())
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(layers) == 4 + 1 + 2 + 3 + 2 + 1 + 2 + 1  # encoder convs, position, MLP, q k v, slot MLP, decoder
    for layer in layers:
        w = layer.weight
        receptive = w[0, 0].numel()
        fan_sum = (w.shape[0] + w.shape[1]) * receptive
        bound = math.sqrt(6.0 / fan_sum)
        assert w.abs().max() <= bound
        assert abs(w.std().item() - bound / math.sqrt(3.0)) < 0.15 * bound  # uniform on [-a, a]: std a / sqrt(3)
        assert layer.bias is None or not layer.bias.any()


def test_position_init_gain_scales_only_the_encoders_position_embedding():
    torch.manual_seed(0)
    paper = SlotAutoencoder(TINY)
    torch.manual_seed(0)
    scaled = SlotAutoencoder(dataclasses.replace(TINY, position_init_gain=0.1))
    torch.testing.assert_close(scaled.encoder.position.proj.weight, 0.1 * paper.encoder.position.proj.weight)
    torch.testing.assert_close(scaled.decoder.position.proj.weight, paper.decoder.position.proj.weight)
    torch.testing.assert_close(scaled.encoder.cnn[0].weight, paper.encoder.cnn[0].weight)
    with pytest.raises(ValueError, match="position_init_gain"):
        dataclasses.replace(TINY, position_init_gain=-1.0)


def test_mask_entropy_is_the_categorical_entropy_of_each_pixel_over_slots():
    torch.manual_seed(0)
    masks = torch.randn(2, 5, 1, 4, 4).softmax(dim=1)
    per_pixel = torch.distributions.Categorical(probs=masks.squeeze(2).permute(0, 2, 3, 1)).entropy()
    assert mask_entropy(masks).item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)
    assert mask_entropy(torch.full((1, 2, 1, 3, 3), 0.5)).item() == pytest.approx(math.log(2), rel=1e-5)
    one_slot = torch.zeros(1, 3, 1, 2, 2)
    one_slot[:, 1] = 1
    assert mask_entropy(one_slot).item() == pytest.approx(0.0, abs=1e-4)


def test_the_mask_entropy_penalty_is_added_in_training_only():
    torch.manual_seed(0)
    model = SlotAutoencoder(dataclasses.replace(TINY, slot_init="learned"))  # deterministic: no slot noise
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    model.eval()
    with torch.no_grad():
        out = model(images)
        mse = F.mse_loss(out["recon"], images).item()
        entropy = mask_entropy(out["masks"]).item()
        model.mask_entropy_weight = 0.5
        assert model.loss(images).item() == pytest.approx(mse, rel=1e-5)  # validation: reconstruction alone
        model.train()  # no dropout or batch norm: the forward is the same in both modes
        assert model.loss(images).item() == pytest.approx(mse + 0.5 * entropy, rel=1e-5)
        model.mask_entropy_weight = 0.0
        assert model.loss(images).item() == pytest.approx(mse, rel=1e-5)
