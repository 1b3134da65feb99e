"""The from-scratch norms against PyTorch's own layers (independent references)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from col775.resnet import norms
from col775.resnet.norms import (
    NORM_KINDS,
    BatchInstanceNorm2d,
    BatchNorm2d,
    GroupNorm2d,
    InstanceNorm2d,
    LayerNorm2d,
    NoNorm2d,
    clamp_gates,
    make_norm,
)

C = 8

# case: (kind, options for ours, the PyTorch layer it must equal)
REFERENCES = {
    "bn": ("bn", {}, lambda: nn.BatchNorm2d(C)),
    "bn_cumulative": ("bn", {"momentum": None}, lambda: nn.BatchNorm2d(C, momentum=None)),
    "in": ("in", {}, lambda: nn.InstanceNorm2d(C, affine=True)),
    "ln": ("ln", {}, lambda: nn.GroupNorm(1, C)),
    "gn_default": ("gn", {}, lambda: nn.GroupNorm(8, C)),
    "gn4": ("gn", {"num_groups": 4}, lambda: nn.GroupNorm(4, C)),
    "gn2": ("gn", {"num_groups": 2}, lambda: nn.GroupNorm(2, C)),
    "bin_rho1": ("bin", {"rho_init": 1.0}, lambda: nn.BatchNorm2d(C)),
    "bin_rho0": ("bin", {"rho_init": 0.0}, lambda: nn.InstanceNorm2d(C, affine=True)),
}


def build_pair(case: str, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """Ours and the reference, with the same random (non-trivial) gamma and beta."""
    kind, options, reference = REFERENCES[case]
    ours = make_norm(kind, C, **options).to(dtype)
    ref = reference().to(dtype)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(C, dtype=dtype))
        ours.bias.copy_(torch.randn(C, dtype=dtype))
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    return ours, ref


def step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and (weight, bias) gradients of one forward/backward."""
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(grad)
    return y.detach(), x.grad, module.weight.grad, module.bias.grad


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """|got - want| <= tol * max(1, max |want|): a tolerance relative to the tensor's scale.

    float32 sums of hundreds of terms round at about 1e-7 of the summands' size, and the
    summands (e.g. grad * x) can be larger than the result, so an elementwise 1e-5 would be
    testing rounding rather than the formula.
    """
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, want.abs().max().item())
    error = (got - want).abs().max().item()
    assert error <= tol * scale, f"max error {error:.3g} > {tol} * {scale:.3g}"


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("case", list(REFERENCES))
def test_matches_pytorch_train_then_eval(case: str, dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    ours, ref = build_pair(case, dtype)
    shift = 3.0  # a non-zero mean, so that centring matters
    for _ in range(3):  # several training steps, so running statistics accumulate
        x = torch.randn(4, C, 5, 6, dtype=dtype) * 2.0 + shift
        grad = torch.randn_like(x)
        for got, want in zip(step(ours, x, grad), step(ref, x, grad)):
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    if isinstance(ref, nn.BatchNorm2d):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(ref, name), atol=tol, rtol=tol)
    ours.eval()
    ref.eval()
    x = torch.randn(2, C, 5, 6, dtype=dtype) + shift
    grad = torch.randn_like(x)
    for got, want in zip(step(ours, x, grad), step(ref, x, grad)):
        assert_close_to_scale(got, want, tol)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_instance_norm_matches_mix_of_pytorch_norms(training: bool) -> None:
    """BIN with a random gate against rho * F.batch_norm + (1 - rho) * F.instance_norm."""
    torch.manual_seed(1)
    dtype = torch.float64
    ours = BatchInstanceNorm2d(C).to(dtype)
    with torch.no_grad():
        ours.rho.copy_(torch.rand(C, dtype=dtype))
        ours.weight.normal_()
        ours.bias.normal_()
    rho, weight, bias = (
        p.detach().clone().requires_grad_() for p in (ours.rho, ours.weight, ours.bias)
    )
    running_mean = torch.zeros(C, dtype=dtype)
    running_var = torch.ones(C, dtype=dtype)
    if not training:  # fill the running statistics with a few training batches first
        for _ in range(2):
            x = torch.randn(3, C, 4, 4, dtype=dtype) + 1.0
            ours(x)
            F.batch_norm(x, running_mean, running_var, training=True)
        ours.eval()

    x = torch.randn(3, C, 4, 5, dtype=dtype) + 1.0
    grad = torch.randn_like(x)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(x_ours).backward(grad)
    batch = F.batch_norm(x_ref, running_mean, running_var, training=training)
    instance = F.instance_norm(x_ref)
    shape = (1, C, 1, 1)
    mixed = rho.view(shape) * batch + (1 - rho.view(shape)) * instance
    (mixed * weight.view(shape) + bias.view(shape)).backward(grad)

    torch.testing.assert_close(x_ours.grad, x_ref.grad)
    for mine, theirs in ((ours.rho, rho), (ours.weight, weight), (ours.bias, bias)):
        torch.testing.assert_close(mine.grad, theirs.grad)
    torch.testing.assert_close(ours.running_mean, running_mean)
    torch.testing.assert_close(ours.running_var, running_var)


