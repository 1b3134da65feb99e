"""Settings of one Slot Attention run and of its study (`col775 slots train|study`).

The defaults are the course model after Locatello et al. (2020): 128x128 images, K = 11
slots of size 64, T = 3 iterations, Adam at 4e-4 with a linear warm-up and exponential
decay, batch 64. Training is counted in steps, grouped into "epochs" of `steps_per_epoch`
steps (0 = one pass over the training set), because the paper's schedule is in steps and
a run folder checkpoints and logs once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from col775.slots.autoencoder import SlotAutoencoderConfig, TrainRecipe

DECODERS = ("sbd", "diffusion", "both")

# Fields that change only what the study does after training, not the trained model.
STUDY_FIELDS = ("figure_images", "fid", "fid_max_images", "fid_batch_size", "fid_method", "library_max_images")


@dataclass
class SlotsConfig:
    # data
    data: str | None = None  # course layout or CLEVRTex root; None generates scenes (cached)
    image_size: int = 128
    n_train: int = 10_000  # generated scenes only
    n_val: int = 1_000
    min_objects: int = 1
    max_objects: int = 10
    max_train: int = 0  # keep the first N training images of `data` (0 keeps all)
    max_val: int = 0
    mask_background: str = "border"  # course masks: "border" or the background colour as "R,G,B"
    masks: bool = True  # --no-masks: `data` may have no masks on purpose (no ARI, FG-ARI or mIoU then)
    crop: str = "auto"  # auto: centre 192x192 of 320x240 frames (CLEVRTex's), square frames whole | none | "l,t,r,b"
    cache_dir: str | None = None  # generated scenes: <cache_dir>/scenes, decoded arrays: /scene-arrays (default ~/.cache/col775)
    num_workers: int = 0
    # model
    decoder: str = "sbd"  # sbd (spatial broadcast) | diffusion | both (and a table comparing them)
    num_slots: int = 11
    slot_dim: int = 64
    slot_iters: int = 3
    slot_hidden_dim: int = 128
    slot_init: str = "gaussian"  # gaussian | learned
    encoder_channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64])
    encoder_strides: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    encoder_kernel: int = 5
    decoder_broadcast: int = 8
    decoder_channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64, 64])
    decoder_strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2, 1])
    decoder_kernel: int = 5
    # optimisation
    batch_size: int = 64
    eval_batch_size: int = 64
    epochs: int = 100
    steps_per_epoch: int = 1_000  # 0 = one pass over the training set
    lr: float = 4e-4
    warmup_steps: int = 10_000
    decay_rate: float = 0.5  # the learning rate is multiplied by decay_rate every decay_steps
    decay_steps: int = 100_000
    grad_clip: float = 0.0  # 0 turns clipping off
    val_every: int = 1  # epochs between validations (the last epoch always validates)
    # machinery
    seed: int = 0
    device: str = "auto"
    # study
    figure_images: int = 4  # validation images shown with every slot's mask
    fid: bool = True
    fid_max_images: int = 0  # generated images for FID; 0 = as many as the validation set has
    fid_batch_size: int = 32
    fid_method: str = "fast"  # fast (exact, via small eigenproblems) | clean-fid (its scipy sqrtm, minutes on a CPU)
    library_max_images: int = 0  # training images whose slots form the library; 0 = all

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.fid_method not in ("fast", "clean-fid"):
            raise ValueError(f"fid_method must be 'fast' or 'clean-fid', got {self.fid_method!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "val_every", "num_slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data is None and (self.n_train < 1 or self.n_val < 2):
            raise ValueError(f"generated data needs n_train >= 1 and n_val >= 2, got {self.n_train} and {self.n_val}")

    def model_config(self) -> SlotAutoencoderConfig:
        """The autoencoder's architecture (it checks that the decoder reaches image_size)."""
        return SlotAutoencoderConfig(
            image_size=self.image_size, num_slots=self.num_slots, slot_dim=self.slot_dim,
            slot_iters=self.slot_iters, slot_hidden_dim=self.slot_hidden_dim, slot_init=self.slot_init,
            encoder_channels=tuple(self.encoder_channels), encoder_strides=tuple(self.encoder_strides),
            encoder_kernel=self.encoder_kernel, decoder_broadcast=self.decoder_broadcast,
            decoder_channels=tuple(self.decoder_channels), decoder_strides=tuple(self.decoder_strides),
            decoder_kernel=self.decoder_kernel,
        )  # fmt: skip

    def recipe(self) -> TrainRecipe:
        """The learning-rate schedule (warm-up, then decay), in optimiser steps."""
        return TrainRecipe(
            lr=self.lr, warmup_steps=self.warmup_steps, decay_rate=self.decay_rate,
            decay_steps=self.decay_steps, batch_size=self.batch_size,
        )  # fmt: skip

    def background(self) -> str | tuple[int, int, int]:
        """`mask_background` as `load_dataset` takes it."""
        if self.mask_background == "border":
            return "border"
        parts = self.mask_background.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) < 256 for p in parts):
            raise ValueError(f"mask_background must be 'border' or 'R,G,B' (0-255), got {self.mask_background!r}")
        r, g, b = (int(p) for p in parts)
        return (r, g, b)


def run_fields(config: SlotsConfig) -> dict:
    """The settings one training run depends on (the study-only fields left out)."""
    from col775.core.config import to_dict

    return {k: v for k, v in to_dict(config).items() if k not in STUDY_FIELDS}
