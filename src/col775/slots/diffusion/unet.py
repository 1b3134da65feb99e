"""The slot-conditioned denoising UNet of the latent diffusion decoder (assignment 2, part 2).

An LDM-style UNet (Rombach et al. 2022, as used by SlotDiffusion) written from tensor ops and basic
layers (Conv2d, Linear, GroupNorm, LayerNorm):

    UNet(cfg)(z_t [B,C,P,P], t [B] long, slots [B,K,Dslot]) -> eps_hat [B,C,P,P]

- ResBlock: GroupNorm, SiLU, conv, + projected timestep embedding, GroupNorm, SiLU, dropout, conv,
  plus the (1x1-projected where channels change) input. As the assignment asks, the resampling
  blocks replace the first conv with a parameter-free op: average pooling with stride 2 going down,
  nearest x2 interpolation going up (the skip path is resampled the same way).
- SlotTransformer (LDM's SpatialTransformer): GroupNorm + 1x1 conv in, then per latent position
  LayerNorm + multi-head self-attention, LayerNorm + multi-head cross-attention whose keys and
  values come from the slots, LayerNorm + GEGLU feed-forward (each with a residual), 1x1 conv out,
  plus the input.
- Attention heads are split and merged by hand; the kernel softmax(q k^T / sqrt(d)) v is
  `F.scaled_dot_product_attention`, which computes exactly that (fused, so it is fast on CPU/GPU).
  `nn.MultiheadAttention` is not used (the tests use it only as an independent reference).

Zero-initialised (as in LDM): each ResBlock's last conv, each transformer's output conv and the
UNet's output conv, so every block starts as the identity and the initial prediction is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """Widths and layout of the UNet; `attention_resolutions` are downsample factors of the latent."""

    in_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2, 4, 8)  # 32x32 latent: attention at 16, 8 and 4
    head_channels: int = 32
    slot_dim: int = 64
    transformer_depth: int = 1
    norm_groups: int = 32
    dropout: float = 0.0
    out_channels: int | None = field(default=None)  # None: same as in_channels

    def __post_init__(self) -> None:
        widths = [self.base_channels * m for m in self.channel_mults]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"UNetConfig: every width {widths} must be divisible by norm_groups={self.norm_groups}")
        if any(w % self.head_channels for w in widths):
            raise ValueError(f"UNetConfig: every width {widths} must be divisible by "
                             f"head_channels={self.head_channels}")
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)


def course_unet_config(slot_dim: int = 64) -> UNetConfig:
    """SlotDiffusion's CLEVRTex UNet: base 128, mults 1,2,3,4, two ResBlocks a level, attention at
    16x16, 8x8 and 4x4 of the 32x32 latent, 32 channels a head."""
    return UNetConfig(base_channels=128, channel_mults=(1, 2, 3, 4), num_res_blocks=2,
                      attention_resolutions=(2, 4, 8), head_channels=32, slot_dim=slot_dim)


def demo_unet_config(slot_dim: int = 32) -> UNetConfig:
    """A small UNet for CPU demos: two levels, one ResBlock each, attention at the half-size level."""
    return UNetConfig(base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                      head_channels=16, slot_dim=slot_dim, norm_groups=8)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of timesteps t [B]: [cos(t w_i), sin(t w_i)], w_i = max_period^(-i/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with a timestep embedding; `resample` is "none", "down" (avg-pool) or "up" (nearest)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int,
                 dropout: float = 0.0, resample: str = "none"):
        super().__init__()
        if resample not in ("none", "down", "up"):
            raise ValueError(f"ResBlock: resample must be 'none', 'down' or 'up', got {resample!r}")
        if resample != "none" and in_channels != out_channels:
            raise ValueError("ResBlock: a resampling block keeps its width (its first op has no weights)")
        self.resample = resample
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1) if resample == "none" else None
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        h = self.conv1(h) if self.conv1 is not None else self._resample(h)
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(self._resample(x)) + h


class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries x [B,N,dim] over `context` [B,M,context_dim] (x itself if None)."""

    def __init__(self, dim: int, head_channels: int, context_dim: int | None = None):
        super().__init__()
        if dim % head_channels:
            raise ValueError(f"MultiHeadAttention: dim={dim} is not a multiple of head_channels={head_channels}")
        self.heads = dim // head_channels
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # [B,N,D] -> [B,heads,N,D/heads]
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_channels)) v per head
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLUFeedForward(nn.Module):
    """x -> W2 (a * GELU(g)) with [a, g] = W1 x (Shazeer 2020), hidden width 4*dim."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the slots, and feed-forward, each residual."""

    def __init__(self, dim: int, head_channels: int, slot_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, head_channels)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, head_channels, context_dim=slot_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), slots)
        return x + self.ff(self.norm3(x))


