"""What the training loop, the evaluation and the study need of a model, whatever its decoder.

Two models implement it: `sbd.SlotAutoencoder` (spatial broadcast decoder) and
`diffusion.model.SlotDiffusion` (latent diffusion decoder). Everything around them is written once
against this interface.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class SlotModel(Protocol):
    label: str  # the decoder's name in reports

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> (slots [B, K, D], attention over slots [B, K, N])."""

    def decode(self, slots: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Any slot set [B, K', D] -> images [B, 3, H, W] in about [-1, 1] (sampled from `generator`'s noise
        where the decoder samples)."""

    def loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training loss of a batch (its randomness drawn from `generator` when one is given)."""

    def masks(self, images: Tensor) -> Tensor:
        """Soft segmentation [B, K, H, W] summing to 1 over the K slots."""

    def explain(self, images: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """recon [B, 3, H, W], masks [B, K, H, W] and, where the decoder has them, slot_images [B, K, 3, H, W]."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates."""

    def prepare(self, images: Tensor) -> dict[str, float]:
        """Fix what the model takes from the first training batch before training; returns it by name."""
