"""Slot Attention with a latent diffusion decoder (assignment 2, part 2; SlotDiffusion, Wu et al. 2023).

image -> the slot encoder of the spatial-broadcast model (encoder.py) -> slots [B, K, D]; a UNet
conditioned on the slots denoises the frozen VQ-VAE's latent of the same image. Slot encoder and
UNet train jointly on the DDPM noise-prediction loss; the VAE never changes (no gradient, eval mode,
whatever `train()` is called with).

    model = SlotDiffusion(encoder_config, unet_config, vae, GaussianDiffusion())
    loss = model.loss(images)                        # images [B,3,H,W] in [-1, 1]
    recon = model.reconstruct(images)                # sample z0 from the slots (ancestral), decode
    masks = model.masks(images)                      # [B,K,H,W] attention maps, the ARI proxy
    images = model.decode(slots)                     # any slot set, e.g. composed ones

`sampler` ("ancestral": Ho et al. Algorithm 2 over all T steps; "ddim": `sampler_steps` steps) is how
`decode` samples. Latents are multiplied by `latent_scale` before diffusion (LDM's scale factor), so
a VAE whose latents are far from unit variance still meets the unit-variance noise the schedule
assumes; it is a buffer (saved with the model), 1/std of the first training batch's latents unless set.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from col775.slots.diffusion.ddpm import GaussianDiffusion, Noise, gaussian, uniform_steps
from col775.slots.diffusion.unet import UNet, UNetConfig
from col775.slots.diffusion.vae import VQVAE
from col775.slots.encoder import SlotEncoder, SlotEncoderConfig

SAMPLERS = ("ancestral", "ddim")


class SlotDiffusion(nn.Module):
    """Slot encoder + slot-conditioned latent diffusion decoder over a frozen VQ-VAE (a `SlotModel`)."""

    label = "latent diffusion decoder"

    def __init__(
        self,
        encoder_config: SlotEncoderConfig,
        unet_config: UNetConfig,
        vae: VQVAE,
        diffusion: GaussianDiffusion,
        sampler: str = "ancestral",
        sampler_steps: int = 50,
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
        self.unet = UNet(unet_config)
        self.diffusion = diffusion
        self.vae = vae.eval().requires_grad_(False)
        self.register_buffer("latent_scale", torch.zeros(()))  # 0 until set (see module docstring)
        self.use_sampler(sampler, sampler_steps)

    # -- housekeeping ------------------------------------------------------------------------------
    def use_sampler(self, sampler: str, steps: int) -> None:
        """How `decode` samples from now on: "ancestral" (all T steps) or "ddim" with `steps` steps."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "ddim" and not 1 <= steps <= self.diffusion.num_steps:
            raise ValueError(f"DDIM steps must be in 1..{self.diffusion.num_steps}, got {steps}")
        self.sampler, self.sampler_steps = sampler, steps

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

    def prepare(self, images: Tensor) -> dict[str, float]:
        """The latent scale, from the first training batch."""
        return {"latent_scale": self.set_latent_scale(images)}

    def _scale(self) -> Tensor:
        if float(self.latent_scale) == 0.0:
            raise RuntimeError("latent_scale is not set: call set_latent_scale(images) before using the model")
        return self.latent_scale

    # -- the model ---------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,3,H,W] -> (slots [B,K,D], last-iteration attention over slots [B,K,N])."""
        return self.encoder(images)

    @torch.no_grad()
    def latents(self, images: Tensor) -> Tensor:
        """The diffusion target z0 [B,C,P,P]: the frozen VAE's latent of `images`, scaled."""
        return self.vae.encode(images) * self._scale()

    def loss(self, images: Tensor, generator: Noise = None, t: Tensor | None = None,
             noise: Tensor | None = None) -> Tensor:
        """DDPM noise-prediction MSE of the UNet given this image's slots, at timesteps `t` [B] with
        `noise` [B,C,P,P]; either left out is drawn (from `generator`, or one generator per example, when given)."""
        z0 = self.latents(images)
        slots, _ = self.encode(images)
        if generator is not None:
            t = uniform_steps(self.diffusion.num_steps, len(images), generator, z0.device)
            noise = gaussian(z0.shape, generator, z0.device)
        return self.diffusion.loss(self.unet, z0, slots, t=t, noise=noise)

    def masks(self, images: Tensor) -> Tensor:
        """The assignment's proxy for slot masks: the attention maps [B,K,H,W] (sum to 1 over K)."""
        return self.encoder.attention_masks(images)

    @torch.no_grad()
    def sample_latents(self, slots: Tensor, generator: Noise = None) -> Tensor:
        """Sample z0 [B,C,P,P] (scaled) conditioned on `slots` [B,K,D] with the chosen sampler."""
        shape = (slots.shape[0], *self.latent_shape)
        if self.sampler == "ddim":
            return self.diffusion.ddim_sample(self.unet, shape, slots, steps=self.sampler_steps,
                                              generator=generator, device=slots.device)  # fmt: skip
        return self.diffusion.p_sample_loop(self.unet, shape, slots, generator=generator, progress=False,
                                            device=slots.device)  # fmt: skip

    @torch.no_grad()
    def decode(self, slots: Tensor, generator: Noise = None) -> Tensor:
        """Images [B,3,H,W] in [-1,1] sampled from any slot set [B,K',D] (K' may differ from K)."""
        if slots.dim() != 3 or slots.shape[-1] != self.config.slot_dim:
            raise ValueError(f"decode expects slots [B, K, {self.config.slot_dim}], got {tuple(slots.shape)}")
        return self.vae.decode(self.sample_latents(slots, generator) / self._scale()).clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: Noise = None) -> Tensor:
        """Images [B,3,H,W]: encode to slots, sample a latent from them, decode with the VAE."""
        return self.decode(self.encode(images)[0], generator)

    @torch.no_grad()
    def explain(self, images: Tensor, generator: Noise = None) -> dict[str, Tensor]:
        """recon [B,3,H,W] (sampled) and masks [B,K,H,W] (attention maps); no per-slot images."""
        return {"recon": self.reconstruct(images, generator), "masks": self.masks(images)}
