"""Normalisation layers for the ResNet study, written from tensor operations.

Every layer takes `num_channels` first and normalises an (N, C, H, W) tensor; they differ only in
which elements share a mean and variance:

    BatchNorm2d          over (N, H, W) for each channel, running statistics for eval mode
    InstanceNorm2d       over (H, W) for each sample and channel
    BatchInstanceNorm2d  a learnable per-channel gate rho in [0, 1] mixing the two above
    LayerNorm2d          over (C, H, W) for each sample (GroupNorm with one group)
    GroupNorm2d          over (C / G, H, W) for each sample and group of channels
    NoNorm2d             identity, the "no normalisation" baseline

All of them end in a per-channel affine map (gamma, beta). None calls PyTorch's normalisation
kernels: the shared `_AffineNorm` autograd function computes the statistics with `torch.var_mean`
and has a hand-derived backward in tensor operations, which is several times faster on CPU than
letting autograd differentiate through mean and variance.

`make_norm(kind, num_channels)` builds any of them by name; `torch_bn` gives PyTorch's own
`nn.BatchNorm2d`, the course's baseline.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable

NORM_KINDS: tuple[str, ...] = ("torch_bn", "bn", "in", "bin", "ln", "gn", "nn")


def _sum_to_shape(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum `t` over the dims where `shape` has size 1 but `t` does not (undoing broadcasting)."""
    dims = tuple(d for d, (have, want) in enumerate(zip(t.shape, shape)) if want == 1 and have != 1)
    return t.sum(dims, keepdim=True) if dims else t


class _AffineNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over `dims` of `x`.

    `mean` and the biased `var` are taken over `dims` (kept as size-1 dims, the "stats" shape).
    `weight` and `bias` broadcast against `x` and may vary inside a statistics group (GroupNorm:
    one gamma per channel, one mean per group of channels). Returns (y, mean, var); the
    statistics are returned for running averages and carry no gradient.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        dims: tuple[int, ...],
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        y = torch.addcmul(bias - mean * scale, x, scale)  # one pass over x
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.dims = dims
        ctx.count = math.prod(x.shape[d] for d in dims)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor, _grad_mean: torch.Tensor, _grad_var: torch.Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        # "Fine" dims: reduced by the statistics and constant for the weight. Sums over them give
        # per-(group member) partial sums from which every other sum follows cheaply.
        fine = tuple(d for d in ctx.dims if weight.shape[d] == 1)
        inner = tuple(d for d in ctx.dims if d not in fine)  # stats dims along which weight varies
        sum_g = grad_y.sum(fine, keepdim=True)
        sum_gx = (grad_y * x).sum(fine, keepdim=True)
        sum_g_xhat = invstd * (sum_gx - mean * sum_g)  # sum of grad_y * xhat over the fine dims

        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # With h = grad_y * weight (the gradient w.r.t. xhat), the standard result is
            # dx = invstd * (h - mean(h) - xhat * mean(h * xhat)), means over each stats group.
            # Written as dx = grad_y * k + x * k2 + k3 with small per-group k, k2, k3.
            mean_h = weight * sum_g
            mean_h_xhat = weight * sum_g_xhat
            if inner:
                mean_h = mean_h.sum(inner, keepdim=True)
                mean_h_xhat = mean_h_xhat.sum(inner, keepdim=True)
            mean_h = mean_h / ctx.count
            mean_h_xhat = mean_h_xhat / ctx.count
            k2 = -invstd * invstd * mean_h_xhat
            k3 = -invstd * mean_h - k2 * mean
            grad_x = torch.addcmul(k3, x, k2)
            grad_x.addcmul_(grad_y, weight * invstd)
        if ctx.needs_input_grad[1]:
            grad_weight = _sum_to_shape(sum_g_xhat, weight.shape)
        if ctx.needs_input_grad[2]:
            grad_bias = _sum_to_shape(sum_g, weight.shape)
        return grad_x, grad_weight, grad_bias, None, None


def _check_input(x: torch.Tensor, num_channels: int, layer: str) -> None:
    """Raise a ValueError unless `x` is (N, num_channels, H, W)."""
    if x.dim() != 4 or x.shape[1] != num_channels:
        raise ValueError(
            f"{layer} expects an (N, {num_channels}, H, W) tensor, got shape {tuple(x.shape)}; "
            f"pass 4-D image features with {num_channels} channels"
        )


class _RunningBatchStats(nn.Module):
    """Running mean and unbiased variance of per-channel batch statistics, as nn.BatchNorm2d keeps.

    `momentum=None` gives the cumulative average, as in PyTorch.
    """

    def __init__(self, num_channels: int, eps: float, momentum: float | None) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _batch_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Normalise (N, C, H, W) `x` per channel: batch statistics in training, running in eval."""
        c = self.num_channels
        weight, bias = weight.view(1, c, 1), bias.view(1, c, 1)
        flat = x.view(x.shape[0], c, -1)  # (N, C, H*W)
        if not self.training:
            scale = weight * torch.rsqrt(self.running_var.view(1, c, 1) + self.eps)
            shift = bias - self.running_mean.view(1, c, 1) * scale
            return torch.addcmul(shift, flat, scale).view_as(x)
        count = flat.shape[0] * flat.shape[2]
        if count < 2:
            raise ValueError(
                f"{type(self).__name__} needs more than one value per channel in training mode, "
                f"got input shape {tuple(x.shape)}; use a batch size above 1 or call model.eval()"
            )
        y, mean, var = _AffineNorm.apply(flat, weight, bias, (0, 2), self.eps)
        self._update_running_stats(mean.flatten(), var.flatten(), count)
        return y.view_as(x)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * (count / (count - 1)), factor)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_RunningBatchStats):
    """Batch normalisation (Ioffe & Szegedy 2015), matching nn.BatchNorm2d's defaults."""

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_channels, eps, momentum)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.num_channels, type(self).__name__)
        return self._batch_norm(x, self.weight, self.bias)


