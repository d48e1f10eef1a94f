"""Output-stride switching: re-dilate a ResNet's last stages in place, without touching any weight.

A ResNet reaches output stride 32 through stride-2 convolutions in ``layer3`` and ``layer4``. Atrous (dilated)
convolution replaces such a stride by 1 and dilates every 3x3 convolution after it, so the stage keeps its
receptive field at a finer feature grid (DeepLab v2/v3). Only ``stride``, ``dilation`` and ``padding`` attributes
change, so state_dict keys and shapes stay the same and a model trained at output stride 16 can run at 8 with the
same weights (DeepLab v3, section 4.1 "Inference strategy").

Convention: every 3x3 convolution of a dilated stage, its first block included, uses the stage rate (times the
multi-grid factor in ``layer4``), as segmentation-models-pytorch does; torchvision instead keeps the previous rate in
the first block of a stage. The difference is one convolution per stage.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from rs_deeplab.cli.errors import InputError
from rs_deeplab.models.base import DeepLabBase

# (stride, dilation) of layer3 and of layer4 for each output stride.
_STAGES: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {
    32: ((2, 1), (2, 1)),
    16: ((2, 1), (1, 2)),
    8: ((1, 2), (1, 4)),
}


def _set_conv(conv: nn.Conv2d, *, stride: int | None = None, dilation: int | None = None) -> None:
    if stride is not None:
        conv.stride = (stride, stride)
    if dilation is not None:
        conv.dilation = (dilation, dilation)
        conv.padding = ((conv.kernel_size[0] // 2) * dilation, (conv.kernel_size[1] // 2) * dilation)


def _configure_block(block: nn.Module, stride: int, rate: int) -> None:
    if isinstance(block, Bottleneck):
        # torchvision's ResNet v1.5 puts the stride on the 3x3 convolution.
        _set_conv(block.conv2, stride=stride, dilation=rate)
    elif isinstance(block, BasicBlock):
        _set_conv(block.conv1, stride=stride, dilation=rate)
        _set_conv(block.conv2, dilation=rate)
    else:
        raise TypeError(f"not a torchvision ResNet block: {type(block).__name__}")
    downsample = block.downsample
    if isinstance(downsample, nn.Sequential) and isinstance(downsample[0], nn.Conv2d):
        _set_conv(downsample[0], stride=stride)
    block.stride = stride


def dilate_resnet(resnet: nn.Module, output_stride: int, multi_grid: Sequence[int] = (1,)) -> None:
    """Set strides and atrous rates of a torchvision-style ResNet's ``layer3`` and ``layer4`` in place.

    Args:
        resnet: A torchvision ``ResNet`` or a subclass (segmentation-models-pytorch's ResNet encoders).
        output_stride: 8, 16 or 32.
        multi_grid: Per-block rate multipliers of ``layer4`` (DeepLab v3 uses ``(1, 2, 4)``); a stage with more
            blocks than entries repeats the last one, a stage with fewer uses the first ones.
    """
    if output_stride not in _STAGES:
        raise InputError(f"output_stride {output_stride} is not supported for a ResNet; use one of 8, 16, 32")
    (stride3, rate3), (stride4, rate4) = _STAGES[output_stride]
    layers: list[tuple[nn.Sequential, int, int, Sequence[int]]] = [
        (resnet.layer3, stride3, rate3, (1,)),  # type: ignore[list-item]
        (resnet.layer4, stride4, rate4, tuple(multi_grid)),  # type: ignore[list-item]
    ]
    for layer, stride, rate, grid in layers:
        for i, block in enumerate(layer):
            _configure_block(block, stride if i == 0 else 1, rate * grid[min(i, len(grid) - 1)])


def set_conv_rate(branch: nn.Module, rate: int) -> None:
    """Set the atrous rate of every 3x3 convolution inside ``branch`` (an ASPP branch) in place."""
    for module in branch.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            _set_conv(module, dilation=rate)


def scaled_rates(rates_at_16: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """ASPP rates for ``output_stride`` given the rates at 16: doubled at 8, as the DeepLab v3 paper does."""
    return tuple(r * 16 // output_stride for r in rates_at_16)


def set_output_stride(model: nn.Module, output_stride: int) -> nn.Module:
    """Switch a built DeepLab model to ``output_stride`` in place and return it.

    The backbone's last stage(s) are re-dilated and, for v3/v3+, the ASPP rates rescaled (6/12/18 at 16 become
    12/24/36 at 8). Weights are untouched: ``state_dict`` keys and shapes are the same before and after, so a model
    trained at 16 can be evaluated at 8. A ``DistributedDataParallel`` wrapper is looked through.

    Raises:
        InputError: The model does not allow ``output_stride`` (DeepLab v1 and v2 run at 8 only).
    """
    inner = getattr(model, "module", model)
    if not isinstance(inner, DeepLabBase):
        raise InputError(f"{type(inner).__name__} is not an rs_deeplab DeepLab model; build it with build_model")
    if output_stride not in inner.allowed_output_strides:
        choices = ", ".join(str(s) for s in inner.allowed_output_strides)
        raise InputError(f"{type(inner).__name__} supports output_stride {choices}; got {output_stride}")
    inner._apply_output_stride(output_stride)
    inner.output_stride = output_stride
    return model
