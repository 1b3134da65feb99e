"""Slot Attention autoencoder with a spatial broadcast decoder (Locatello et al. 2020, CLEVR model).

image -> CNN -> + soft position embedding -> flatten -> LayerNorm, MLP -> Slot Attention
-> each slot broadcast to a small grid + position embedding -> transposed CNN -> 4 channels
per slot: channel 0 is a mask logit (softmax over slots), channels 1..3 the slot's RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from col775.slots.slot_attention import SLOT_INITS, SlotAttention


@dataclass
class SlotAutoencoderConfig:
    """Architecture of a SlotAutoencoder; the defaults are the paper's CLEVR model with K = 11.

    Encoder conv i has encoder_channels[i] channels and stride encoder_strides[i] ("same"
    padding); decoder transposed conv i likewise, followed by a 3x3 conv to 4 channels. The
    decoder must grow decoder_broadcast to image_size: broadcast * prod(strides) == image_size.
    """

    image_size: int = 128
    num_slots: int = 11
    slot_dim: int = 64
    slot_iters: int = 3
    slot_hidden_dim: int = 128
    slot_init: str = "gaussian"
    encoder_channels: tuple[int, ...] = (64, 64, 64, 64)
    encoder_strides: tuple[int, ...] = (1, 1, 1, 1)
    encoder_kernel: int = 5
    decoder_broadcast: int = 8
    decoder_channels: tuple[int, ...] = (64, 64, 64, 64, 64)
    decoder_strides: tuple[int, ...] = (2, 2, 2, 2, 1)
    decoder_kernel: int = 5

    def __post_init__(self) -> None:
        # Lists (from YAML/JSON) become tuples so a round-tripped config compares equal.
        for name in ("encoder_channels", "encoder_strides", "decoder_channels", "decoder_strides"):
            setattr(self, name, tuple(int(x) for x in getattr(self, name)))
        if self.slot_init not in SLOT_INITS:
            raise ValueError(f"slot_init={self.slot_init!r} is unknown; use one of {SLOT_INITS}")
        for side in ("encoder", "decoder"):
            channels, strides = getattr(self, f"{side}_channels"), getattr(self, f"{side}_strides")
            if not channels or len(channels) != len(strides):
                raise ValueError(
                    f"{side}_channels {channels} and {side}_strides {strides} must be non-empty "
                    "and of equal length"
                )
            if getattr(self, f"{side}_kernel") % 2 == 0:
                raise ValueError(f"{side}_kernel must be odd for 'same' padding")
        down = math.prod(self.encoder_strides)
        if self.image_size % down:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the encoder's stride {down}"
            )
        up = self.decoder_broadcast * math.prod(self.decoder_strides)
        if up != self.image_size:
            raise ValueError(
                f"decoder grows {self.decoder_broadcast} to {up}, not to {self.image_size}; "
                "change decoder_broadcast or decoder_strides"
            )

    @property
    def feature_size(self) -> int:
        """Side of the encoder's feature map; N = feature_size ** 2 inputs to Slot Attention."""
        return self.image_size // math.prod(self.encoder_strides)

    @classmethod
    def from_dict(cls, values: dict) -> SlotAutoencoderConfig:
        """Build from a dict (dataclasses.asdict's, a YAML file's); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown SlotAutoencoderConfig keys {unknown}; known: {sorted(known)}"
            )
        return cls(**values)


@dataclass
class TrainRecipe:
    """Optimisation settings: Adam at `lr`, linear warm-up, then exponential decay."""

    lr: float = 4e-4
    warmup_steps: int = 10_000
    decay_rate: float = 0.5
    decay_steps: int = 100_000
    batch_size: int = 64
    num_steps: int = 500_000

    def lr_at(self, step: int) -> float:
        """Learning rate for optimiser step `step` (0-based), as the paper's training script:
        lr * min(1, step / warmup_steps) * decay_rate ** (step / decay_steps)."""
        warmup = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return self.lr * warmup * self.decay_rate ** (step / self.decay_steps)


def course_config() -> SlotAutoencoderConfig:
    """The paper's CLEVR object-discovery model at 128x128 with K = 11, slot size 64, T = 3."""
    return SlotAutoencoderConfig()


def course_recipe() -> TrainRecipe:
    """The paper's recipe: Adam 4e-4, 10k warm-up, x0.5 per 100k steps, batch 64, 500k steps."""
    return TrainRecipe()


def demo_config() -> SlotAutoencoderConfig:
    """A 32x32 model sized for a CPU: stride-2 encoder (N = 16x16), 8x8 broadcast, two
    upsampling layers, K = 7 slots (scenes of up to 6 objects plus background)."""
    return SlotAutoencoderConfig(
        image_size=32,
        num_slots=7,
        slot_dim=32,
        slot_hidden_dim=64,
        encoder_channels=(32, 32, 32, 32),
        encoder_strides=(2, 1, 1, 1),
        decoder_broadcast=8,
        decoder_channels=(32, 32),
        decoder_strides=(2, 2),
    )


def demo_recipe() -> TrainRecipe:
    """A short CPU schedule with the same shape as the course recipe."""
    return TrainRecipe(lr=4e-4, warmup_steps=100, decay_steps=1_000, batch_size=32, num_steps=1_500)


