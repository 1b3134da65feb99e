"""The 6n+2-layer ResNet of He et al. (2016, section 4.2) with a choice of normalisation.

Layers with weights, for a 256x256 input:

    stem     one 3x3 conv, 16 filters, at 256x256                     1 layer
    stage 1  n residual blocks of two 3x3 convs, 16 filters, 256x256  2n layers
    stage 2  n blocks, 32 filters, 128x128                            2n layers
    stage 3  n blocks, 64 filters, 64x64                              2n layers
    head     global mean pool, one linear layer to the classes        1 layer

Every conv is followed by the chosen normalisation (see `norms.make_norm`) and a ReLU. The
first conv of stages 2 and 3 has stride 2. Where a block changes shape, the shortcut is the
paper's parameter-free option A (stride-2 subsampling, zero channels appended), so the network
has exactly 6n+2 weighted layers.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from col775.resnet.norms import make_norm

STAGE_WIDTHS: tuple[int, int, int] = (16, 32, 64)


def _conv3x3(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride`, then append zero channels up to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"ZeroPadShortcut cannot shrink channels ({in_channels} -> {out_channels})"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # pad the channel dim at its end


class BasicBlock(nn.Module):
    """Two conv-norm layers with a residual connection around them.

    out = act2(norm2(conv2(act1(norm1(conv1(x))))) + shortcut(x))
    `act1` and `act2` are separate ReLU modules so that hooks (Grad-CAM) see each layer's output.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: str, norm_kwargs: dict
    ) -> None:
        super().__init__()
        bias = norm == "nn"  # a following norm makes a conv bias redundant
        self.conv1 = _conv3x3(in_channels, out_channels, stride, bias)
        self.norm1 = make_norm(norm, out_channels, **norm_kwargs)
        self.act1 = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels, 1, bias)
        self.norm2 = make_norm(norm, out_channels, **norm_kwargs)
        self.act2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with 6n+2 weighted layers for `num_classes` classes (see the module docstring).

    `norm` names the normalisation after every conv (`norms.NORM_KINDS`); `norm_kwargs` go to
    each norm layer (e.g. `num_groups=4` for "gn"). Attributes: `stem`, `stages` (three
    nn.Sequential of BasicBlocks, widths 16/32/64) and `fc`.
    """

    def __init__(self, n: int, num_classes: int, norm: str = "torch_bn", **norm_kwargs) -> None:
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"ResNet needs n >= 1 blocks per stage, got n={n!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"ResNet needs num_classes >= 1, got {num_classes!r}")
        self.n = n
        self.norm = norm
        width = STAGE_WIDTHS[0]
        self.stem = nn.Sequential(
            OrderedDict(
                conv=_conv3x3(3, width, 1, bias=norm == "nn"),
                norm=make_norm(norm, width, **norm_kwargs),
                act=nn.ReLU(),
            )
        )
        stages = []
        in_channels = width
        for index, out_channels in enumerate(STAGE_WIDTHS):
            blocks = []
            for block in range(n):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride, norm, norm_kwargs))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal convs (fan_out, as torchvision's ResNet), zero conv biases.

        Norm layers keep their own start (gamma = 1, beta = 0, rho = 1); the linear layer keeps
        PyTorch's default.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes) logits."""
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))  # global mean pool: (B, 64)


def gradcam_target_layers(model: ResNet) -> list[nn.Module]:
    """The 2n modules whose outputs are the last 2n layers' feature maps (64x64 for 256x256 input).

    For each block of the last stage: `act1` (the ReLU after its first conv and norm) and `act2`
    (the ReLU after the residual sum, i.e. the block's output). These are the layers' activations
    as the rest of the network sees them, which is what Grad-CAM should weigh.
    """
    if not isinstance(model, ResNet):
        raise TypeError(f"gradcam_target_layers expects a ResNet, got {type(model).__name__}")
    return [layer for block in model.stages[-1] for layer in (block.act1, block.act2)]
