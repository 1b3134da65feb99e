"""DDPM/DDIM in latent space: schedule values, q(z_t|z_0) statistics, reverse-step algebra, samplers."""

import numpy as np
import pytest
import torch

from col775.slots.diffusion.ddpm import GaussianDiffusion
from col775.slots.diffusion.unet import UNet, demo_unet_config

T = 1000


def _abar_float64() -> np.ndarray:
    """alphas_cumprod of the assignment's schedule, computed independently in numpy float64."""
    return np.cumprod(1.0 - np.linspace(0.0015, 0.0195, T))


class Oracle:
    """A denoiser that knows z0, so its predicted noise is the exact noise in z_t."""

    def __init__(self, z0: torch.Tensor):
        self.z0 = z0.double()
        self.abar = torch.from_numpy(_abar_float64())
        self.calls: list[int] = []

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        self.calls.append(int(t[0]))
        abar = self.abar[t].view(-1, *([1] * (z_t.dim() - 1)))
        eps = (z_t.double() - abar.sqrt() * self.z0) / (1 - abar).sqrt()
        return eps.to(z_t.dtype)


def test_linear_schedule_values():
    d = GaussianDiffusion()
    betas = d.betas.double()
    assert betas.shape == (T,)
    assert betas[0].item() == pytest.approx(0.0015, abs=1e-9)
    assert betas[-1].item() == pytest.approx(0.0195, abs=1e-9)
    # Evenly spaced (step 1.8e-5; the buffers are float32, so differences carry ~1e-9 rounding).
    assert torch.allclose(betas.diff(), torch.full((T - 1,), 0.018 / 999, dtype=torch.float64), atol=1e-8)
    assert np.allclose(betas.numpy(), 0.0015 + np.arange(T) * 0.018 / 999, rtol=0, atol=1e-9)
    assert np.allclose(d.alphas_cumprod.double().numpy(), _abar_float64(), rtol=1e-5, atol=0)
    assert d.alphas_cumprod_prev[0] == 1.0
    assert torch.equal(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])


def test_scaled_linear_schedule_is_square_of_linear_sqrt_ramp():
    d = GaussianDiffusion(schedule="scaled_linear")
    roots = d.betas.double().sqrt()
    assert roots[0].item() == pytest.approx(0.0015 ** 0.5, abs=1e-7)
    assert roots[-1].item() == pytest.approx(0.0195 ** 0.5, abs=1e-7)
    step = (0.0195 ** 0.5 - 0.0015 ** 0.5) / 999
    assert torch.allclose(roots.diff(), torch.full((T - 1,), step, dtype=torch.float64), atol=1e-7)
    with pytest.raises(ValueError, match="schedule"):
        GaussianDiffusion(schedule="cosine")


def test_q_sample_statistics():
    torch.manual_seed(0)
    d = GaussianDiffusion()
    abar = _abar_float64()
    n = 100_000
    z0 = torch.tensor([[1.5, -0.5, 0.0, 2.0]])
    for step in (0, 300, 999):
        samples = d.q_sample(z0.expand(n, 4), torch.full((n,), step))
        assert torch.allclose(samples.mean(0).double(), np.sqrt(abar[step]) * z0[0].double(), atol=0.015)
        assert torch.allclose(samples.var(0).double(), torch.full((4,), 1 - abar[step], dtype=torch.float64),
                              rtol=0.03, atol=2e-4)


def test_reverse_mean_with_true_noise_is_posterior_mean():
    torch.manual_seed(1)
    d = GaussianDiffusion()
    betas = np.linspace(0.0015, 0.0195, T)
    abar = _abar_float64()
    z0 = torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 1, 400, 999])
    z_t = d.q_sample(z0, t, torch.randn_like(z0))
    mean = d.p_mean(Oracle(z0), z_t, t, cond=None)
    # Ho et al. eq. 7: mu~ = c0 z0 + ct z_t with
    # c0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t), ct = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t).
    for i, step in enumerate(t.tolist()):
        prev = abar[step - 1] if step > 0 else 1.0
        c0 = np.sqrt(prev) * betas[step] / (1 - abar[step])
        ct = np.sqrt(1 - betas[step]) * (1 - prev) / (1 - abar[step])
        expected = c0 * z0[i].double() + ct * z_t[i].double()
        assert torch.allclose(mean[i].double(), expected, atol=1e-4)


