"""The slot-conditioned UNet: shapes, attention vs torch.nn.MultiheadAttention, slot-set conditioning."""

import math

import pytest
import torch
from torch import nn

from col775.slots.diffusion.unet import (MultiHeadAttention, ResBlock, SlotTransformer, UNet, UNetConfig,
                               course_unet_config, demo_unet_config, timestep_embedding)


def _unzero(model: nn.Module) -> nn.Module:
    """Give the zero-initialised convs random weights, so every path affects the output."""
    torch.manual_seed(123)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.any():
            nn.init.normal_(m.weight, std=0.05)
            nn.init.normal_(m.bias, std=0.05)
    return model


def test_demo_unet_forward_backward_shapes():
    torch.manual_seed(0)
    cfg = demo_unet_config(slot_dim=24)
    model = _unzero(UNet(cfg))
    z = torch.randn(2, 3, 32, 32)
    slots = torch.randn(2, 5, 24, requires_grad=True)
    eps = model(z, torch.tensor([0, 999]), slots)
    assert eps.shape == (2, 3, 32, 32)
    eps.pow(2).mean().backward()
    assert slots.grad is not None and slots.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_fresh_unet_predicts_zero_because_output_conv_is_zero():
    model = UNet(demo_unet_config())
    out = model(torch.randn(1, 3, 16, 16), torch.tensor([10]), torch.randn(1, 3, 32))
    assert torch.equal(out, torch.zeros_like(out))


def _expected_param_count(cfg: UNetConfig) -> int:
    """Parameters of the documented architecture, counted from the layer formulas (not from the module)."""
    base, emb = cfg.base_channels, 4 * cfg.base_channels
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731

    def res(i: int, o: int, resample: bool = False) -> int:
        n = 2 * i + (0 if resample else conv(i, o, 3)) + lin(emb, o) + 2 * o + conv(o, o, 3)
        return n + (conv(i, o, 1) if i != o else 0)

    def transformer(c: int) -> int:
        self_attn = 3 * lin(c, c, False) + lin(c, c)
        cross_attn = lin(c, c, False) + 2 * lin(cfg.slot_dim, c, False) + lin(c, c)
        block = 3 * 2 * c + self_attn + cross_attn + lin(c, 8 * c) + lin(4 * c, c)
        return 2 * c + 2 * conv(c, c, 1) + cfg.transformer_depth * block

    total = lin(base, emb) + lin(emb, emb) + conv(cfg.in_channels, base, 3)
    widths = [base * m for m in cfg.channel_mults]
    ch, skips, factor = base, [base], 1
    for level, w in enumerate(widths):
        for _ in range(cfg.num_res_blocks):
            total += res(ch, w) + (transformer(w) if factor in cfg.attention_resolutions else 0)
            ch = w
            skips.append(ch)
        if level < len(widths) - 1:
            total += res(ch, ch, resample=True)
            skips.append(ch)
            factor *= 2
    total += 2 * res(ch, ch) + transformer(ch)
    for level in reversed(range(len(widths))):
        for i in range(cfg.num_res_blocks + 1):
            total += res(ch + skips.pop(), widths[level])
            ch = widths[level]
            total += transformer(ch) if factor in cfg.attention_resolutions else 0
            if level > 0 and i == cfg.num_res_blocks:
                total += res(ch, ch, resample=True)
                factor //= 2
    return total + 2 * ch + conv(ch, cfg.in_channels, 3)


@pytest.fixture(scope="module")
def course_unet() -> UNet:
    return UNet(course_unet_config(slot_dim=64))


def test_parameter_count_matches_layer_formulas(course_unet):
    demo_cfg = demo_unet_config()
    assert sum(p.numel() for p in UNet(demo_cfg).parameters()) == _expected_param_count(demo_cfg)
    assert sum(p.numel() for p in course_unet.parameters()) == _expected_param_count(course_unet.cfg)


def test_course_unet_layout(course_unet):
    cfg, model = course_unet.cfg, course_unet
    assert (cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks, cfg.head_channels) == (128, (1, 2, 3, 4), 2, 32)
    transformers = [m for m in model.modules() if isinstance(m, SlotTransformer)]
    # down: 2 each at 16x16, 8x8, 4x4; mid: 1; up: 3 each at 4x4, 8x8, 16x16.
    assert len(transformers) == 6 + 1 + 9
    heads = sorted({t.blocks[0].self_attn.heads for t in transformers})
    assert heads == [8, 12, 16]  # widths 256, 384, 512 at 32 channels a head
    down = [m for m in model.modules() if isinstance(m, ResBlock) and m.resample == "down"]
    up = [m for m in model.modules() if isinstance(m, ResBlock) and m.resample == "up"]
    assert len(down) == len(up) == 3


