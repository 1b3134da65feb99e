"""Settings of one Slot Attention run, for either decoder, and how presets give them.

One dataclass holds every setting: the data, the slot encoder, each decoder's own fields
(spatial broadcast: `decoder_*`; latent diffusion: `vae*`, `unet_*`, the noise schedule),
the optimisation and the evaluation. A run's config.yaml keeps the fields its decoder uses
(`run_fields`), so a setting of the other decoder never blocks a resume.

A preset (`col775/configs/slots/<name>.yaml`) gives shared values at the top level and may give
per-decoder values under `sbd:` and `diffusion:` (the two decoders train at different learning
rates and batch sizes); command-line flags come last and reach every decoder's run.

The defaults are the course model after Locatello et al. (2020): 128x128 images, K = 11 slots
of size 64, T = 3 iterations, Adam at 4e-4 with a linear warm-up and exponential decay, batch
64. Training is counted in steps, grouped into "epochs" of `steps_per_epoch` steps (0 = one
pass over the training set), because the paper's schedule is in steps and a run folder
checkpoints and logs once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from col775.core.config import load_config, to_dict
from col775.slots.diffusion.ddpm import SCHEDULES
from col775.slots.diffusion.model import SAMPLERS
from col775.slots.diffusion.unet import UNetConfig
from col775.slots.encoder import SlotEncoderConfig
from col775.slots.sbd import SlotAutoencoderConfig
from col775.slots.scenes import SCENE_STYLES

DECODERS = ("sbd", "diffusion")
VAE_ARCHS = ("course", "small", "tiny")

# The spatial broadcast decoder's own fields.
SBD_FIELDS = (
    "decoder_broadcast", "decoder_channels", "decoder_strides", "decoder_kernel", "mask_entropy_weight",
    "mask_entropy_start", "mask_entropy_full",
)  # fmt: skip
# The VAE run's own fields (with DATA_FIELDS): a VAE is shared by every diffusion setting.
VAE_FIELDS = (
    "vae_arch", "vae_num_codes", "vae_epochs", "vae_steps_per_epoch", "vae_batch_size", "vae_lr",
    "vae_restart_every",
)  # fmt: skip
# The latent diffusion decoder's own fields.
DIFFUSION_FIELDS = ("vae",) + VAE_FIELDS + (
    "unet_base_channels", "unet_channel_mults", "unet_num_res_blocks", "unet_attention_resolutions",
    "unet_head_channels", "unet_norm_groups", "unet_transformer_depth", "unet_dropout", "num_timesteps",
    "beta_start", "beta_end", "beta_schedule", "latent_scale",
)  # fmt: skip
# The data fields, with the seed and the device: what a VAE run shares with a decoder run.
DATA_FIELDS = (
    "data", "image_size", "n_train", "n_val", "min_objects", "max_objects", "scene_style", "max_train", "max_val",
    "mask_background", "masks", "crop", "cache_dir", "num_workers", "seed", "device",
)  # fmt: skip
# Fields that change only what is done with a trained model, not the model.
EVAL_FIELDS = (
    "figure_images", "fid", "fid_max_images", "fid_batch_size", "fid_method", "library_max_images", "sampler",
    "sampler_steps", "recon_max_images",
)  # fmt: skip
# Fields of the study alone: which runs it trains, not how one run trains.
STUDY_FIELDS = ("scene_styles",)


@dataclass
class SlotsConfig:
    # data
    data: str | None = None  # course layout or CLEVRTex root; None generates scenes (cached)
    image_size: int = 128
    n_train: int = 10_000  # generated scenes only
    n_val: int = 1_000
    min_objects: int = 1
    max_objects: int = 10
    scene_style: str = "textured"  # generated scenes: textured | simple
    max_train: int = 0  # keep the first N training images of `data` (0 keeps all)
    max_val: int = 0
    mask_background: str = "border"  # course masks: "border" or the background colour as "R,G,B"
    masks: bool = True  # --no-masks: `data` may have no masks on purpose (no ARI, FG-ARI or mIoU then)
    crop: str = "auto"  # auto: centre 192x192 of 320x240 frames (CLEVRTex's), square frames whole | none | "l,t,r,b"
    cache_dir: str | None = None  # generated scenes: <cache_dir>/scenes, decoded arrays: /scene-arrays (default ~/.cache/col775)
    num_workers: int = 0
    # slot encoder (both decoders)
    decoder: str = "sbd"  # sbd (spatial broadcast) | diffusion (latent diffusion)
    num_slots: int = 11
    slot_dim: int = 64
    slot_iters: int = 3
    slot_hidden_dim: int = 128
    slot_init: str = "gaussian"  # gaussian | learned
    slot_gradient: str = "full"  # through every iteration | fixed-point (the last only) | bi-level (BO-QSA)
    position_init_gain: float = 1.0  # x the encoder position embedding's initial weights (1 = the paper's)
    encoder_channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64])
    encoder_strides: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    encoder_kernel: int = 5
    # spatial broadcast decoder
    decoder_broadcast: int = 8
    decoder_channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64, 64])
    decoder_strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2, 1])
    decoder_kernel: int = 5
    # a training penalty on the decoder's soft masks: their mean per-pixel entropy over slots, times a weight
    # that ramps linearly from 0 at step mask_entropy_start to mask_entropy_weight at step mask_entropy_full
    # (0 = off, the paper's loss); validation and checkpoint choice use the reconstruction MSE alone
    mask_entropy_weight: float = 0.0
    mask_entropy_start: int = 0
    mask_entropy_full: int = 0
    # latent diffusion decoder: the frozen VAE, a state_dict file (the course's vae_checkpoint.pth or
    # a vae.pt from `train-vae`; its architecture is read from its shapes); None trains one first
    # into <out>/vae with the vae_* settings below
    vae: str | None = None
    vae_arch: str = "course"  # course (VQVAE()) | small (VQVAE.small()) | tiny (half of small's widths)
    vae_num_codes: int = 4096
    vae_epochs: int = 20
    vae_steps_per_epoch: int = 0  # 0 = one pass over the training set
    vae_batch_size: int = 32
    vae_lr: float = 2e-4
    vae_restart_every: int = 200  # optimiser steps between dead-code restarts; 0 turns them off
    unet_base_channels: int = 128  # SlotDiffusion's CLEVRTex UNet by default
    unet_channel_mults: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    unet_num_res_blocks: int = 2
    unet_attention_resolutions: list[int] = field(default_factory=lambda: [2, 4, 8])
    unet_head_channels: int = 32
    unet_norm_groups: int = 32
    unet_transformer_depth: int = 1
    unet_dropout: float = 0.0
    num_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "linear"  # linear (the assignment's) | scaled_linear
    latent_scale: float = 0.0  # multiplies VAE latents; 0 = 1/std of the first training batch
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
    compile: bool = False  # torch.compile the trainable parts for training (on the CPU it needs a C++ compiler)
    bf16: bool = False  # training steps under bf16 autocast (CUDA, or a CPU with bf16 arithmetic); scores stay float32
    # evaluation
    figure_images: int = 4  # validation images shown with every slot's mask
    fid: bool = True
    fid_max_images: int = 0  # generated images for FID; 0 = as many as the validation set has
    fid_batch_size: int = 32
    fid_method: str = "fast"  # fast (exact, via small eigenproblems) | clean-fid (its scipy sqrtm, minutes on a CPU)
    library_max_images: int = 0  # training images whose slots form the library; 0 = all
    sampler: str = "ancestral"  # diffusion: ancestral (DDPM Algorithm 2, all T steps) | ddim
    sampler_steps: int = 50  # DDIM steps (ancestral sampling always takes num_timesteps)
    recon_max_images: int = 0  # val images reconstructed for the MSE; 0 = all
    # study: every decoder once per generated scene style listed; [] = scene_style alone
    scene_styles: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        checks = {
            "decoder": (self.decoder, DECODERS), "fid_method": (self.fid_method, ("fast", "clean-fid")),
            "vae_arch": (self.vae_arch, VAE_ARCHS), "sampler": (self.sampler, SAMPLERS),
            "beta_schedule": (self.beta_schedule, tuple(SCHEDULES)), "scene_style": (self.scene_style, SCENE_STYLES),
        }  # fmt: skip
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "val_every", "num_slots", "vae_epochs",
                     "vae_batch_size", "vae_num_codes"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mask_entropy_weight < 0 or not 0 <= self.mask_entropy_start <= self.mask_entropy_full:
            raise ValueError(
                f"mask entropy needs weight >= 0 and 0 <= start <= full, got {self.mask_entropy_weight}, "
                f"{self.mask_entropy_start}, {self.mask_entropy_full}"
            )
        if self.sampler == "ddim" and not 1 <= self.sampler_steps <= self.num_timesteps:
            raise ValueError(f"sampler_steps must be in 1..num_timesteps={self.num_timesteps}, got {self.sampler_steps}")
        if self.data is None and (self.n_train < 1 or self.n_val < 2):
            raise ValueError(f"generated data needs n_train >= 1 and n_val >= 2, got {self.n_train} and {self.n_val}")
        unknown = [style for style in self.scene_styles if style not in SCENE_STYLES]
        if unknown or len(set(self.scene_styles)) != len(self.scene_styles):
            raise ValueError(f"scene_styles takes each of {SCENE_STYLES} at most once, got {self.scene_styles}")
        if self.data and self.scene_styles:
            raise ValueError(f"scene styles are kinds of generated scenes, and --data {self.data} is not generated: "
                             "drop --scene-styles (or scene_styles in the preset)")

    def encoder_config(self) -> SlotEncoderConfig:
        """The slot encoder's settings (both decoders use the same)."""
        return SlotEncoderConfig(
            image_size=self.image_size, num_slots=self.num_slots, slot_dim=self.slot_dim,
            slot_iters=self.slot_iters, slot_hidden_dim=self.slot_hidden_dim, slot_init=self.slot_init,
            slot_gradient=self.slot_gradient, position_init_gain=self.position_init_gain,
            encoder_channels=tuple(self.encoder_channels), encoder_strides=tuple(self.encoder_strides),
            encoder_kernel=self.encoder_kernel,
        )  # fmt: skip

    def model_config(self) -> SlotAutoencoderConfig:
        """The spatial-broadcast autoencoder's architecture (it checks that the decoder reaches image_size)."""
        return SlotAutoencoderConfig(
            **vars(self.encoder_config()), decoder_broadcast=self.decoder_broadcast,
            decoder_channels=tuple(self.decoder_channels), decoder_strides=tuple(self.decoder_strides),
            decoder_kernel=self.decoder_kernel,
        )  # fmt: skip

    def unet_config(self, latent_channels: int = 3) -> UNetConfig:
        return UNetConfig(
            in_channels=latent_channels, base_channels=self.unet_base_channels,
            channel_mults=tuple(self.unet_channel_mults), num_res_blocks=self.unet_num_res_blocks,
            attention_resolutions=tuple(self.unet_attention_resolutions), head_channels=self.unet_head_channels,
            slot_dim=self.slot_dim, transformer_depth=self.unet_transformer_depth, norm_groups=self.unet_norm_groups,
            dropout=self.unet_dropout,
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

    def sampler_label(self) -> str:
        """How a diffusion run's reported images were sampled, as reports and metrics name it."""
        if self.sampler == "ddim":
            return f"DDIM, {self.sampler_steps} steps"
        return f"ancestral, {self.num_timesteps} steps"


def decoder_fields(config: SlotsConfig) -> dict:
    """The settings of `config.decoder`: every field but the other decoder's own."""
    other = DIFFUSION_FIELDS if config.decoder == "sbd" else SBD_FIELDS
    return {k: v for k, v in to_dict(config).items() if k not in other}


def run_fields(config: SlotsConfig) -> dict:
    """The settings one training run depends on: its decoder's, and no evaluation or study field."""
    return {k: v for k, v in decoder_fields(config).items() if k not in EVAL_FIELDS + STUDY_FIELDS}


def vae_run_fields(config: SlotsConfig) -> dict:
    """The settings a VAE run depends on: the data and the vae_* fields (not the slots or the UNet)."""
    return {k: v for k, v in to_dict(config).items() if k in DATA_FIELDS + VAE_FIELDS}


def load_slots_config(preset: str | Path | None, overrides: dict[str, Any], decoder: str | None = None) -> SlotsConfig:
    """The config of one run: defaults, the preset's shared values, its `decoder` section, then `overrides`
    (None values are ignored). `decoder` defaults to the override's, then the preset's, then "sbd"."""
    forced = {"decoder": decoder} if decoder else {}
    return load_config(SlotsConfig, "slots", preset, overrides | forced, DECODERS, "decoder")
