"""Heads that segmentation-models-pytorch does not offer: v2's summed ASPP, mmseg-style ASPP heads, an FCN aux head.

The mmseg-style heads follow the layer layout of mmsegmentation's ``ASPPHead``, ``DepthwiseSeparableASPPHead`` and
``FCNHead`` (as used in its DeepLab v3/v3+ configs), so models built with ``head="mmseg"`` have the head size of
the published mmseg tables: every convolution is conv-BN-ReLU without bias, the five ASPP branches are concatenated
and fused by a 3x3 bottleneck, ``Dropout2d(0.1)`` precedes a 1x1 classifier with bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.functional import adaptive_avg_pool2d, interpolate

from rs_deeplab.models.stride import set_conv_rate

LOW_LEVEL_CHANNELS = 48  # DeepLab v3+ projects the stride-4 features to 48 channels


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    """Convolution (no bias, 'same' padding) + batch norm + ReLU."""
    padding = (kernel_size // 2) * dilation
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def separable_conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (mmseg's ``DepthwiseSeparableConvModule``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        *conv_bn_relu(in_channels, out_channels, 1),
    )


class SummedASPP(nn.Module):
    """DeepLab v2 ASPP: parallel 3x3 atrous convolutions straight to class logits, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate, bias=True) for rate in rates
        )
        for conv in self.branches:
            assert isinstance(conv, nn.Conv2d)
            nn.init.normal_(conv.weight, std=0.01)  # the v2 Caffe models use gaussian(0.01) for the new layers
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the branch logits at the feature resolution."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ImagePool(nn.Module):
    """Image-level features: global average pooling, 1x1 conv-BN-ReLU, broadcast back to the feature size."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features resized to the input's spatial size."""
        pooled = self.conv(adaptive_avg_pool2d(x, 1))
        return interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class MMSegASPPHead(nn.Module):
    """mmseg-style ASPP head for DeepLab v3, or with ``low_level_channels`` the separable v3+ head and decoder.

    Args:
        in_channels: Channels of the last backbone stage.
        channels: Width of every branch and of the bottleneck (512 in mmseg's configs).
        rates: Atrous rates of the three 3x3 branches (12, 24, 36 at output stride 8).
        num_classes: Logit channels.
        low_level_channels: Channels of the stride-4 features; when given, the branches are depthwise separable
            and a v3+ decoder (48-channel projection, two separable 3x3 convolutions) follows.
        dropout: ``Dropout2d`` rate before the classifier.
        skip_channels: What the v3+ decoder projects the stride-4 features to (48; mmseg's ResNet-18 uses 12).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        rates: Sequence[int],
        num_classes: int,
        low_level_channels: int | None = None,
        dropout: float = 0.1,
        skip_channels: int = LOW_LEVEL_CHANNELS,
    ) -> None:
        super().__init__()
        separable = low_level_channels is not None
        branches: list[nn.Module] = [ImagePool(in_channels, channels), conv_bn_relu(in_channels, channels, 1)]
        for rate in rates:
            if separable:
                branches.append(separable_conv_bn_relu(in_channels, channels, rate))
            else:
                branches.append(conv_bn_relu(in_channels, channels, 3, rate))
        self.branches = nn.ModuleList(branches)
        self.bottleneck = conv_bn_relu(len(branches) * channels, channels, 3)
        self.low_level: nn.Module | None = None
        self.fuse: nn.Module | None = None
        if low_level_channels is not None:
            self.low_level = conv_bn_relu(low_level_channels, skip_channels, 1)
            self.fuse = nn.Sequential(
                separable_conv_bn_relu(channels + skip_channels, channels),
                separable_conv_bn_relu(channels, channels),
            )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def set_rates(self, rates: Sequence[int]) -> None:
        """Change the atrous rates of the three 3x3 branches in place."""
        for branch, rate in zip(self.branches[2:], rates, strict=True):
            set_conv_rate(branch, rate)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at the resolution of ``x`` (v3) or of ``low_level`` (v3+)."""
        out = self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))
        if self.low_level is not None and self.fuse is not None:
            if low_level is None:
                raise ValueError("the v3+ head needs the stride-4 low-level features")
            skip = self.low_level(low_level)
            out = interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            out = self.fuse(torch.cat([out, skip], dim=1))
        return self.classifier(self.dropout(out))


class FCNAuxHead(nn.Module):
    """mmseg's auxiliary ``FCNHead`` (one 3x3 conv-BN-ReLU, dropout, 1x1 classifier) on backbone stage 3."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Auxiliary logits at the resolution of ``x``."""
        return self.classifier(self.dropout(self.conv(x)))