def test_timestep_embedding_matches_formula():
    t = torch.tensor([0, 1, 17, 999])
    dim = 10
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    for row, step in enumerate(t.tolist()):
        for i in range(dim // 2):
            w = 10000.0 ** (-i / (dim // 2))
            assert emb[row, i].item() == pytest.approx(math.cos(step * w), abs=1e-4)
            assert emb[row, dim // 2 + i].item() == pytest.approx(math.sin(step * w), abs=1e-4)
    assert timestep_embedding(t, 7).shape == (4, 7)


def test_self_attention_equals_torch_multihead_attention():
    torch.manual_seed(1)
    dim, head_channels = 64, 16
    ours = MultiHeadAttention(dim, head_channels)
    ref = nn.MultiheadAttention(dim, num_heads=dim // head_channels, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.to_q.weight, ours.to_k.weight, ours.to_v.weight]))
        ref.in_proj_bias.zero_()
        ref.out_proj.weight.copy_(ours.to_out.weight)
        ref.out_proj.bias.copy_(ours.to_out.bias)
    x = torch.randn(3, 20, dim)
    expected, _ = ref(x, x, x, need_weights=False)
    assert torch.allclose(ours(x), expected, atol=1e-5)


def test_cross_attention_equals_torch_multihead_attention_with_kdim():
    torch.manual_seed(2)
    dim, slot_dim = 32, 24
    ours = MultiHeadAttention(dim, head_channels=8, context_dim=slot_dim)
    ref = nn.MultiheadAttention(dim, num_heads=4, kdim=slot_dim, vdim=slot_dim, batch_first=True)
    with torch.no_grad():
        ref.q_proj_weight.copy_(ours.to_q.weight)
        ref.k_proj_weight.copy_(ours.to_k.weight)
        ref.v_proj_weight.copy_(ours.to_v.weight)
        ref.in_proj_bias.zero_()
        ref.out_proj.weight.copy_(ours.to_out.weight)
        ref.out_proj.bias.copy_(ours.to_out.bias)
    x, slots = torch.randn(2, 16, dim), torch.randn(2, 7, slot_dim)
    expected, _ = ref(x, slots, slots, need_weights=False)
    assert torch.allclose(ours(x, slots), expected, atol=1e-5)


def test_slot_conditioning_depends_on_slots_as_a_set():
    torch.manual_seed(3)
    cfg = demo_unet_config(slot_dim=16)
    model = _unzero(UNet(cfg)).eval()
    z, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    slots = torch.randn(2, 6, 16)
    with torch.no_grad():
        out = model(z, t, slots)
        permuted = model(z, t, slots[:, torch.randperm(6)])
        changed = model(z, t, slots + torch.randn_like(slots))
    assert torch.allclose(out, permuted, atol=1e-5)
    assert (out - changed).abs().max() > 1e-3


def test_down_resblock_halves_and_up_resblock_doubles():
    torch.manual_seed(4)
    emb = torch.randn(2, 40)
    x = torch.randn(2, 8, 12, 12)
    down = ResBlock(8, 8, emb_dim=40, groups=4, resample="down")
    up = ResBlock(8, 8, emb_dim=40, groups=4, resample="up")
    assert down.conv1 is None and up.conv1 is None  # the first conv is replaced by a parameter-free op
    # With the residual branch still zero, the output is the resampled input.
    pooled = x.view(2, 8, 6, 2, 6, 2).mean(dim=(3, 5))
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(down(x, emb), pooled, atol=1e-6)
    assert torch.allclose(up(x, emb), nearest)
    _unzero(down), _unzero(up)
    assert down(x, emb).shape == (2, 8, 6, 6)
    assert up(x, emb).shape == (2, 8, 24, 24)
    with pytest.raises(ValueError):
        ResBlock(8, 16, emb_dim=40, groups=4, resample="down")


def test_resblock_uses_timestep_embedding_and_skip_projection():
    torch.manual_seed(5)
    block = _unzero(ResBlock(8, 16, emb_dim=12, groups=4))
    assert isinstance(block.skip, nn.Conv2d)
    x = torch.randn(1, 8, 6, 6)
    a, b = block(x, torch.randn(1, 12)), block(x, torch.randn(1, 12))
    assert a.shape == (1, 16, 6, 6)
    assert (a - b).abs().max() > 1e-4


def test_bad_inputs_raise_clear_errors():
    model = UNet(demo_unet_config(slot_dim=8))
    z = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="slot_dim"):
        model(z, torch.tensor([1]), torch.randn(1, 4, 9))
    with pytest.raises(ValueError, match="z_t"):
        model(torch.randn(1, 3, 15, 15), torch.tensor([1]), torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="head_channels"):
        UNetConfig(base_channels=48, head_channels=32, norm_groups=16)
