"""Slot Attention with a latent diffusion decoder (assignment 2, part 2; SlotDiffusion, Wu et al. 2023).

image -> the same CNN encoder, position embedding and Slot Attention as the spatial-broadcast
autoencoder -> slots [B, K, D]; a UNet conditioned on the slots denoises the frozen VQ-VAE's latent
of the same image. Slot encoder and UNet train jointly on the DDPM noise-prediction loss; the VAE
never changes (no gradient, eval mode, whatever `train()` is called with).

    model = SlotDiffusion(encoder_config, unet_config, vae, GaussianDiffusion())
    loss = model.loss(images)                                  # images [B,3,H,W] in [-1, 1]
    recon = model.reconstruct(images, sampler="ddim", steps=50)  # sample z0 from the slots, decode
    masks = model.attention_masks(images)                      # [B,K,H,W], the ARI proxy
    images = model.generate(slots)                             # any slot set, e.g. composed ones

Latents are multiplied by `latent_scale` before diffusion (LDM's scale factor), so a VAE whose
latents are far from unit variance still meets the unit-variance noise the schedule assumes; it is
a buffer (saved with the model), 1/std of the first training batch's latents unless set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from col775.slots.autoencoder import SlotAutoencoderConfig, SlotEncoder, slot_attention_for
from col775.slots.config import STUDY_FIELDS, SlotsConfig
from col775.slots.diffusion import SCHEDULES, GaussianDiffusion
from col775.slots.unet import UNet, UNetConfig
from col775.slots.vae import VQVAE

SAMPLERS = ("ddim", "ancestral")
VAE_ARCHS = ("course", "small", "tiny")

# Fields that change only the evaluation after training, not the trained model.
DIFFUSION_STUDY_FIELDS = STUDY_FIELDS + ("sampler", "sampler_steps", "recon_max_images")
# Fields the VAE run depends on (with the data fields): a VAE is shared by every decoder setting.
VAE_FIELDS = (
    "vae_arch", "vae_num_codes", "vae_epochs", "vae_steps_per_epoch", "vae_batch_size", "vae_lr",
    "vae_restart_every",
)
# The data fields, with the seed and the device: what a VAE run and a study share with a decoder run.
DATA_FIELDS = (
    "data", "image_size", "n_train", "n_val", "min_objects", "max_objects", "max_train", "max_val",
    "mask_background", "cache_dir", "num_workers", "seed", "device",
)


@dataclass
class SlotDiffusionConfig(SlotsConfig):
    """Settings of a slot-diffusion run: the Slot Attention run's fields (data, encoder, slots,
    optimisation; the spatial-broadcast decoder fields are unused) plus the frozen VAE, the UNet,
    the noise schedule and the sampler used to evaluate.

    Defaults are the course's: the course VQ-VAE, SlotDiffusion's CLEVRTex UNet, and the
    assignment's linear schedule 0.0015 -> 0.0195 over T = 1000.
    """

    decoder: str = "diffusion"
    # frozen VAE: a state_dict file (the course's vae_checkpoint.pth or a vae.pt from `train-vae`);
    # None trains one first into <out>/vae with the vae_* settings below
    vae: str | None = None
    vae_arch: str = "course"  # course (VQVAE()) | small (VQVAE.small()) | tiny (half of small's widths)
    vae_num_codes: int = 4096
    vae_epochs: int = 20
    vae_steps_per_epoch: int = 0  # 0 = one pass over the training set
    vae_batch_size: int = 32
    vae_lr: float = 2e-4
    vae_restart_every: int = 200  # optimiser steps between dead-code restarts; 0 turns them off
    # UNet (SlotDiffusion's CLEVRTex UNet by default)
    unet_base_channels: int = 128
    unet_channel_mults: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    unet_num_res_blocks: int = 2
    unet_attention_resolutions: list[int] = field(default_factory=lambda: [2, 4, 8])
    unet_head_channels: int = 32
    unet_norm_groups: int = 32
    unet_transformer_depth: int = 1
    unet_dropout: float = 0.0
    # noise schedule
    num_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "linear"  # linear (the assignment's) | scaled_linear
    latent_scale: float = 0.0  # multiplies VAE latents; 0 = 1/std of the first training batch
    # evaluation
    sampler: str = "ddim"  # ddim | ancestral
    sampler_steps: int = 50  # DDIM steps (ancestral sampling always takes num_timesteps)
    recon_max_images: int = 0  # val images reconstructed for the MSE; 0 = all

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder != "diffusion":
            raise ValueError(f"a slot-diffusion run has decoder 'diffusion', got {self.decoder!r}")
        if self.vae_arch not in VAE_ARCHS:
            raise ValueError(f"vae_arch must be one of {VAE_ARCHS}, got {self.vae_arch!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.beta_schedule not in SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {sorted(SCHEDULES)}, got {self.beta_schedule!r}")
        if not 1 <= self.sampler_steps <= self.num_timesteps:
            raise ValueError(f"sampler_steps must be in 1..num_timesteps={self.num_timesteps}, got {self.sampler_steps}")
        for name in ("vae_epochs", "vae_batch_size", "vae_num_codes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def encoder_config(self) -> SlotAutoencoderConfig:
        """Encoder and Slot Attention settings, as the spatial-broadcast run has them.

        The decoder fields are replaced by a trivially valid placeholder: this model has no
        spatial-broadcast decoder, so they must not constrain image_size.
        """
        return SlotAutoencoderConfig(
            image_size=self.image_size, num_slots=self.num_slots, slot_dim=self.slot_dim,
            slot_iters=self.slot_iters, slot_hidden_dim=self.slot_hidden_dim, slot_init=self.slot_init,
            encoder_channels=tuple(self.encoder_channels), encoder_strides=tuple(self.encoder_strides),
            encoder_kernel=self.encoder_kernel, decoder_broadcast=self.image_size, decoder_channels=(1,),
            decoder_strides=(1,),
        )  # fmt: skip

    def unet_config(self, latent_channels: int = 3) -> UNetConfig:
        return UNetConfig(
            in_channels=latent_channels, base_channels=self.unet_base_channels,
            channel_mults=tuple(self.unet_channel_mults), num_res_blocks=self.unet_num_res_blocks,
            attention_resolutions=tuple(self.unet_attention_resolutions), head_channels=self.unet_head_channels,
            slot_dim=self.slot_dim, transformer_depth=self.unet_transformer_depth, norm_groups=self.unet_norm_groups,
            dropout=self.unet_dropout,
        )  # fmt: skip

    def gaussian_diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion(self.num_timesteps, self.beta_start, self.beta_end, self.beta_schedule)


def build_vae(arch: str, num_codes: int) -> VQVAE:
    """An untrained VQ-VAE: the course network (`course`), the narrow CPU one (`small`), or one of
    half small's widths (`tiny`, 16/32/32 channels: about 3x faster again, for the CPU demo).
    All three downsample 4x to a 3-channel latent."""
    if arch == "course":
        return VQVAE(num_codes=num_codes)
    if arch == "small":
        return VQVAE.small(num_codes=num_codes)
    if arch == "tiny":
        return VQVAE(channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, num_codes=num_codes, norm_groups=8)
    raise ValueError(f"vae_arch must be one of {VAE_ARCHS}, got {arch!r}")


def load_vae(path: str | Path, arch: str, num_codes: int) -> VQVAE:
    """A VQ-VAE from a plain state_dict file (the course's checkpoint or our vae.pt), loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"VAE checkpoint {path} does not exist; give the course's vae_checkpoint.pth or a vae.pt "
            "written by `col775 slots train-vae`"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain state_dict (a dict of tensors) of a VQ-VAE")
    vae = build_vae(arch, num_codes)
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit a '{arch}' VQ-VAE with {num_codes} codes ({str(error).splitlines()[0]}); "
            "set --vae-arch and --vae-num-codes to the settings it was trained with"
        ) from error
    return vae