@pytest.mark.parametrize(
    "stat_dims, shape, weight_shape",
    [
        (((0, 2),), (3, 4, 5), (1, 4, 1)),  # batch norm on (N, C, H*W)
        (((2,),), (3, 4, 5), (1, 4, 1)),  # instance norm
        (((2, 3),), (2, 2, 3, 5), (1, 2, 3, 1)),  # group norm on (N, G, C/G, H*W)
        (((0, 2), (2,)), (3, 4, 5), (1, 4, 1)),  # batch-instance norm: two terms
    ],
    ids=["batch", "instance", "group", "batch_instance"],
)
def test_affine_norm_gradcheck(stat_dims, shape, weight_shape) -> None:
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(weight_shape, dtype=torch.float64, requires_grad=True)
    weights = [
        torch.randn(weight_shape, dtype=torch.float64, requires_grad=True) for _ in stat_dims
    ]

    def output(x, bias, *weights):
        return norms._AffineNorm.apply(x, bias, 1e-5, stat_dims, *weights)[0]

    assert torch.autograd.gradcheck(output, (x, bias, *weights))


@pytest.mark.parametrize("kind, reference", [("in", nn.InstanceNorm2d), ("bn", nn.BatchNorm2d)])
def test_large_mean_small_spread_stays_accurate(kind: str, reference: type) -> None:
    """|mean| = 1000 std: E[x^2] - E[x]^2 in float32 would be off by ~5%; the fallback is exact."""
    torch.manual_seed(3)
    x = torch.randn(2, C, 6, 6, dtype=torch.float64) * 0.1 + 100.0
    want = reference(C).double()(x)
    got = make_norm(kind, C)(x.float())
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["bn", "in", "bin", "ln", "gn"])
def test_uses_no_pytorch_norm_kernels(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a PyTorch normalisation kernel was called")

    for name in ("batch_norm", "instance_norm", "group_norm", "layer_norm"):
        monkeypatch.setattr(F, name, forbidden)
        monkeypatch.setattr(torch, name, forbidden)
    layer = make_norm(kind, C)
    x = torch.randn(2, C, 4, 4, requires_grad=True)
    layer(x).sum().backward()
    layer.eval()
    layer(x).sum().backward()
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in layer.modules())


def test_clamp_gates_clamps_every_bin_in_a_model() -> None:
    model = nn.Sequential(BatchInstanceNorm2d(3), nn.ReLU(), nn.Sequential(BatchInstanceNorm2d(3)))
    gates = torch.tensor([-0.5, 0.3, 1.7])
    for module in (model[0], model[2][0]):
        with torch.no_grad():
            module.rho.copy_(gates)
    clamp_gates(model)
    for module in (model[0], model[2][0]):
        assert module.rho.tolist() == pytest.approx([0.0, 0.3, 1.0])
        assert module.rho.requires_grad