class SlotTransformer(nn.Module):
    """Feature map [B,C,H,W] conditioned on slots [B,K,Dslot]: GroupNorm, 1x1 conv, transformer
    blocks over the H*W positions, 1x1 conv (zero-initialised), plus the input."""

    def __init__(self, channels: int, head_channels: int, slot_dim: int, groups: int, depth: int = 1):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(TransformerBlock(channels, head_channels, slot_dim) for _ in range(depth))
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B,HW,C]
        for block in self.blocks:
            tokens = block(tokens, slots)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class Stage(nn.Sequential):
    """A run of ResBlocks and SlotTransformers, each given what it needs (embedding or slots)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                slots: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x, slots)
        return x


class UNet(nn.Module):
    """Predicts the noise in z_t given the timestep and the slots (epsilon parameterisation)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base, groups, drop = cfg.base_channels, cfg.norm_groups, cfg.dropout
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def transformer(ch: int) -> SlotTransformer:
            return SlotTransformer(ch, cfg.head_channels, cfg.slot_dim, groups, cfg.transformer_depth)

        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base]
        ch, factor = base, 1
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, base * mult, emb_dim, groups, drop)]
                ch = base * mult
                if factor in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                self.down.append(Stage(*layers))
                skip_channels.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(Stage(ResBlock(ch, ch, emb_dim, groups, drop, resample="down")))
                skip_channels.append(ch)
                factor *= 2

        self.mid = Stage(ResBlock(ch, ch, emb_dim, groups, drop), transformer(ch),
                         ResBlock(ch, ch, emb_dim, groups, drop))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), base * mult, emb_dim, groups, drop)]
                ch = base * mult
                if factor in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, ch, emb_dim, groups, drop, resample="up"))
                    factor //= 2
                self.up.append(Stage(*layers))

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1)))

    def _check(self, z_t: torch.Tensor, t: torch.Tensor, slots: torch.Tensor) -> None:
        cfg, stride = self.cfg, 2 ** (len(self.cfg.channel_mults) - 1)
        if z_t.dim() != 4 or z_t.shape[1] != cfg.in_channels or z_t.shape[2] % stride or z_t.shape[3] % stride:
            raise ValueError(f"UNet: z_t must be [B,{cfg.in_channels},H,W] with H and W multiples of {stride}, "
                             f"got {tuple(z_t.shape)}")
        if t.shape != (z_t.shape[0],):
            raise ValueError(f"UNet: t must be [B]={z_t.shape[0]} timesteps, got shape {tuple(t.shape)}")
        if slots.dim() != 3 or slots.shape[0] != z_t.shape[0] or slots.shape[2] != cfg.slot_dim:
            raise ValueError(f"UNet: slots must be [B,K,{cfg.slot_dim}] (UNetConfig.slot_dim), "
                             f"got {tuple(slots.shape)}")

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """z_t [B,C,H,W], t [B] (0-based step), slots [B,K,Dslot] -> predicted noise [B,C,H,W]."""
        if t.dim() == 0:
            t = t.expand(z_t.shape[0])
        self._check(z_t, t, slots)
        emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels))
        h = self.conv_in(z_t)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, slots)
            skips.append(h)
        h = self.mid(h, emb, slots)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, slots)
        return self.out(h)
