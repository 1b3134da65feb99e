"""The 6n+2 ResNet: layer count, feature-map sizes, every norm, Grad-CAM targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from col775.resnet.norms import NORM_KINDS, clamp_gates
from col775.resnet.resnet import ResNet, ZeroPadShortcut, gradcam_target_layers


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_has_exactly_6n_plus_2_weighted_layers(n: int) -> None:
    model = ResNet(n, num_classes=25)
    layers = weighted_layers(model)
    assert len(layers) == 6 * n + 2
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert all(conv.kernel_size == (3, 3) for conv in convs)
    assert [conv.out_channels for conv in convs] == [16] * (2 * n + 1) + [32] * 2 * n + [64] * 2 * n
    assert isinstance(layers[-1], nn.Linear) and layers[-1].out_features == 25


@pytest.mark.parametrize("n", [1, 2])
def test_output_shape(n: int) -> None:
    model = ResNet(n, num_classes=7)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_feature_maps_are_256_128_64_for_a_256_input() -> None:
    model = ResNet(2, num_classes=25).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[1:]))
        )
        for name, module in [("stem", model.stem)]
        + [(f"stage{i}", stage) for i, stage in enumerate(model.stages, 1)]
        + [(f"target{i}", layer) for i, layer in enumerate(gradcam_target_layers(model))]
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 256, 256))
    for hook in hooks:
        hook.remove()
    assert sizes["stem"] == (16, 256, 256)
    assert sizes["stage1"] == (16, 256, 256)
    assert sizes["stage2"] == (32, 128, 128)
    assert sizes["stage3"] == (64, 64, 64)
    assert [sizes[f"target{i}"] for i in range(4)] == [(64, 64, 64)] * 4


@pytest.mark.parametrize("n", [1, 3])
def test_gradcam_targets_are_the_last_2n_layers(n: int) -> None:
    model = ResNet(n, num_classes=5)
    targets = gradcam_target_layers(model)
    assert len(targets) == 2 * n
    assert len({id(t) for t in targets}) == 2 * n
    last_stage = list(model.stages[-1].modules())
    assert all(any(t is m for m in last_stage) for t in targets)


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_every_norm_kind_trains(norm: str) -> None:
    torch.manual_seed(0)
    model = ResNet(1, num_classes=3, norm=norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    clamp_gates(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.isfinite(model.eval()(images)).all()


@pytest.mark.parametrize("norm", ["torch_bn", "bn", "gn", "nn"])
def test_conv_bias_only_without_norm(norm: str) -> None:
    model = ResNet(1, num_classes=2, norm=norm)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all((conv.bias is not None) == (norm == "nn") for conv in convs)


def test_norm_options_reach_every_norm() -> None:
    model = ResNet(1, num_classes=2, norm="gn", num_groups=4)
    groups = [m.num_groups for m in model.modules() if hasattr(m, "num_groups")]
    assert len(groups) == 7 and set(groups) == {4}


def test_eval_mode_is_deterministic() -> None:
    torch.manual_seed(0)
    model = ResNet(1, num_classes=5, norm="bin")
    model(torch.randn(4, 3, 16, 16))  # one training pass moves the running statistics
    model.eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(images), model(images))


def test_zero_pad_shortcut_subsamples_and_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))
    assert list(ZeroPadShortcut(16, 32, 2).parameters()) == []


def test_kaiming_init_of_convs() -> None:
    torch.manual_seed(0)
    model = ResNet(3, num_classes=2)
    conv = model.stages[2][1].conv1  # 64 -> 64 channels, fan_out = 64 * 9
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("n, num_classes", [(0, 5), (2, 0), (1.5, 5)])
def test_bad_sizes_are_clear_errors(n, num_classes) -> None:
    with pytest.raises(ValueError, match="ResNet needs"):
        ResNet(n, num_classes)


def test_unknown_norm_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown norm kind"):
        ResNet(1, num_classes=2, norm="batch")


@pytest.mark.parametrize("norm", ["bn", "bin", "gn"])
def test_channels_last_model_matches_nchw(norm: str) -> None:
    """The GPU training loop converts the model and images to channels_last."""
    torch.manual_seed(0)
    model = ResNet(1, num_classes=3, norm=norm).double()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    want = model(images)
    model = model.to(memory_format=torch.channels_last)
    got = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want)