def test_clamp_gates_after_an_optimiser_step() -> None:
    layer = BatchInstanceNorm2d(4, rho_init=0.99)
    optimizer = torch.optim.SGD(layer.parameters(), lr=100.0)
    x = torch.randn(2, 4, 3, 3)
    (layer(x) * torch.randn_like(x)).sum().backward()
    optimizer.step()
    assert (layer.rho < 0).any() or (layer.rho > 1).any()  # the huge step left [0, 1]
    clamp_gates(layer)
    assert ((layer.rho >= 0) & (layer.rho <= 1)).all()


def test_training_clamps_the_gates_after_every_step(tmp_path, monkeypatch) -> None:
    """A BIN run's steps push gates out of [0, 1]; what training keeps is exactly the clamped gate."""
    from col775.resnet import train as train_module
    from col775.resnet.config import ResnetConfig

    before, stepped, models = [], [], []  # the gates before and right after each optimiser step
    real_optimizer = train_module.build_optimizer

    def spied_optimizer(config, model):
        optimizer = real_optimizer(config, model)
        gates = [m.rho for m in model.modules() if isinstance(m, BatchInstanceNorm2d)]
        optimizer.register_step_pre_hook(lambda *_: before.append(torch.cat([g.detach().clone() for g in gates])))
        optimizer.register_step_post_hook(lambda *_: stepped.append(torch.cat([g.detach().clone() for g in gates])))
        models.append(model)
        return optimizer

    monkeypatch.setattr(train_module, "build_optimizer", spied_optimizer)
    config = ResnetConfig(
        image_size=16, synthetic_train_per_class=4, synthetic_val_per_class=1, synthetic_test_per_class=1, n=1,
        norm="bin", epochs=1, max_steps_per_epoch=2, batch_size=16, lr=5.0, warmup_epochs=0, device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    train_module.train(config, tmp_path / "run")
    assert len(stepped) == 2
    for after in stepped:
        assert ((after < 0) | (after > 1)).sum() > 10  # each step left [0, 1] for many gates
    # the second step starts from the first step's gates clamped, and training keeps the second's
    # clamped (its last checkpoint is also its best)
    assert torch.equal(before[1], stepped[0].clamp(0, 1))
    kept = torch.cat([m.rho.detach() for m in models[0].modules() if isinstance(m, BatchInstanceNorm2d)])
    assert torch.equal(kept, stepped[1].clamp(0, 1))


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("torch_bn", nn.BatchNorm2d),
        ("bn", BatchNorm2d),
        ("in", InstanceNorm2d),
        ("bin", BatchInstanceNorm2d),
        ("ln", LayerNorm2d),
        ("gn", GroupNorm2d),
        ("nn", NoNorm2d),
    ],
)
def test_make_norm_builds_each_kind(kind: str, cls: type) -> None:
    layer = make_norm(kind, 16)
    assert type(layer) is cls
    x = torch.randn(2, 16, 3, 3)
    assert layer(x).shape == x.shape


def test_norm_kinds_lists_every_kind() -> None:
    assert set(NORM_KINDS) == {"torch_bn", "bn", "in", "bin", "ln", "gn", "nn"}


def test_no_norm_is_identity() -> None:
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(NoNorm2d(4)(x), x)


def test_group_norm_defaults_to_eight_groups_dividing_resnet_widths() -> None:
    for width in (16, 32, 64):
        assert GroupNorm2d(width).num_groups == 8


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(ValueError, match="torch_bn, bn, in, bin, ln, gn, nn"):
        make_norm("batchnorm", 16)


def test_unknown_option_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="num_groups"):
        make_norm("bn", 16, num_groups=4)


def test_bad_group_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="divide"):
        make_norm("gn", 16, num_groups=3)


@pytest.mark.parametrize("kind", ["bn", "in", "bin", "ln", "gn"])
def test_wrong_input_shape_is_a_clear_error(kind: str) -> None:
    layer = make_norm(kind, 4, **({"num_groups": 2} if kind == "gn" else {}))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(2, 4, 5))


@pytest.mark.parametrize("kind", ["bn", "bin"])
def test_batch_statistics_need_two_values(kind: str) -> None:
    layer = make_norm(kind, 4)
    with pytest.raises(ValueError, match="more than one value"):
        layer(torch.randn(1, 4, 1, 1))
    layer.eval()
    assert layer(torch.randn(1, 4, 1, 1)).shape == (1, 4, 1, 1)