def position_grid(height: int, width: int) -> Tensor:
    """[H, W, 4] grid of (x, y, 1 - x, 1 - y), each coordinate running 0..1 across the map."""
    y, x = torch.meshgrid(
        torch.linspace(0.0, 1.0, height), torch.linspace(0.0, 1.0, width), indexing="ij"
    )
    return torch.stack([x, y, 1.0 - x, 1.0 - y], dim=-1)


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear map of the 4-channel position grid to a [B, C, H, W] feature map."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4, channels)
        self.register_buffer("grid", position_grid(size, size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(self.grid).permute(2, 0, 1)  # [C, H, W] broadcast over the batch


class SlotEncoder(nn.Module):
    """images [B, 3, H, W] -> Slot Attention inputs [B, N, C] (CNN, position, LayerNorm + MLP)."""

    def __init__(self, config: SlotAutoencoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, pad = 3, config.encoder_kernel // 2
        for out_ch, stride in zip(config.encoder_channels, config.encoder_strides):
            layers += [nn.Conv2d(in_ch, out_ch, config.encoder_kernel, stride, pad), nn.ReLU()]
            in_ch = out_ch
        self.cnn = nn.Sequential(*layers)
        self.position = SoftPositionEmbed(in_ch, config.feature_size)
        self.norm = nn.LayerNorm(in_ch)
        self.mlp = nn.Sequential(nn.Linear(in_ch, in_ch), nn.ReLU(), nn.Linear(in_ch, in_ch))
        self.out_dim = in_ch

    def forward(self, images: Tensor) -> Tensor:
        features = self.position(self.cnn(images)).flatten(2).transpose(1, 2)  # [B, N, C]
        return self.mlp(self.norm(features))


class SpatialBroadcastDecoder(nn.Module):
    """slots [B, K, D] -> per-slot outputs [B, K, 4, H, W] (Watters et al. 2019)."""

    def __init__(self, config: SlotAutoencoderConfig) -> None:
        super().__init__()
        self.broadcast = config.decoder_broadcast
        self.position = SoftPositionEmbed(config.slot_dim, config.decoder_broadcast)
        layers: list[nn.Module] = []
        in_ch, k = config.slot_dim, config.decoder_kernel
        for out_ch, stride in zip(config.decoder_channels, config.decoder_strides):
            # padding k//2 with output_padding stride-1 gives exactly stride x the input size.
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, k, stride, k // 2, output_padding=stride - 1),
                nn.ReLU(),
            ]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 4, 3, 1, 1))
        self.cnn = nn.Sequential(*layers)

    def forward(self, slots: Tensor) -> Tensor:
        batch, num_slots, dim = slots.shape
        size = self.broadcast
        grid = slots.reshape(batch * num_slots, dim, 1, 1).expand(-1, -1, size, size)
        out = self.cnn(self.position(grid))  # [B*K, 4, H, W]
        return out.view(batch, num_slots, *out.shape[1:])


def slot_attention_for(config: SlotAutoencoderConfig, input_dim: int) -> SlotAttention:
    """The Slot Attention module a config describes, over encoder features of `input_dim`."""
    return SlotAttention(
        num_slots=config.num_slots,
        dim=config.slot_dim,
        input_dim=input_dim,
        iters=config.slot_iters,
        hidden_dim=config.slot_hidden_dim,
        init=config.slot_init,
    )


class SlotAutoencoder(nn.Module):
    """Encoder + Slot Attention + spatial broadcast decoder, trained on reconstruction alone."""

    def __init__(self, config: SlotAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SlotEncoder(config)
        self.slot_attention = slot_attention_for(config, self.encoder.out_dim)
        self.decoder = SpatialBroadcastDecoder(config)

    def encode(self, images: Tensor, slots_init: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> (slots [B, K, D], attn [B, K, N])."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"SlotAutoencoder expects images [B, 3, {size}, {size}], "
                f"got {tuple(images.shape)}; "
                "resize the data or set image_size in the config"
            )
        return self.slot_attention(self.encoder(images), slots_init)

    def decode(self, slots: Tensor) -> dict[str, Tensor]:
        """Any slot set [B, K', D] -> recon [B, 3, H, W], masks [B, K', 1, H, W],
        slot_recons [B, K', 3, H, W]; K' may differ from the trained K (compositional scenes)."""
        if slots.dim() != 3 or slots.shape[-1] != self.config.slot_dim:
            raise ValueError(
                f"decode expects slots [B, K, {self.config.slot_dim}], got {tuple(slots.shape)}"
            )
        out = self.decoder(slots)  # [B, K, 4, H, W]
        masks = out[:, :, :1].softmax(dim=1)
        slot_recons = out[:, :, 1:]
        recon = (masks * slot_recons).sum(dim=1)
        return {"recon": recon, "masks": masks, "slot_recons": slot_recons}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Returns recon, masks, slot_recons (see decode), slots [B, K, D] and attn [B, K, N]."""
        slots, attn = self.encode(images)
        return {**self.decode(slots), "slots": slots, "attn": attn}


def reconstruction_loss(recon: Tensor, images: Tensor) -> Tensor:
    """Mean squared error over every pixel and channel (the assignment's loss, up to a factor 3)."""
    return F.mse_loss(recon, images)
