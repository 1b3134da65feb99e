"""The course's VQ-VAE (assignment 2, part 2): a frozen image <-> latent codec for latent diffusion.

This is the CLEVRTex VQ-VAE of SlotDiffusion (Wu et al. 2023), itself the taming-transformers
VQGAN autoencoder without the GAN. Module names follow that code so the course checkpoint
(`vae_checkpoint.pth`: 205 tensors, listed key by key in the course-vae-state-dict spec) loads
with `load_state_dict(..., strict=True)`:

    vae = VQVAE()                                   # 128x128x3 image <-> 3x32x32 latent
    vae.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    z = vae.encode(images)                          # [B,3,32,32], the diffusion model's z0
    images = vae.decode(z)                          # snaps z to the codebook, then decodes

Where no checkpoint is given the project trains the same network itself (`forward` returns the
reconstruction and the VQ loss); `VQVAE.small()` is a narrower variant for CPU demos, and
`restart_dead_codes` / `codebook_usage` keep a freshly trained codebook from collapsing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, plus the input (1x1 `nin_shortcut` where channels change)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1 convs for q, k, v and the output."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # [B,C,H,W] -> [B,1,HW,C]: one head whose tokens are the pixels.
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: pad 0 left/top and 1 right/bottom, then a 3x3 stride-2 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResBlock, self-attention, ResBlock at the lowest resolution."""

    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution of the encoder or decoder: `block.*` ResBlocks, then an optional resampler."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


