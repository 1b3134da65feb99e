"""What the training loop, the evaluation and the study need of a model, whatever its decoder.

Two models implement it: `sbd.SlotAutoencoder` (spatial broadcast decoder) and
`diffusion.model.SlotDiffusion` (latent diffusion decoder). Everything around them is written once
against this interface.

Where a decoder draws random numbers (the diffusion decoder's timesteps and noise), a caller may give
one generator per example (`example_generators`), seeded by the example's index in its split: each
example then draws the same numbers in any batch, on any rank, which is what makes a run under
torchrun train and score like one process (a loss or a sample no longer depends on its batch).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from col775.slots.diffusion.ddpm import Noise

# What a stream of per-example randomness is for, the first word of its seeds (`example_generators`).
TRAIN_STREAM, VAL_LOSS_STREAM, SAMPLE_STREAM = 0, 1, 2


def example_generators(indices: Iterable[int], *stream: int) -> list[torch.Generator]:
    """One CPU generator per example, seeded by (`stream`..., its index) through numpy's SeedSequence,
    so that different streams and indices give unrelated numbers (e.g. stream = (TRAIN_STREAM, seed, step))."""
    seeds = (np.random.SeedSequence([*stream, int(index)]).generate_state(1, np.uint64)[0] for index in indices)
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


class SlotModel(Protocol):
    label: str  # the decoder's name in reports

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> (slots [B, K, D], attention over slots [B, K, N])."""

    def decode(self, slots: Tensor, generator: Noise = None) -> Tensor:
        """Any slot set [B, K', D] -> images [B, 3, H, W] in about [-1, 1] (sampled from `generator`'s noise,
        or from one generator per example, where the decoder samples)."""

    def loss(self, images: Tensor, generator: Noise = None) -> Tensor:
        """The training loss of a batch, a mean over its examples (its randomness drawn from `generator`, or
        from one generator per example, when given)."""

    def masks(self, images: Tensor) -> Tensor:
        """Soft segmentation [B, K, H, W] summing to 1 over the K slots."""

    def explain(self, images: Tensor, generator: Noise = None) -> dict[str, Tensor]:
        """recon [B, 3, H, W], masks [B, K, H, W] and, where the decoder has them, slot_images [B, K, 3, H, W]."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates."""

    def prepare(self, images: Tensor) -> dict[str, float]:
        """Fix what the model takes from the first training batch before training; returns it by name."""