@pytest.mark.parametrize("kind", ["bn", "in", "bin", "ln", "gn"])
def test_channels_last_input_gives_the_same_result(kind: str) -> None:
    """Training on channels_last memory (as on GPU) matches the NCHW result and keeps the format."""
    torch.manual_seed(4)
    options = {"rho_init": 0.3} if kind == "bin" else {}
    nchw, channels_last = make_norm(kind, C, **options), make_norm(kind, C, **options)
    with torch.no_grad():
        for layer in (nchw, channels_last):
            layer.weight.copy_(torch.linspace(-1.0, 2.0, C))
    x = torch.randn(3, C, 5, 4, dtype=torch.float64) + 1.0
    grad = torch.randn_like(x)
    nchw.double()
    channels_last.double()
    results = []
    for layer, fmt in ((nchw, torch.contiguous_format), (channels_last, torch.channels_last)):
        results.append(step(layer, x.contiguous(memory_format=fmt), grad))
        assert results[-1][0].is_contiguous(memory_format=fmt)
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)
    if kind == "bin":
        torch.testing.assert_close(channels_last.rho.grad, nchw.rho.grad)
    if kind in ("bn", "bin"):
        torch.testing.assert_close(channels_last.running_var, nchw.running_var)
        for layer in (nchw, channels_last):
            layer.eval()
        torch.testing.assert_close(
            channels_last(x.contiguous(memory_format=torch.channels_last)), nchw(x)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is used on CUDA only")
@pytest.mark.parametrize("kind", ["bn", "in", "bin", "ln", "gn"])
def test_cuda_bf16_autocast_computes_in_float32(kind: str) -> None:
    torch.manual_seed(5)
    layer = make_norm(kind, C).cuda()
    x = (torch.randn(4, C, 16, 16, device="cuda") + 3.0).to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x.to(torch.bfloat16))
    assert y.dtype == torch.float32
    want = make_norm(kind, C).cuda()(x.to(torch.bfloat16).float())
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("case", list(REFERENCES))
def test_compiled_path_matches_pytorch(case: str, dtype: torch.dtype, tol: float, monkeypatch) -> None:
    """The plain-tensor-op path that torch.compile traces, run eagerly, against PyTorch's layers."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    test_matches_pytorch_train_then_eval(case, dtype, tol)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compiled_path_of_batch_instance_norm(training: bool, monkeypatch) -> None:
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    test_batch_instance_norm_matches_mix_of_pytorch_norms(training)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled_path"])
@pytest.mark.parametrize("case", ["bn", "in", "ln", "gn4", "bin_rho1", "bin_rho0"])
def test_cpu_bf16_autocast_matches_pytorch_in_float32(case: str, compiled: bool, monkeypatch) -> None:
    """Under CPU bf16 autocast, on channels_last input, statistics and arithmetic are float32.

    The reference is PyTorch's layer in float32 on the same bf16-rounded input; the compiled path
    rounds its output to the input's bf16, as PyTorch's own batch norm does.
    """
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiled)
    torch.manual_seed(6)
    ours, ref = build_pair(case, torch.float32)
    x = (torch.randn(4, C, 6, 5) * 2.0 + 3.0).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape)
    x_ours = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x_ours)
    y.float().backward(grad)
    # a bf16 output receives its gradient in bf16
    ref_grad = grad.to(torch.bfloat16).float() if compiled else grad
    want, want_dx, want_dw, want_db = step(ref, x.float(), ref_grad)
    assert y.dtype == (torch.bfloat16 if compiled else torch.float32)
    tol = 1e-2 if compiled else 1e-5  # bf16 keeps 8 significant bits
    torch.testing.assert_close(y.float(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(x_ours.grad.float(), want_dx, atol=1e-2, rtol=1e-2)  # dx is bf16
    torch.testing.assert_close(ours.weight.grad, want_dw, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, want_db, atol=1e-4, rtol=1e-4)