class Encoder(nn.Module):
    """Image [B,3,H,W] -> [B,latent_channels,H/f,W/f] with f = 2^(levels-1)."""

    def __init__(self, channels: int, channel_mults: tuple[int, ...], num_res_blocks: int,
                 latent_channels: int, groups: int, dropout: float):
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        levels = []
        block_in = channels
        for i, mult in enumerate(channel_mults):
            block_out = channels * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
            last = i == len(channel_mults) - 1
            levels.append(Level(blocks, None if last else Downsample(block_in), "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(block_in, groups, dropout)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B,latent_channels,h,w] -> image [B,3,h*f,w*f]; `up.i` mirrors encoder level i."""

    def __init__(self, channels: int, channel_mults: tuple[int, ...], num_res_blocks: int,
                 latent_channels: int, groups: int, dropout: float):
        super().__init__()
        block_in = channels * channel_mults[-1]
        self.conv_in = nn.Conv2d(latent_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, groups, dropout)
        levels: list[Level] = []
        for i in reversed(range(len(channel_mults))):
            block_out = channels * channel_mults[i]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
            levels.insert(0, Level(blocks, Upsample(block_in) if i > 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-row quantiser with a straight-through gradient (van den Oord et al. 2017).

    vq_loss = ||sg(z) - e||^2 + beta ||z - sg(e)||^2 (codebook + commitment), each a mean over elements.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)

    def nearest(self, flat: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Index [N] of the codebook row closest (in L2) to each row of `flat` [N, D].

        Rows are scored `chunk` at a time so a large batch never holds an N x num_codes matrix.
        """
        codebook = self.embedding.weight
        sq_norms = codebook.pow(2).sum(1)[None, :]
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every row, so it is dropped.
        return torch.cat([(sq_norms - 2.0 * part @ codebook.t()).argmin(dim=1) for part in flat.split(chunk)])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B,D,H,W] -> (zq [B,D,H,W] straight-through, vq_loss scalar, indices [B,H,W])."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        indices = self.nearest(flat)
        zq = self.embedding(indices).view(b, h, w, d).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(zq, z.detach())
        commitment_loss = F.mse_loss(z, zq.detach())
        vq_loss = codebook_loss + self.beta * commitment_loss
        zq = z + (zq - z).detach()
        return zq, vq_loss, indices.view(b, h, w)


class VQVAE(nn.Module):
    """The course VAE; the defaults are the course configuration (205 tensors, 13,857,886 numbers)."""

    def __init__(self, channels: int = 64, channel_mults: tuple[int, ...] = (1, 2, 4),
                 num_res_blocks: int = 2, latent_channels: int = 3, num_codes: int = 4096,
                 beta: float = 0.25, norm_groups: int = 32, dropout: float = 0.0):
        super().__init__()
        if any((channels * m) % norm_groups for m in channel_mults):
            raise ValueError(f"VQVAE: every width channels*mult must divide into norm_groups={norm_groups} "
                             f"groups (channels={channels}, channel_mults={channel_mults})")
        args = (channels, tuple(channel_mults), num_res_blocks, latent_channels, norm_groups, dropout)
        self.encoder = Encoder(*args)
        self.decoder = Decoder(*args)
        self.quantize = VectorQuantizer(num_codes, latent_channels, beta)
        self.quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.downsample_factor = 2 ** (len(channel_mults) - 1)

    @classmethod
    def small(cls, num_codes: int = 512) -> "VQVAE":
        """A narrow variant (same 4x downsampling, 3-channel latent) that trains on a CPU in minutes."""
        return cls(channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, num_codes=num_codes, norm_groups=8)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B,3,H,W] in [-1,1] -> pre-quantisation latent [B,C,H/f,W/f] (the diffusion z0)."""
        f = self.downsample_factor
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"VQVAE.encode: images must be [B,3,H,W] scaled to [-1,1] with H and W multiples of "
                             f"{f} (the course VAE expects 128x128), got {tuple(x.shape)}")
        return self.quant_conv(self.encoder(x))

    def decode_quantized(self, zq: torch.Tensor) -> torch.Tensor:
        """Already-quantised latent -> image."""
        return self.decoder(self.post_quant_conv(zq))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B,C,h,w] -> image [B,3,h*f,w*f] in about [-1,1]; z is snapped to the codebook first."""
        zq, _, _ = self.quantize(z)
        return self.decode_quantized(zq)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction [B,3,H,W], vq_loss scalar, code indices [B,h,w])."""
        zq, vq_loss, indices = self.quantize(self.encode(x))
        return self.decode_quantized(zq), vq_loss, indices


@dataclass
class CodebookUsage:
    """How much of a codebook a batch of code indices uses."""

    counts: torch.Tensor  # [num_codes] how often each code was chosen
    perplexity: float  # exp(entropy of the code histogram): num_codes when uniform, 1 when collapsed
    used_fraction: float  # fraction of codes chosen at least once


def codebook_usage(indices: torch.Tensor, num_codes: int) -> CodebookUsage:
    """Histogram, perplexity and used fraction of the codes in `indices` (any shape)."""
    counts = torch.bincount(indices.flatten().long(), minlength=num_codes)
    if counts.numel() != num_codes:
        raise ValueError(f"codebook_usage: an index is >= num_codes={num_codes}")
    probs = counts.double() / counts.sum().clamp(min=1)
    nonzero = probs[probs > 0]
    entropy = -(nonzero * nonzero.log()).sum()
    return CodebookUsage(counts=counts, perplexity=float(entropy.exp()),
                         used_fraction=float((counts > 0).double().mean()))


@torch.no_grad()
def restart_dead_codes(vae: VQVAE, z_batch: torch.Tensor, usage_counts: torch.Tensor,
                       generator: torch.Generator | None = None) -> int:
    """Re-initialise every codebook row whose usage count is 0 with a random encoder output.

    `z_batch` is a batch of pre-quantisation latents ([B,C,h,w] from `vae.encode`, or [N,C]);
    rows with `usage_counts > 0` are left untouched. Returns the number of rows restarted.
    """
    codebook = vae.quantize.embedding.weight
    if usage_counts.shape != (codebook.shape[0],):
        raise ValueError(f"restart_dead_codes: usage_counts must have shape ({codebook.shape[0]},), "
                         f"got {tuple(usage_counts.shape)}")
    flat = z_batch.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1]) if z_batch.dim() == 4 else z_batch
    dead = (usage_counts == 0).nonzero().flatten().to(codebook.device)
    if dead.numel() == 0:
        return 0
    picks = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator, device=flat.device)
    codebook[dead] = flat[picks].to(codebook.dtype).to(codebook.device)
    return int(dead.numel())