def build_model(config: SlotDiffusionConfig, vae: VQVAE) -> "SlotDiffusion":
    """The model a config describes, around an already loaded (and then frozen) VAE."""
    model = SlotDiffusion(config.encoder_config(), config.unet_config(vae.quant_conv.out_channels), vae,
                          config.gaussian_diffusion())
    if config.latent_scale > 0:
        model.latent_scale.fill_(config.latent_scale)
    return model


class SlotDiffusion(nn.Module):
    """Slot encoder + slot-conditioned latent diffusion decoder over a frozen VQ-VAE."""

    def __init__(
        self,
        encoder_config: SlotAutoencoderConfig,
        unet_config: UNetConfig,
        vae: VQVAE,
        diffusion: GaussianDiffusion,
    ) -> None:
        super().__init__()
        if unet_config.slot_dim != encoder_config.slot_dim:
            raise ValueError(
                f"the UNet attends to slots of size {unet_config.slot_dim} but Slot Attention makes "
                f"slots of size {encoder_config.slot_dim}; set the UNet's slot_dim to the slot size"
            )
        latent_channels = vae.quant_conv.out_channels
        if unet_config.in_channels != latent_channels:
            raise ValueError(
                f"the UNet takes {unet_config.in_channels} channels but the VAE's latent has {latent_channels}"
            )
        latent_size, rest = divmod(encoder_config.image_size, vae.downsample_factor)
        unet_stride = 2 ** (len(unet_config.channel_mults) - 1)
        if rest or latent_size % unet_stride:
            raise ValueError(
                f"image_size {encoder_config.image_size} gives a {latent_size}x{latent_size} VAE latent "
                f"(factor {vae.downsample_factor}), which the UNet's {len(unet_config.channel_mults)} levels "
                f"cannot halve {len(unet_config.channel_mults) - 1} times; change image_size or the UNet levels"
            )
        self.config = encoder_config
        self.latent_shape = (latent_channels, latent_size, latent_size)
        self.encoder = SlotEncoder(encoder_config)
        self.slot_attention = slot_attention_for(encoder_config, self.encoder.out_dim)
        self.unet = UNet(unet_config)
        self.diffusion = diffusion
        self.vae = vae.eval().requires_grad_(False)
        self.register_buffer("latent_scale", torch.zeros(()))  # 0 until set (see module docstring)

    # -- housekeeping ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "SlotDiffusion":
        """As nn.Module.train, except that the frozen VAE always stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Slot encoder, Slot Attention and UNet parameters: what the optimiser updates."""
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def set_latent_scale(self, images: Tensor) -> float:
        """Set latent_scale to 1/std of the VAE latents of `images` (if not set yet); returns it."""
        if float(self.latent_scale) == 0.0:
            std = self.vae.encode(images).float().std()
            if not torch.isfinite(std) or std <= 0:
                raise ValueError(f"cannot scale the VAE latents: their std over the batch is {float(std)}")
            self.latent_scale.fill_(1.0 / std)
        return float(self.latent_scale)

    def _check_images(self, images: Tensor) -> None:
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"SlotDiffusion expects images [B, 3, {size}, {size}] in [-1, 1], got {tuple(images.shape)}; "
                "resize the data or set image_size in the config"
            )

    def _scale(self) -> Tensor:
        if float(self.latent_scale) == 0.0:
            raise RuntimeError("latent_scale is not set: call set_latent_scale(images) before using the model")
        return self.latent_scale

    # -- the model ---------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,3,H,W] -> (slots [B,K,D], last-iteration attention over slots [B,K,N])."""
        self._check_images(images)
        return self.slot_attention(self.encoder(images))

    @torch.no_grad()
    def latents(self, images: Tensor) -> Tensor:
        """The diffusion target z0 [B,C,P,P]: the frozen VAE's latent of `images`, scaled."""
        return self.vae.encode(images) * self._scale()

    def loss(self, images: Tensor, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """DDPM noise-prediction MSE of the UNet given this image's slots, at timesteps `t` [B]
        (uniform random if None) with `noise` [B,C,P,P] (random if None; fix both for a val loss)."""
        z0 = self.latents(images)
        slots, _ = self.encode(images)
        return self.diffusion.loss(self.unet, z0, slots, t=t, noise=noise)

    def attention_masks(self, images: Tensor) -> Tensor:
        """Slot-input attention of the last Slot Attention iteration, [B,K,H,W] (sums to 1 over K).

        The assignment's proxy for slot masks: the sqrt(N) x sqrt(N) map of each slot, resized
        bilinearly to the image size (a convex combination of maps that sum to 1 still sums to 1).
        """
        _, attn = self.encode(images)
        side = self.config.feature_size
        maps = attn.view(attn.shape[0], attn.shape[1], side, side)
        size = self.config.image_size
        if side == size:
            return maps
        return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def sample_latents(self, slots: Tensor, sampler: str = "ddim", steps: int = 50,
                       generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """Sample z0 [B,C,P,P] (scaled) conditioned on `slots` [B,K,D]: DDIM with `steps` model calls,
        or ancestral sampling (Ho et al. Algorithm 2) with all T."""
        shape = (slots.shape[0], *self.latent_shape)
        if sampler == "ddim":
            return self.diffusion.ddim_sample(self.unet, shape, slots, steps=steps, generator=generator,
                                              progress=progress, device=slots.device)
        if sampler == "ancestral":
            return self.diffusion.p_sample_loop(self.unet, shape, slots, generator=generator,
                                                progress=progress, device=slots.device)
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    @torch.no_grad()
    def generate(self, slots: Tensor, sampler: str = "ddim", steps: int = 50,
                 generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """Images [B,3,H,W] in [-1,1] decoded from any slot set [B,K',D] (K' may differ from K)."""
        if slots.dim() != 3 or slots.shape[-1] != self.config.slot_dim:
            raise ValueError(f"generate expects slots [B, K, {self.config.slot_dim}], got {tuple(slots.shape)}")
        z0 = self.sample_latents(slots, sampler, steps, generator, progress)
        return self.vae.decode(z0 / self._scale()).clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, sampler: str = "ddim", steps: int = 50,
                    generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """Images [B,3,H,W]: encode to slots, sample a latent from them, decode with the VAE."""
        slots, _ = self.encode(images)
        return self.generate(slots, sampler, steps, generator, progress)