class InstanceNorm2d(nn.Module):
    """Instance normalisation (Ulyanov et al. 2016) with a per-channel affine map.

    Like nn.InstanceNorm2d(affine=True): instance statistics in both training and eval mode.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.num_channels, type(self).__name__)
        return _instance_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def _instance_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    n, c = x.shape[:2]
    flat = x.view(n, c, -1)  # (N, C, H*W)
    y, _, _ = _AffineNorm.apply(flat, weight.view(1, c, 1), bias.view(1, c, 1), (2,), eps)
    return y.view_as(x)


class BatchInstanceNorm2d(_RunningBatchStats):
    """Batch-Instance normalisation (Nam & Kim 2018).

    y = (rho * xhat_batch + (1 - rho) * xhat_instance) * gamma + beta, with a learnable gate rho
    per channel. rho must stay in [0, 1]: call `clamp_gates(model)` after every optimiser step.
    rho starts at 1 (pure batch norm), as in the authors' code. The batch branch keeps running
    statistics exactly like BatchNorm2d; the instance branch always uses instance statistics.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        rho_init: float = 1.0,
    ) -> None:
        super().__init__(num_channels, eps, momentum)
        if not 0.0 <= rho_init <= 1.0:
            raise ValueError(f"BatchInstanceNorm2d rho_init must lie in [0, 1], got {rho_init}")
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.rho = nn.Parameter(torch.full((num_channels,), float(rho_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.num_channels, type(self).__name__)
        ones = x.new_ones(self.num_channels)
        zeros = x.new_zeros(self.num_channels)
        x_batch = self._batch_norm(x, ones, zeros)
        x_instance = _instance_norm(x, ones, zeros, self.eps)
        shape = (1, self.num_channels, 1, 1)
        mixed = torch.lerp(x_instance, x_batch, self.rho.view(shape))
        return torch.addcmul(self.bias.view(shape), mixed, self.weight.view(shape))


def clamp_gates(model: nn.Module) -> None:
    """Clamp every BatchInstanceNorm2d gate rho in `model` to [0, 1], in place.

    The training loop calls this after each `optimizer.step()`, as Nam & Kim prescribe.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BatchInstanceNorm2d):
                module.rho.clamp_(0.0, 1.0)


class GroupNorm2d(nn.Module):
    """Group normalisation (Wu & He 2018): statistics per sample over groups of channels.

    The default of 8 groups divides every width of the 6n+2 ResNet (16, 32, 64), giving 2, 4 and
    8 channels per group; Wu & He find GN insensitive to the exact group count in this range.
    """

    def __init__(self, num_channels: int, num_groups: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm2d needs num_groups ({num_groups}) to divide num_channels "
                f"({num_channels}); pick a divisor such as 1, 2, 4 or 8 for widths 16/32/64"
            )
        self.num_channels = num_channels
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.num_channels, type(self).__name__)
        n, g = x.shape[0], self.num_groups
        per_group = self.num_channels // g
        flat = x.view(n, g, per_group, -1)  # (N, G, C/G, H*W)
        weight = self.weight.view(1, g, per_group, 1)
        bias = self.bias.view(1, g, per_group, 1)
        y, _, _ = _AffineNorm.apply(flat, weight, bias, (2, 3), self.eps)
        return y.view_as(x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}"


class LayerNorm2d(GroupNorm2d):
    """Layer normalisation (Ba et al. 2016) of image features: per sample over (C, H, W).

    The affine map is per channel, as in nn.GroupNorm(1, C), rather than per element.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, num_groups=1, eps=eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class NoNorm2d(nn.Module):
    """Identity: the "no normalisation" (NN) variant. Takes num_channels for a uniform factory."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "torch_bn": nn.BatchNorm2d,
    "bn": BatchNorm2d,
    "in": InstanceNorm2d,
    "bin": BatchInstanceNorm2d,
    "ln": LayerNorm2d,
    "gn": GroupNorm2d,
    "nn": NoNorm2d,
}


def make_norm(kind: str, num_channels: int, **kwargs) -> nn.Module:
    """Build the normalisation layer named `kind` (one of NORM_KINDS) for `num_channels` channels.

    Keyword arguments go to the layer (e.g. `num_groups` for "gn", `momentum` for "bn").
    """
    if kind not in _FACTORIES:
        raise ValueError(f"unknown norm kind {kind!r}; choose one of {', '.join(NORM_KINDS)}")
    factory = _FACTORIES[kind]
    accepted = set(inspect.signature(factory).parameters) - {"num_channels", "num_features"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"norm kind {kind!r} does not take {', '.join(unknown)}; "
            f"it accepts {', '.join(sorted(accepted)) or 'no options'}"
        )
    return factory(num_channels, **kwargs)