def test_p_sample_adds_beta_variance_noise_except_at_step_zero():
    d = GaussianDiffusion()
    zero_model = lambda z, t, c: torch.zeros_like(z)  # noqa: E731
    z = torch.zeros(20_000, 2)
    at_zero = d.p_sample(zero_model, z, 0, None)
    assert torch.equal(at_zero, z)
    noisy = d.p_sample(zero_model, z, 500, None, generator=torch.Generator().manual_seed(0))
    beta = 0.0015 + 500 * 0.018 / 999
    assert noisy.var().item() == pytest.approx(beta, rel=0.03)


def test_ddim_eta0_with_oracle_recovers_z0():
    torch.manual_seed(2)
    d = GaussianDiffusion()
    z0 = torch.randn(2, 3, 4, 4)
    oracle = Oracle(z0)
    out = d.ddim_sample(oracle, z0.shape, cond=None, steps=50, eta=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, z0, atol=1e-4)
    assert len(oracle.calls) == 50 and oracle.calls[0] == T - 1 and oracle.calls[-1] == 0
    assert oracle.calls == sorted(oracle.calls, reverse=True)


def test_ddim_timesteps_and_bad_step_count():
    d = GaussianDiffusion()
    ts = d.ddim_timesteps(50)
    assert len(ts) == 50 and ts[0] == 0 and ts[-1] == T - 1
    with pytest.raises(ValueError, match="steps"):
        d.ddim_timesteps(0)


def test_ancestral_sampling_runs_end_to_end_and_is_seeded():
    torch.manual_seed(3)
    d = GaussianDiffusion()
    z0 = torch.randn(1, 3, 4, 4)
    oracle = Oracle(z0)
    out = d.p_sample_loop(oracle, z0.shape, cond=None, generator=torch.Generator().manual_seed(0), progress=False)
    assert oracle.calls == list(range(T - 1, -1, -1))  # every step, from T down to 1
    assert torch.allclose(out, z0, atol=1e-3)  # the last step is noise-free and the oracle is exact
    zero_model = lambda z, t, c: torch.zeros_like(z)  # noqa: E731
    runs = [d.p_sample_loop(zero_model, (1, 2), None, generator=torch.Generator().manual_seed(s), progress=False)
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_loss_is_noise_mse_over_uniform_timesteps():
    torch.manual_seed(4)
    d = GaussianDiffusion()
    z0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    assert d.loss(Oracle(z0), z0, None, noise=noise).item() == pytest.approx(0.0, abs=1e-8)
    zero_model = lambda z, t, c: torch.zeros_like(z)  # noqa: E731
    assert d.loss(zero_model, z0, None, noise=noise).item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-6)
    seen = []
    d.loss(lambda z, t, c: seen.append(t) or torch.zeros_like(z), torch.zeros(20_000, 1), None)
    counts = torch.bincount(seen[0], minlength=T)
    assert seen[0].min() >= 0 and seen[0].max() < T and counts.numel() == T
    assert counts.reshape(10, 100).sum(1).min() > 1700  # each tenth of [0, T) gets about 2000


def test_loss_trains_the_unet_and_the_slots():
    torch.manual_seed(5)
    d = GaussianDiffusion()
    unet = UNet(demo_unet_config(slot_dim=8))
    slots = torch.randn(2, 4, 8, requires_grad=True)
    loss = d.loss(unet, torch.randn(2, 3, 8, 8), slots)
    loss.backward()
    assert unet.out[-1].weight.grad.abs().sum() > 0
    sample = d.ddim_sample(unet, (2, 3, 8, 8), slots.detach(), steps=3)
    assert sample.shape == (2, 3, 8, 8) and torch.isfinite(sample).all()
