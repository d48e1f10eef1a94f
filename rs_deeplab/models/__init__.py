"""The DeepLab family behind one builder: an explicit ``MODELS`` table, ``build_model`` and ``param_groups``.

``build_model("deeplabv3plus", num_classes=6, in_channels=4)`` returns a model following the contract in
:mod:`rs_deeplab.models.base`: logits ``(B, num_classes, H, W)`` at the input size, except that a model with
``has_aux`` returns :class:`SegOutput` ``(out, aux)`` in training mode, and a model built with ``msc`` scales
(DeepLab v2's multi-scale inputs, any model and head) returns :class:`MSCOutput` ``(out, scales, aux)`` there.
``None`` for ``backbone`` or ``output_stride`` means the paper's choice, listed per model in ``MODELS``.

=============  ==========================================  ====================  ==============
name           backbones (default first)                   output strides        heads
=============  ==========================================  ====================  ==============
deeplabv1      vgg16                                       8                     paper
deeplabv2      resnet101, resnet50, resnet18/34/152        8                     paper
deeplabv3      resnet101, resnet18/34/50/152, resnext      16 (paper), 8         paper, mmseg (8)
deeplabv3plus  resnet101, resnet18/34/50/152, resnext      16 (paper), 8         paper, mmseg (8)
=============  ==========================================  ====================  ==============
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from rs_deeplab.cli.errors import InputError
from rs_deeplab.config.model_choices import DEFAULT_OUTPUT_STRIDES, msc_problem
from rs_deeplab.models import deeplab_v3
from rs_deeplab.models.base import DeepLabBase, MSCOutput, SegOutput
from rs_deeplab.models.deeplab_v1 import DeepLabV1
from rs_deeplab.models.deeplab_v2 import RESNETS, DeepLabV2
from rs_deeplab.models.deeplab_v3 import DeepLabV3, DeepLabV3Plus
from rs_deeplab.models.stride import set_output_stride
from rs_deeplab.models.weights import IMAGENET_WEIGHTS, read_state_dict, resolve_weights

__all__ = [
    "IMAGENET_WEIGHTS",
    "MODELS",
    "DeepLabBase",
    "DeepLabV1",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "MSCOutput",
    "ModelSpec",
    "SegOutput",
    "build_model",
    "msc_problem",
    "param_groups",
    "resolve_weights",
    "set_output_stride",
]


@dataclass(frozen=True)
class ModelSpec:
    """What one ``MODELS`` entry offers; the first backbone is the paper's default.

    ``default_output_stride`` maps each head to its default output stride.
    """

    builder: Callable[..., DeepLabBase]
    backbones: tuple[str, ...]
    output_strides: tuple[int, ...]
    default_output_stride: dict[str, int]

    @property
    def heads(self) -> tuple[str, ...]:
        """The head variants this model offers."""
        return tuple(self.default_output_stride)


def _v1(*, num_classes: int, in_channels: int, **_: Any) -> DeepLabBase:
    return DeepLabV1(num_classes=num_classes, in_channels=in_channels)


def _v2(*, num_classes: int, in_channels: int, backbone: str, **_: Any) -> DeepLabBase:
    return DeepLabV2(num_classes=num_classes, in_channels=in_channels, backbone=backbone)


_V2_BACKBONES = ("resnet101", "resnet50", *(b for b in RESNETS if b not in ("resnet101", "resnet50")))
_V3_BACKBONES = ("resnet101", *(b for b in deeplab_v3.BACKBONES if b != "resnet101"))

MODELS: dict[str, ModelSpec] = {
    "deeplabv1": ModelSpec(_v1, ("vgg16",), (8,), dict(DEFAULT_OUTPUT_STRIDES["deeplabv1"])),
    "deeplabv2": ModelSpec(_v2, _V2_BACKBONES, (8,), dict(DEFAULT_OUTPUT_STRIDES["deeplabv2"])),
    "deeplabv3": ModelSpec(DeepLabV3, _V3_BACKBONES, (8, 16), dict(DEFAULT_OUTPUT_STRIDES["deeplabv3"])),
    "deeplabv3plus": ModelSpec(DeepLabV3Plus, _V3_BACKBONES, (8, 16), dict(DEFAULT_OUTPUT_STRIDES["deeplabv3plus"])),
}
"""The heads and default strides come from :mod:`rs_deeplab.config.model_choices`, which the config checks read without
torch."""


def _choose(what: str, value: Any, choices: tuple[Any, ...], model: str) -> None:
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise InputError(f"{model}: {what} {value!r} is not supported; choose one of {listed}")


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    backbone: str | None = None,
    output_stride: int | None = None,
    head: str = "paper",
    weights: str | os.PathLike[str] | None = None,
    aux_weight: float = 0.4,
    msc: Sequence[float] | None = None,
) -> DeepLabBase:
    """Build a DeepLab model by name (the keyword names match the config's ``ModelConfig``).

    Args:
        name: A key of ``MODELS``.
        num_classes: Number of output classes (logit channels).
        in_channels: Input bands, 1 or more.
        backbone: Backbone name; None picks the paper's (first in ``MODELS[name].backbones``).
        output_stride: 8 or 16 where the model allows it; None picks the head's default.
        head: ``"paper"`` or, for v3/v3+, ``"mmseg"`` (512-channel ASPP and an auxiliary FCN head).
        weights: ``"imagenet"`` for torchvision's ImageNet weights of the backbone (from torch's hub cache,
            downloaded there when missing; see :mod:`rs_deeplab.models.weights`), a local ImageNet state_dict
            for the backbone (torchvision keys), or None to leave it random. The first convolution is adapted to
            ``in_channels`` either way.
        aux_weight: Auxiliary-loss weight of the mmseg head; 0 builds no auxiliary head. The paper heads have no
            auxiliary head and ignore it (the config always carries a value).
        msc: Input scales of DeepLab v2's multi-scale training and inference (e.g. ``[1.0, 0.75, 0.5]``: positive,
            distinct, 1.0 among them), or None for a single scale; sets ``model.msc_scales`` (see
            :mod:`rs_deeplab.models.base`). It adds no parameter: the weights are the single-scale model's.

    Raises:
        InputError: Unknown name or unsupported combination; the message lists the valid choices.
        CheckpointError: ``weights`` is missing, unreadable or does not match the backbone; or ``"imagenet"``
            and the file is neither in the hub cache nor downloadable (the message names file, URL and folder).
    """
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    _choose("head", head, spec.heads, name)
    backbone = spec.backbones[0] if backbone is None else backbone
    _choose("backbone", backbone, spec.backbones, name)
    output_stride = spec.default_output_stride[head] if output_stride is None else output_stride
    _choose("output_stride", output_stride, spec.output_strides, name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise InputError(f"{name}: in_channels must be a positive integer, got {in_channels!r}")
    if aux_weight < 0:
        raise InputError(f"{name}: aux_weight must be >= 0, got {aux_weight}")
    if msc is not None and (problem := msc_problem(msc)) is not None:
        raise InputError(f"{name}: msc: {problem}")
    path = resolve_weights(weights, backbone)  # before building: a missing file fails fast
    model = spec.builder(
        num_classes=num_classes,
        in_channels=in_channels,
        backbone=backbone,
        output_stride=output_stride,
        head=head,
        aux_weight=aux_weight,
    )
    if path is not None:
        model.load_imagenet(read_state_dict(path), path)
    model.msc_scales = None if msc is None else tuple(float(s) for s in msc)
    return model


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's parameters into ``(backbone, head)`` for the DeepLab 10x head learning rate.

    The head is what ``model.head_modules()`` lists (new layers); the backbone is everything else. Each
    parameter appears in exactly one list; a ``DistributedDataParallel`` wrapper is looked through.
    """
    inner = getattr(model, "module", model)
    if not isinstance(inner, DeepLabBase):
        raise InputError(f"{type(inner).__name__} is not an rs_deeplab DeepLab model; build it with build_model")
    head_ids = {id(p) for module in inner.head_modules() for p in module.parameters()}
    params = list(inner.parameters())
    return [p for p in params if id(p) not in head_ids], [p for p in params if id(p) in head_ids]
