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
kernels: the shared `_AffineNorm` autograd function computes the statistics from sums of x and
x^2 and has a hand-derived backward in tensor operations, which is several times faster on CPU
than letting autograd differentiate through mean and variance. Under torch.compile the layers
run the same formula in plain tensor ops instead (`_traced_affine_norm`; `_traced_group_norm` for
GroupNorm and LayerNorm), which inductor fuses with their neighbours; autograd derives that
backward. In float32 the results agree with PyTorch's layers to about 1e-6 of their scale
(PyTorch's fused kernels round a little less).
Inputs may be NCHW-contiguous or channels_last; the output keeps the input's memory format.

`make_norm(kind, num_channels)` builds any of them by name; `torch_bn` gives PyTorch's own
`nn.BatchNorm2d`, the course's baseline.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

NORM_KINDS: tuple[str, ...] = ("torch_bn", "bn", "in", "bin", "ln", "gn", "nn")


def _sum_to_shape(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum `t` over the dims where `shape` has size 1 but `t` does not (undoing broadcasting)."""
    dims = tuple(d for d, (have, want) in enumerate(zip(t.shape, shape)) if want == 1 and have != 1)
    return t.sum(dims, keepdim=True) if dims else t


def _sum_over(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Sum over `dims`, kept as size 1, the last dim first if it is among them.

    Contiguous last-dim reductions are the fastest and sum pairwise, which keeps float32 sums
    of ~10^5 values accurate; one reduction over (N, H*W) together loses about 10x precision.
    """
    last = t.dim() - 1
    if last in dims and len(dims) > 1:
        t = t.sum(last, keepdim=True)
        dims = tuple(d for d in dims if d != last)
    return t.sum(dims, keepdim=True) if dims else t


def _sums_over(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of x and of x^2 over `dims`, kept as size 1 (the last dim first, see `_sum_over`)."""
    last = x.dim() - 1
    first = (last,) if last in dims else dims
    rest = tuple(d for d in dims if d not in first)
    total_sq = torch.linalg.vector_norm(x, 2, first, keepdim=True).square_()
    return _sum_over(x, dims), _sum_over(total_sq, rest)


def _dot_over(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """sum(a * b) over `dims`, kept as size 1; without materialising a * b if the last dim is in."""
    last = a.dim() - 1
    if last not in dims:
        return (a * b).sum(dims, keepdim=True)
    length = a.shape[-1]
    rows = a.numel() // length
    dots = torch.bmm(a.reshape(rows, 1, length), b.reshape(rows, length, 1))  # (rows, 1, 1)
    return _sum_over(dots.view(*a.shape[:-1], 1), tuple(d for d in dims if d != last))


def _common_dims(dim_sets: list[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sorted(set.intersection(*(set(dims) for dims in dim_sets))))


def _mean_var(
    x: torch.Tensor,
    dims: tuple[int, ...],
    base: tuple[int, ...],
    base_sum: torch.Tensor,
    base_sum_sq: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of `x` over `dims`, kept as size-1 dims.

    `base_sum` and `base_sum_sq` are the sums of x and x^2 over `base` (a subset of `dims`),
    shared by all the statistics of one call. var = E[x^2] - E[x]^2 needs only these fast
    reductions (Welford's torch.var_mean is several times slower on CPU) but loses about
    log10(E[x^2] / var) digits, so when some group's mean exceeds 10 standard deviations both
    are recomputed with torch.var_mean. (The check costs a device sync on GPU.)
    """
    rest = tuple(d for d in dims if d not in base)
    count = math.prod(x.shape[d] for d in dims)
    mean = _sum_over(base_sum, rest) / count
    mean_sq = _sum_over(base_sum_sq, rest) / count
    var = (mean_sq - mean.square()).clamp_(min=0.0)
    if bool((var * 100.0 < mean_sq).any()):
        var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return mean, var


class _AffineNorm(torch.autograd.Function):
    """y = bias + sum_j weight_j * (x - mean_j) / sqrt(var_j + eps), one or more normalisations.

    Term j takes its mean and biased variance over `stat_dims[j]`. Each `weight_j` (and `bias`)
    broadcasts against `x`, has size 1 along the dims that every term reduces, and may vary
    inside a statistics group (GroupNorm: one gamma per channel, one mean per group of
    channels). One term is BN, IN, LN or GN; BIN is two terms, batch and instance statistics,
    with weights gamma * rho and gamma * (1 - rho). Returns (y, mean_1, var_1, mean_2, var_2, ..);
    the statistics are for running averages and carry no gradient.

    The backward is derived by hand: every reduction it needs follows from two sums over the
    dims that all terms share (of grad and of grad * x), and dx takes two fused passes.
    Under CUDA or CPU autocast it runs, and returns y, in float32, as PyTorch runs its own group
    and layer norms.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, bias, eps, stat_dims, *weights):
        base = _common_dims(list(stat_dims))
        base_sum, base_sum_sq = _sums_over(x, base)
        scale = shift = 0.0
        stats, saved = [], []
        for dims, weight in zip(stat_dims, weights):
            mean, var = _mean_var(x, dims, base, base_sum, base_sum_sq)
            invstd = torch.rsqrt(var + eps)
            scale = scale + weight * invstd
            shift = shift - weight * invstd * mean
            stats += [mean, var]
            saved += [weight, mean, invstd]
        y = torch.addcmul(bias + shift, x, scale)  # one pass over x
        ctx.save_for_backward(x, *saved)
        ctx.stat_dims = stat_dims
        ctx.bias_shape = bias.shape
        ctx.mark_non_differentiable(*stats)
        return (y, *stats)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad_y, *_grad_stats):
        x, *saved = ctx.saved_tensors
        weights = saved[0::3]
        # "Fine" dims are reduced by a term's statistics and constant for its weight. Sums over
        # the fine dims that all terms share give everything else by cheap further sums.
        fine_dims = [
            tuple(d for d in dims if weight.shape[d] == 1)
            for dims, weight in zip(ctx.stat_dims, weights)
        ]
        base = _common_dims(fine_dims)
        base_g = _sum_over(grad_y, base)
        base_gx = _dot_over(grad_y, x, base)
        k = k2 = k3 = 0.0  # dx = grad_y * k + x * k2 + k3, summed over the terms
        grad_weights = []
        for j, (dims, fine) in enumerate(zip(ctx.stat_dims, fine_dims)):
            weight, mean, invstd = saved[3 * j : 3 * j + 3]
            count = math.prod(x.shape[d] for d in dims)
            inner = tuple(d for d in dims if d not in fine)  # the weight varies along these
            fine_rest = tuple(d for d in fine if d not in base)
            sum_g = _sum_over(base_g, fine_rest)
            sum_g_xhat = invstd * (_sum_over(base_gx, fine_rest) - mean * sum_g)
            grad_weights.append(
                _sum_to_shape(sum_g_xhat, weight.shape) if ctx.needs_input_grad[4 + j] else None
            )
            if ctx.needs_input_grad[0]:
                # With h = grad_y * weight (the gradient w.r.t. xhat), the standard result is
                # dx = invstd * (h - mean(h) - xhat * mean(h * xhat)), means over each group.
                mean_h = _sum_over(weight * sum_g, inner) / count
                mean_h_xhat = _sum_over(weight * sum_g_xhat, inner) / count
                term_k2 = -invstd * invstd * mean_h_xhat
                k = k + weight * invstd
                k2 = k2 + term_k2
                k3 = k3 - invstd * mean_h - term_k2 * mean
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(k3, x, k2)
            grad_x.addcmul_(grad_y, k)
        grad_bias = _sum_to_shape(base_g, ctx.bias_shape) if ctx.needs_input_grad[1] else None
        return (grad_x, grad_bias, None, None, *grad_weights)


def _mean_over(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return t.mean(dims, keepdim=True) if dims else t


def _stored(t: torch.Tensor) -> torch.Tensor:
    """`t` itself; under torch.compile, kept as its own small buffer.

    Inductor would otherwise recompute a per-channel scale inside the loop over every element,
    indexing group statistics by channel // group size, which stops it vectorising that loop
    (GroupNorm's step ran 2.5x slower). `as_strided` is how PyTorch's own group norm asks for this.
    """
    t = t.contiguous()
    return t.as_strided(t.shape, t.stride())


def _traced_affine_norm(x, bias, eps, stat_dims, *weights):
    """`_AffineNorm`'s forward in plain tensor ops, for torch.compile to fuse and differentiate.

    The statistics come from one Welford pass (`torch.var_mean`, exact and fused when compiled)
    over the dims where no term's weight varies; the terms' group statistics combine those
    per-channel ones exactly (mean of the variances plus the variance of the means). Statistics
    and arithmetic are float32 for half-precision input, and y comes back in the input's dtype,
    as PyTorch's own batch norm does under CPU autocast: that halves the memory the fused step
    moves.
    """
    dtype = x.dtype
    x = x.to(torch.promote_types(dtype, torch.float32))
    fine_dims = [
        tuple(d for d in dims if weight.shape[d] == 1) for dims, weight in zip(stat_dims, weights)
    ]
    base = _common_dims(fine_dims)
    base_var, base_mean = torch.var_mean(x, base, correction=0, keepdim=True)
    scale = shift = 0.0
    stats = []
    for dims, weight in zip(stat_dims, weights):
        rest = tuple(d for d in dims if d not in base)
        mean = _mean_over(base_mean, rest)
        var = _mean_over(base_var + (base_mean - mean).square(), rest)
        invstd = torch.rsqrt(var + eps)
        scale = scale + weight * invstd
        shift = shift - weight * invstd * mean
        stats += [mean.detach(), var.detach()]
    y = torch.addcmul(_stored(bias + shift), x, _stored(scale))
    return (y.to(dtype), *stats)


def _affine_norm(x, bias, eps, stat_dims, *weights):
    """`_AffineNorm.apply`, or under torch.compile the same in plain tensor ops.

    Eager, the hand-derived backward is the fast one; compiled, inductor fuses plain ops (and
    autograd's backward of them) with the convs' neighbours, which an autograd Function with a
    data-dependent branch would stop.
    """
    if torch.compiler.is_compiling():
        return _traced_affine_norm(x, bias, eps, stat_dims, *weights)
    return _AffineNorm.apply(x, bias, eps, stat_dims, *weights)


class _Rows(NamedTuple):
    """(N, C, H, W) features viewed as three dims without a copy, in either memory format."""

    data: torch.Tensor  # (N, C, H*W) for NCHW memory, (N, H*W, C) for channels_last memory
    channel_dim: int  # 1 or 2

    @property
    def spatial_dim(self) -> int:
        return 3 - self.channel_dim

    def per_channel(self, param: torch.Tensor) -> torch.Tensor:
        """A (C,) tensor shaped (1, C, 1) or (1, 1, C) to broadcast against `data`."""
        return param.view(1, -1, 1) if self.channel_dim == 1 else param.view(1, 1, -1)

    def restore(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`y`, shaped like `data`, back to (N, C, H, W) in the memory format of `like`."""
        if self.channel_dim == 1:
            return y.view(like.shape)
        n, c, h, w = like.shape
        return y.view(n, h, w, c).permute(0, 3, 1, 2)


def _as_rows(x: torch.Tensor) -> _Rows:
    """View NCHW or channels_last `x` as rows; any other layout is first made NCHW-contiguous."""
    n, c = x.shape[:2]
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return _Rows(x.permute(0, 2, 3, 1).view(n, -1, c), channel_dim=2)
    return _Rows(x.contiguous().view(n, c, -1), channel_dim=1)


def _traced_group_norm(rows: _Rows, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """Group norm of `rows` in plain tensor ops, for torch.compile; y shaped like `rows.data`.

    The statistics are per channel first (one reduction over H*W, as instance norm's), then
    averaged over each group of channels by a block-diagonal (C, C) averaging matrix, so every
    tensor keeps its channels in one dim. Viewing channels_last data as (N, H*W, G, C/G) instead,
    as the eager path does, leaves an innermost dim of 2-8 channels that inductor's loops do not
    vectorise: that compiled step took 1.2-1.3x torch BN's, this one about 1.0x
    (benchmarks/bench_resnet_step.py). Float32 statistics and arithmetic, as `_traced_affine_norm`.
    """
    x = rows.data
    dtype = x.dtype
    x = x.to(torch.promote_types(dtype, torch.float32))
    var_c, mean_c = torch.var_mean(x, rows.spatial_dim, correction=0)  # (N, C)
    per_group = mean_c.shape[1] // groups
    group = torch.arange(mean_c.shape[1], device=x.device) // per_group
    average = (group[:, None] == group[None, :]).to(x.dtype) / per_group

    def group_mean(t: torch.Tensor) -> torch.Tensor:  # (N, C) -> each channel's group mean, (N, C)
        return (t.unsqueeze(2) * average).sum(1)

    mean = group_mean(mean_c)
    var = group_mean(var_c + (mean_c - mean).square())  # mean of the variances + variance of the means
    scale = weight * torch.rsqrt(var + eps)
    shift = bias - scale * mean
    y = torch.addcmul(_stored(shift.unsqueeze(rows.spatial_dim)), x, _stored(scale.unsqueeze(rows.spatial_dim)))
    return y.to(dtype)


def _check_input(x: torch.Tensor, num_channels: int, layer: str) -> None:
    """Raise a ValueError unless `x` is (N, num_channels, H, W)."""
    if x.dim() != 4 or x.shape[1] != num_channels:
        raise ValueError(
            f"{layer} expects an (N, {num_channels}, H, W) tensor, got shape {tuple(x.shape)}; "
            f"pass 4-D image features with {num_channels} channels"
        )


class _RunningBatchStats(nn.Module):
    """Per-channel affine parameters plus the running mean and unbiased running variance of the
    batch statistics, kept and updated exactly as nn.BatchNorm2d does (`momentum=None` gives the
    cumulative average, as in PyTorch)."""

    def __init__(self, num_channels: int, eps: float, momentum: float | None) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _rows(self, x: torch.Tensor) -> _Rows:
        """Check (N, C, H, W) input and view it as rows; in training, need 2+ values a channel."""
        _check_input(x, self.num_channels, type(self).__name__)
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
            raise ValueError(
                f"{type(self).__name__} needs more than one value per channel in training mode, "
                f"got input shape {tuple(x.shape)}; use a batch size above 1 or call model.eval()"
            )
        return _as_rows(x)

    def _running_scale_shift(self, rows: _Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel scale and shift that normalise with the running statistics."""
        scale = torch.rsqrt(self.running_var + self.eps)
        return rows.per_channel(scale), rows.per_channel(-self.running_mean * scale)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.flatten(), factor)
        self.running_var.lerp_(var.flatten() * (count / (count - 1)), factor)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_RunningBatchStats):
    """Batch normalisation (Ioffe & Szegedy 2015), matching nn.BatchNorm2d's defaults."""

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_channels, eps, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows(x)
        weight, bias = rows.per_channel(self.weight), rows.per_channel(self.bias)
        if not self.training:
            scale, shift = self._running_scale_shift(rows)
            y = torch.addcmul(bias + weight * shift, rows.data, weight * scale)
            return rows.restore(y, x)
        batch_dims = (0, rows.spatial_dim)
        y, mean, var = _affine_norm(rows.data, bias, self.eps, (batch_dims,), weight)
        self._update_running_stats(mean, var, x.numel() // self.num_channels)
        return rows.restore(y, x)


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
        rows = _as_rows(x)
        weight, bias = rows.per_channel(self.weight), rows.per_channel(self.bias)
        y, _, _ = _affine_norm(rows.data, bias, self.eps, ((rows.spatial_dim,),), weight)
        return rows.restore(y, x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class BatchInstanceNorm2d(_RunningBatchStats):
    """Batch-Instance normalisation (Nam & Kim 2018).

    y = (rho * xhat_batch + (1 - rho) * xhat_instance) * gamma + beta, with a learnable gate rho
    per channel. rho must stay in [0, 1]: call `clamp_gates(model)` after every optimiser step.
    rho starts at `rho_init` = 1 (pure batch norm), as in the authors' released code. The batch
    branch keeps running statistics exactly like BatchNorm2d for eval mode; the instance branch
    always uses instance statistics. Both branches share one fused pass (see `_AffineNorm`).
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
        self.rho = nn.Parameter(torch.full((num_channels,), float(rho_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows(x)
        weight, bias, rho = (rows.per_channel(p) for p in (self.weight, self.bias, self.rho))
        batch_weight, instance_weight = weight * rho, weight * (1.0 - rho)
        instance_dims = (rows.spatial_dim,)
        if not self.training:
            scale, shift = self._running_scale_shift(rows)
            y, _, _ = _affine_norm(
                rows.data, bias + batch_weight * shift, self.eps, (instance_dims,), instance_weight
            )
            return rows.restore(torch.addcmul(y, rows.data, batch_weight * scale), x)
        batch_dims = (0, rows.spatial_dim)
        y, mean, var, _, _ = _affine_norm(
            rows.data, bias, self.eps, (batch_dims, instance_dims), batch_weight, instance_weight
        )
        self._update_running_stats(mean, var, x.numel() // self.num_channels)
        return rows.restore(y, x)


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
        rows = _as_rows(x)
        if torch.compiler.is_compiling():
            return rows.restore(_traced_group_norm(rows, self.weight, self.bias, self.num_groups, self.eps), x)
        groups, per_group = self.num_groups, self.num_channels // self.num_groups
        n, a, b = rows.data.shape
        if rows.channel_dim == 1:  # (N, G, C/G, H*W), statistics over (C/G, H*W)
            shape, dims = (n, groups, per_group, b), (2, 3)
            param_shape = (1, groups, per_group, 1)
        else:  # (N, H*W, G, C/G), statistics over (H*W, C/G)
            shape, dims = (n, a, groups, per_group), (1, 3)
            param_shape = (1, 1, groups, per_group)
        weight, bias = self.weight.view(param_shape), self.bias.view(param_shape)
        y, _, _ = _affine_norm(rows.data.view(shape), bias, self.eps, (dims,), weight)
        return rows.restore(y.view(n, a, b), x)

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
