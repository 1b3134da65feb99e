"""DDPM in the VAE latent space (Ho et al. 2020), conditioned on slots, with DDIM as a fast sampler.

Timesteps are 0-based in code: index t = 0..T-1 is the paper's step t+1, so `betas[0]` is beta_1.
The denoiser is any callable `model(z_t [B,C,H,W], t [B] long, cond) -> eps_hat [B,C,H,W]`, e.g.
`UNet` with the slots as `cond`.

    diffusion = GaussianDiffusion()                       # linear 0.0015 -> 0.0195 over T = 1000
    loss = diffusion.loss(unet, z0, slots)                # epsilon-prediction MSE, t ~ U{0..T-1}
    z0_hat = diffusion.p_sample_loop(unet, z0.shape, slots)   # ancestral sampling, T model calls
    z0_hat = diffusion.ddim_sample(unet, z0.shape, slots, steps=50)  # deterministic, 50 calls

The schedule is computed in float64 and stored in float32 buffers (they follow `.to(device)`).
Every sampler takes a `generator`, or one generator per example (`Noise`): then example i draws its
noise from the i-th alone, so its sample does not depend on the batch it was drawn in (on which rank,
beside which examples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Noise = Union[torch.Generator, Sequence[torch.Generator], None]  # one generator, one per example, or the global one


def gaussian(shape: tuple[int, ...] | torch.Size, generator: Noise, device: torch.device | str,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) noise of `shape` on `device`: row i from the i-th generator when given one per example."""
    if isinstance(generator, Sequence):
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device)
    source = device if generator is None else generator.device
    return torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def uniform_steps(num_steps: int, count: int, generator: Noise, device: torch.device | str) -> torch.Tensor:
    """`count` timesteps [count] uniform on 0..num_steps-1 (one from each generator when given one per example)."""
    if isinstance(generator, Sequence):
        rows = [torch.randint(0, num_steps, (1,), generator=g, device=g.device) for g in generator]
        return torch.cat(rows).to(device)
    source = device if generator is None else generator.device
    return torch.randint(0, num_steps, (count,), generator=generator, device=source).to(device)


def linear_betas(num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195) -> torch.Tensor:
    """The assignment's schedule: beta_1..beta_T evenly spaced from beta_start to beta_end (float64)."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195) -> torch.Tensor:
    """SlotDiffusion/LDM "scaled linear": sqrt(beta) evenly spaced, then squared (float64)."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2


SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas}


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to [B,1,...,1] so it broadcasts against an ndim-dimensional batch."""
    return values[t].view(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """The fixed forward process q and the samplers of the learned reverse process."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195,
                 schedule: str = "linear"):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"GaussianDiffusion: schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        betas = SCHEDULES[schedule](num_steps, beta_start, beta_end)
        if not (0 < betas.min() and betas.max() < 1):
            raise ValueError(f"GaussianDiffusion: betas must lie in (0, 1), got [{beta_start}, {beta_end}]")
        self.num_steps = num_steps
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        buffers = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            # Algorithm 2: mean = (z_t - eps_coef * eps) / sqrt(alpha_t), eps_coef = beta_t / sqrt(1 - abar_t).
            "recip_sqrt_alphas": alphas.rsqrt(),
            "eps_coef": betas / (1.0 - abar).sqrt(),
            "sigmas": betas.sqrt(),  # sigma_t^2 = beta_t
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample q(z_t | z_0) = N(sqrt(abar_t) z_0, (1 - abar_t) I)."""
        noise = torch.randn_like(z0) if noise is None else noise
        return (_gather(self.sqrt_alphas_cumprod, t, z0.dim()) * z0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, z0.dim()) * noise)

    def loss(self, model: Denoiser, z0: torch.Tensor, cond: Any, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """Simple DDPM objective: MSE between the true and predicted noise at a uniform random t."""
        if t is None:
            t = torch.randint(0, self.num_steps, (z0.shape[0],), device=z0.device)
        noise = torch.randn_like(z0) if noise is None else noise
        return F.mse_loss(model(self.q_sample(z0, t, noise), t, cond).float(), noise)  # float32 under bf16 autocast too

    def p_mean(self, model: Denoiser, z_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Mean of p(z_{t-1} | z_t): (z_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t)."""
        eps = model(z_t, t, cond)
        return _gather(self.recip_sqrt_alphas, t, z_t.dim()) * (z_t - _gather(self.eps_coef, t, z_t.dim()) * eps)

    def p_sample(self, model: Denoiser, z_t: torch.Tensor, step: int, cond: Any,
                 generator: Noise = None) -> torch.Tensor:
        """One ancestral step z_t -> z_{t-1} at 0-based `step` (no noise is added at step 0)."""
        t = torch.full((z_t.shape[0],), step, device=z_t.device, dtype=torch.long)
        mean = self.p_mean(model, z_t, t, cond)
        if step == 0:
            return mean
        noise = gaussian(z_t.shape, generator, z_t.device, z_t.dtype)
        return mean + self.sigmas[step] * noise

    @torch.no_grad()
    def p_sample_loop(self, model: Denoiser, shape: tuple[int, ...] | torch.Size, cond: Any,
                      generator: Noise = None, progress: bool = True,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """Ancestral sampling (Ho et al. 2020, Algorithm 2): z_T ~ N(0, I), then T denoising steps."""
        device = self.betas.device if device is None else device
        z = gaussian(shape, generator, device)
        for step in tqdm(reversed(range(self.num_steps)), total=self.num_steps, disable=not progress,
                         desc="ddpm sampling", leave=False):
            z = self.p_sample(model, z, step, cond, generator)
        return z

    def ddim_timesteps(self, steps: int) -> torch.Tensor:
        """`steps` 0-based timesteps spread evenly over 0..T-1 (both ends included), increasing."""
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"ddim_sample: steps must be in 1..{self.num_steps}, got {steps}")
        return torch.linspace(0, self.num_steps - 1, steps, dtype=torch.float64).round().long().unique()

    @torch.no_grad()
    def ddim_sample(self, model: Denoiser, shape: tuple[int, ...] | torch.Size, cond: Any, steps: int = 50,
                    eta: float = 0.0, generator: Noise = None, progress: bool = False,
                    device: torch.device | str | None = None) -> torch.Tensor:
        """DDIM (Song et al. 2021) on a subsequence of the timesteps; eta=0 is deterministic and eta=1
        matches DDPM's noise level. The fast option: `steps` model calls instead of T."""
        device = self.betas.device if device is None else device
        z = gaussian(shape, generator, device)
        timesteps = self.ddim_timesteps(steps).tolist()
        prev_steps = [-1] + timesteps[:-1]
        for step, prev in tqdm(list(zip(reversed(timesteps), reversed(prev_steps))), disable=not progress,
                               desc="ddim sampling", leave=False):
            t = torch.full((z.shape[0],), step, device=device, dtype=torch.long)
            eps = model(z, t, cond)
            abar = self.alphas_cumprod[step]
            abar_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.ones_like(abar)
            z0_hat = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
            z = abar_prev.sqrt() * z0_hat + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta > 0 and prev >= 0:
                z = z + sigma * gaussian(z.shape, generator, device, z.dtype)
        return z
