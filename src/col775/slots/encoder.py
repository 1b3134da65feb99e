"""The slot encoder both decoders share (Locatello et al. 2020, CLEVR model).

image [B, 3, H, W] -> CNN -> + soft position embedding -> flatten -> LayerNorm, MLP
-> Slot Attention -> (slots [B, K, D], last iteration's attention over slots [B, K, N]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from col775.slots.slot_attention import SLOT_GRADIENTS, SLOT_INITS, SlotAttention


@dataclass
class SlotEncoderConfig:
    """Encoder and Slot Attention settings; the defaults are the paper's CLEVR model with K = 11.

    Conv i has encoder_channels[i] channels and stride encoder_strides[i] ("same" padding).
    `position_init_gain` scales the encoder position embedding's initial weights: at the paper's 1, the
    added position is ~10x the CNN's image content at the start and decides the first attention alone; a
    smaller gain lets content lead from the first step.
    """

    image_size: int = 128
    num_slots: int = 11
    slot_dim: int = 64
    slot_iters: int = 3
    slot_hidden_dim: int = 128
    slot_init: str = "gaussian"
    slot_gradient: str = "full"
    position_init_gain: float = 1.0
    encoder_channels: tuple[int, ...] = (64, 64, 64, 64)
    encoder_strides: tuple[int, ...] = (1, 1, 1, 1)
    encoder_kernel: int = 5

    def __post_init__(self) -> None:
        if self.slot_init not in SLOT_INITS:
            raise ValueError(f"slot_init={self.slot_init!r} is unknown; use one of {SLOT_INITS}")
        if self.slot_gradient not in SLOT_GRADIENTS:
            raise ValueError(f"slot_gradient={self.slot_gradient!r} is unknown; use one of {SLOT_GRADIENTS}")
        if self.position_init_gain < 0:
            raise ValueError(f"position_init_gain must be >= 0, got {self.position_init_gain}")
        check_layers(self, "encoder")
        down = math.prod(self.encoder_strides)
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} is not divisible by the encoder's stride {down}")

    @property
    def feature_size(self) -> int:
        """Side of the encoder's feature map; N = feature_size ** 2 inputs to Slot Attention."""
        return self.image_size // math.prod(self.encoder_strides)


def check_layers(config: object, side: str) -> None:
    """Make `<side>_channels` and `<side>_strides` of a config tuples (a round-tripped YAML/JSON config then
    compares equal) and check them and `<side>_kernel`: equal, non-zero lengths and an odd kernel."""
    for name in (f"{side}_channels", f"{side}_strides"):
        setattr(config, name, tuple(int(x) for x in getattr(config, name)))
    channels, strides = getattr(config, f"{side}_channels"), getattr(config, f"{side}_strides")
    if not channels or len(channels) != len(strides):
        raise ValueError(f"{side}_channels {channels} and {side}_strides {strides} must be non-empty and of equal length")
    if getattr(config, f"{side}_kernel") % 2 == 0:
        raise ValueError(f"{side}_kernel must be odd for 'same' padding")


def position_grid(height: int, width: int) -> Tensor:
    """[H, W, 4] grid of (x, y, 1 - x, 1 - y), each coordinate running 0..1 across the map."""
    y, x = torch.meshgrid(torch.linspace(0.0, 1.0, height), torch.linspace(0.0, 1.0, width), indexing="ij")
    return torch.stack([x, y, 1.0 - x, 1.0 - y], dim=-1)


def glorot_init(module: nn.Module) -> None:
    """Re-initialise every Linear, Conv2d and ConvTranspose2d in `module` as the paper's TensorFlow model is
    (Keras' defaults): Glorot-uniform weights, zero biases. PyTorch's defaults shrink activations about 2.5x
    per ReLU conv layer, so after the encoder's CNN the image content is ~50x smaller than the added
    position embedding, which then decides the attention alone: slots bind to positions, not objects."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear map of the 4-channel position grid to a [B, C, H, W] feature map."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4, channels)
        self.register_buffer("grid", position_grid(size, size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(self.grid).permute(2, 0, 1)  # [C, H, W] broadcast over the batch


class SlotEncoder(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> (slots [B, K, D], attention [B, K, N])."""

    def __init__(self, config: SlotEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch, pad = 3, config.encoder_kernel // 2
        for out_ch, stride in zip(config.encoder_channels, config.encoder_strides):
            layers += [nn.Conv2d(in_ch, out_ch, config.encoder_kernel, stride, pad), nn.ReLU()]
            in_ch = out_ch
        self.cnn = nn.Sequential(*layers)
        self.position = SoftPositionEmbed(in_ch, config.feature_size)
        self.norm = nn.LayerNorm(in_ch)
        self.mlp = nn.Sequential(nn.Linear(in_ch, in_ch), nn.ReLU(), nn.Linear(in_ch, in_ch))
        self.slot_attention = SlotAttention(
            num_slots=config.num_slots, dim=config.slot_dim, input_dim=in_ch, iters=config.slot_iters,
            hidden_dim=config.slot_hidden_dim, init=config.slot_init, gradient=config.slot_gradient,
        )  # fmt: skip
        glorot_init(self)
        with torch.no_grad():
            self.position.proj.weight.mul_(config.position_init_gain)

    def features(self, images: Tensor) -> Tensor:
        """Slot Attention's inputs [B, N, C]."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"the slot encoder expects images [B, 3, {size}, {size}] in [-1, 1], got {tuple(images.shape)}; "
                "resize the data or set image_size in the config"
            )
        features = self.position(self.cnn(images)).flatten(2).transpose(1, 2)
        return self.mlp(self.norm(features))

    def forward(self, images: Tensor, slots_init: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.slot_attention(self.features(images), slots_init)

    def attention_masks(self, images: Tensor) -> Tensor:
        """Last-iteration attention [B, K, H, W] (sums to 1 over K): each slot's sqrt(N) x sqrt(N) map,
        resized bilinearly to the image (a convex combination of maps that sum to 1 still sums to 1)."""
        _, attn = self(images)
        side, size = self.config.feature_size, self.config.image_size
        maps = attn.view(attn.shape[0], attn.shape[1], side, side)
        if side == size:
            return maps
        return nn.functional.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
