"""The model a run config describes, and the VAE files a diffusion run reads.

`build_model(config, vae)` gives either decoder's model behind the one `SlotModel` interface;
`compile_trainable(model)` is what `--compile` does to it for training.
`load_vae(path)` reads a plain VQ-VAE state_dict (the course's vae_checkpoint.pth or a `train-vae`
vae.pt) into a VQ-VAE whose architecture is read from the file's shapes, whatever the preset says.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from col775.slots.config import VAE_ARCHS, SlotsConfig
from col775.slots.diffusion.ddpm import GaussianDiffusion
from col775.slots.diffusion.model import SlotDiffusion
from col775.slots.diffusion.vae import VQVAE
from col775.slots.sbd import SlotAutoencoder
from col775.slots.slot_model import SlotModel


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


def vae_for_state(state: dict[str, Tensor]) -> VQVAE:
    """An untrained VQ-VAE shaped like `state`: base width, level multipliers, ResBlocks per level,
    latent channels and codebook size come from the tensors' shapes. GroupNorm's group count leaves
    no trace in a state_dict: 32 (the course's) where the base width is 64 or more, else 8 (the
    `small` and `tiny` architectures)."""
    channels = state["encoder.conv_in.weight"].shape[0]
    levels: dict[int, set[int]] = {}
    for key in state:
        found = re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.", key)
        if found:
            levels.setdefault(int(found[1]), set()).add(int(found[2]))
    mults = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // channels for i in sorted(levels))
    return VQVAE(
        channels=channels, channel_mults=mults, num_res_blocks=len(levels[0]),
        latent_channels=state["quant_conv.weight"].shape[0], num_codes=state["quantize.embedding.weight"].shape[0],
        norm_groups=32 if channels >= 64 else 8,
    )  # fmt: skip


def load_vae(path: str | Path) -> VQVAE:
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
    try:
        vae = vae_for_state(state)
        vae.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{path} is not a VQ-VAE state_dict this project can load ({str(error).splitlines()[0]}); "
            "give the course's vae_checkpoint.pth or a vae.pt written by `col775 slots train-vae`"
        ) from error
    return vae


def build_model(config: SlotsConfig, vae: VQVAE | None = None) -> SlotModel:
    """The untrained model of `config.decoder`; the diffusion decoder is built around `vae` (frozen)."""
    if config.decoder == "sbd":
        return SlotAutoencoder(config.model_config())
    if vae is None:
        raise ValueError("the diffusion decoder needs a VAE")
    diffusion = GaussianDiffusion(config.num_timesteps, config.beta_start, config.beta_end, config.beta_schedule)
    model = SlotDiffusion(config.encoder_config(), config.unet_config(vae.quant_conv.out_channels), vae, diffusion,
                          config.sampler, config.sampler_steps)  # fmt: skip
    if config.latent_scale > 0:
        model.latent_scale.fill_(config.latent_scale)
    return model


def compile_trainable(model: nn.Module) -> nn.Module:
    """torch.compile, in place, each part of `model` that has trainable parameters (the slot encoder and
    the decoder or UNet; a frozen VAE stays eager). In place, the state_dict keeps its keys, so a
    checkpoint loads into the model eager or compiled; the losses and the optimiser see the same modules."""
    for part in model.children():
        if any(p.requires_grad for p in part.parameters()):
            part.compile()
    return model
