"""Slot Attention autoencoder with a spatial broadcast decoder (Locatello et al. 2020, CLEVR model).

The slot encoder (encoder.py) -> slots; each slot broadcast to a small grid + position embedding
-> transposed CNN -> 4 channels per slot: channel 0 is a mask logit (softmax over slots), channels
1..3 the slot's RGB. Trained on the reconstruction MSE (the paper's loss), plus, when the training loop
sets `mask_entropy_weight`, the masks' entropy (`mask_entropy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from col775.slots.encoder import SlotEncoder, SlotEncoderConfig, SoftPositionEmbed, check_layers, glorot_init


@dataclass
class SlotAutoencoderConfig(SlotEncoderConfig):
    """Architecture of a SlotAutoencoder: the encoder's settings, then the decoder's.

    Decoder transposed conv i has decoder_channels[i] channels and stride decoder_strides[i],
    followed by a 3x3 conv to 4 channels. The decoder must grow decoder_broadcast to image_size:
    broadcast * prod(strides) == image_size.
    """

    decoder_broadcast: int = 8
    decoder_channels: tuple[int, ...] = (64, 64, 64, 64, 64)
    decoder_strides: tuple[int, ...] = (2, 2, 2, 2, 1)
    decoder_kernel: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layers(self, "decoder")
        up = self.decoder_broadcast * math.prod(self.decoder_strides)
        if up != self.image_size:
            raise ValueError(
                f"decoder grows {self.decoder_broadcast} to {up}, not to {self.image_size}; "
                "change decoder_broadcast or decoder_strides"
            )

    @classmethod
    def from_dict(cls, values: dict) -> SlotAutoencoderConfig:
        """Build from a dict (dataclasses.asdict's, a YAML file's); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SlotAutoencoderConfig keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def course_config() -> SlotAutoencoderConfig:
    """The paper's CLEVR object-discovery model at 128x128 with K = 11, slot size 64, T = 3."""
    return SlotAutoencoderConfig()


def demo_config() -> SlotAutoencoderConfig:
    """A 32x32 model sized for a CPU: stride-2 encoder (N = 16x16), 8x8 broadcast, two
    upsampling layers, K = 7 slots (scenes of up to 6 objects plus background)."""
    return SlotAutoencoderConfig(
        image_size=32, num_slots=7, slot_dim=32, slot_hidden_dim=64, encoder_channels=(32, 32, 32, 32),
        encoder_strides=(2, 1, 1, 1), decoder_broadcast=8, decoder_channels=(32, 32), decoder_strides=(2, 2),
    )  # fmt: skip


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
        glorot_init(self)

    def forward(self, slots: Tensor) -> Tensor:
        batch, num_slots, dim = slots.shape
        size = self.broadcast
        grid = slots.reshape(batch * num_slots, dim, 1, 1).expand(-1, -1, size, size)
        out = self.cnn(self.position(grid))  # [B*K, 4, H, W]
        return out.view(batch, num_slots, *out.shape[1:])


def mask_entropy(masks: Tensor) -> Tensor:
    """Mean over pixels of the entropy (nats) of soft masks [B, K, 1, H, W] over their K slots: 0 where one
    slot holds a pixel alone, log 2 where two share it equally."""
    masks = masks.float().clamp_min(1e-6)
    return -(masks * masks.log()).sum(dim=1).mean()


class SlotAutoencoder(nn.Module):
    """Slot encoder + spatial broadcast decoder, trained on reconstruction (a `SlotModel`).

    `mask_entropy_weight` (set by the training loop each step, 0 = off) adds that times `mask_entropy` of
    the masks to the training loss: spare slots that share an object with the slot holding it, half each,
    cost the reconstruction nothing, and their even split is what cuts the object in the argmax segments;
    the penalty makes one slot take each pixel. It applies in training mode only, so validation scores
    reconstruction alone."""

    label = "spatial broadcast decoder"

    def __init__(self, config: SlotAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SlotEncoder(config)
        self.decoder = SpatialBroadcastDecoder(config)
        self.mask_entropy_weight = 0.0

    def encode(self, images: Tensor, slots_init: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> (slots [B, K, D], attn [B, K, N])."""
        return self.encoder(images, slots_init)

    def decode_parts(self, slots: Tensor) -> dict[str, Tensor]:
        """Any slot set [B, K', D] -> recon [B, 3, H, W], masks [B, K', 1, H, W],
        slot_recons [B, K', 3, H, W]; K' may differ from the trained K (compositional scenes)."""
        if slots.dim() != 3 or slots.shape[-1] != self.config.slot_dim:
            raise ValueError(f"decode expects slots [B, K, {self.config.slot_dim}], got {tuple(slots.shape)}")
        out = self.decoder(slots)  # [B, K, 4, H, W]
        masks = out[:, :, :1].softmax(dim=1)
        slot_recons = out[:, :, 1:]
        recon = (masks * slot_recons).sum(dim=1)
        return {"recon": recon, "masks": masks, "slot_recons": slot_recons}

    def decode(self, slots: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Any slot set [B, K', D] -> image [B, 3, H, W] (deterministic: `generator` is not used)."""
        return self.decode_parts(slots)["recon"]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Returns recon, masks, slot_recons (see decode_parts), slots [B, K, D] and attn [B, K, N]."""
        slots, attn = self.encode(images)
        return {**self.decode_parts(slots), "slots": slots, "attn": attn}

    def loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error over every pixel and channel (the assignment's loss, up to a factor 3), plus
        in training the weighted mask entropy when its weight is set."""
        out = self(images)
        mse = F.mse_loss(out["recon"].float(), images)  # float32 under bf16 autocast too
        if not (self.training and self.mask_entropy_weight > 0):
            return mse
        return mse + self.mask_entropy_weight * mask_entropy(out["masks"])

    def masks(self, images: Tensor) -> Tensor:
        """The decoder's alpha masks [B, K, H, W] (sum to 1 over K)."""
        return self(images)["masks"][:, :, 0]

    def explain(self, images: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """recon [B, 3, H, W], masks [B, K, H, W], slot_images [B, K, 3, H, W]."""
        out = self(images)
        return {"recon": out["recon"], "masks": out["masks"][:, :, 0], "slot_images": out["slot_recons"]}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def prepare(self, images: Tensor) -> dict[str, float]:
        """Nothing is fixed from the data before training."""
        return {}
