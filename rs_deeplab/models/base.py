"""The contract every DeepLab model honours: logits at the input size, an optional auxiliary output, head modules.

Forward contract (what the training engine and the inference code rely on):

* ``model(x)`` with ``x`` of shape ``(B, in_channels, H, W)`` returns class logits ``(B, num_classes, H, W)`` for
  any ``H, W`` (odd sizes included): the logits are bilinearly resized to the input size inside the model.
* Only when ``model.has_aux`` is true **and** the model is in training mode, ``model(x)`` returns a
  :class:`SegOutput` ``(out, aux)`` instead: both are logits at the input size, and the engine adds
  ``model.aux_weight * loss(aux)`` to the main loss. In eval mode such a model returns plain logits too, so
  inference code never needs to know about auxiliary heads.
* ``model.head_modules()`` lists the freshly initialised layers (classifier, ASPP, decoder, auxiliary head) that
  the DeepLab papers train with a 10x learning rate; everything else is the (possibly ImageNet-initialised)
  backbone. :func:`rs_deeplab.models.param_groups` turns this into two parameter lists.
* ``model.output_stride`` is the current ratio of input size to backbone feature size; it can be changed in place
  with :func:`rs_deeplab.models.set_output_stride` among ``model.allowed_output_strides``.
* Training-mode batch norm in the image-pooling ASPP branch needs a batch of at least two images.
* ``model.msc_scales`` (``build_model(msc=...)``, e.g. ``(1.0, 0.75, 0.5)``) turns on DeepLab v2's multi-scale
  inputs (MSC, section 4): the same network runs on the input resized by each scale, every score map is resized
  bilinearly to the input size and the maps are fused by their per-position, per-class maximum. In eval mode the
  fused logits are returned as plain logits (inference needs no change); in training mode an :class:`MSCOutput`
  ``(out, scales, aux)`` carries the fused logits, one map per scale (in ``msc_scales`` order) and the auxiliary
  logits of the scale-1 pass only (None without an auxiliary head). The scales add no parameter, so state-dict
  keys are the single-scale model's: an MSC checkpoint also loads into a single-scale model and vice versa.

Subclasses implement the single-scale network as ``forward_single``; :meth:`DeepLabBase.forward` runs it once, or
once per scale.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.functional import interpolate


class SegOutput(NamedTuple):
    """Training-mode output of a model with an auxiliary head: main and auxiliary logits, both at input size."""

    out: torch.Tensor
    aux: torch.Tensor


class MSCOutput(NamedTuple):
    """Training-mode output of a multi-scale (MSC) model, every map logits at the input size.

    Attributes:
        out: The fused logits: per position and class, the maximum over ``scales``.
        scales: One logits map per input scale, in ``model.msc_scales`` order, each resized to the input size.
        aux: The auxiliary head's logits of the scale-1 pass (None when the model has no auxiliary head).
    """

    out: torch.Tensor
    scales: tuple[torch.Tensor, ...]
    aux: torch.Tensor | None


class DeepLabBase(nn.Module):
    """Base of the DeepLab models: holds the attributes of the forward contract described in the module docstring.

    Subclasses set ``encoder`` (the backbone), implement ``head_modules`` and ``_apply_output_stride``, and
    build their forward from :meth:`resize` and :meth:`wrap_output`.
    """

    encoder: nn.Module
    allowed_output_strides: tuple[int, ...] = (8,)

    def __init__(self, *, num_classes: int, in_channels: int, backbone: str, output_stride: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.backbone = backbone
        self.output_stride = output_stride
        self.has_aux = False
        self.aux_weight = 0.0
        self.msc_scales: tuple[float, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput | MSCOutput:
        """Logits ``(B, num_classes, H, W)``; in training mode ``SegOutput``/``MSCOutput`` (module docstring)."""
        if not self.msc_scales:
            return self.forward_single(x)
        return self.forward_msc(x, self.msc_scales)

    def forward_single(self, x: torch.Tensor, aux: bool = True) -> torch.Tensor | SegOutput:
        """The single-scale network; ``aux=False`` skips the auxiliary head (only MSC passes other than 1 do)."""
        raise NotImplementedError

    def forward_msc(self, x: torch.Tensor, scales: Sequence[float]) -> torch.Tensor | MSCOutput:
        """Run the network on ``x`` resized by each scale, fuse the input-size maps by their maximum (MSC)."""
        size = x.shape[-2:]
        maps: list[torch.Tensor] = []
        aux: torch.Tensor | None = None
        for scale in scales:
            one = scale == 1.0
            result = self.forward_single(x if one else scale_input(x, scale), aux=one)
            if isinstance(result, SegOutput):
                aux = result.aux
                result = result.out
            maps.append(result if one else self.resize(result, size))
        fused = functools.reduce(torch.maximum, maps)
        if self.training:
            return MSCOutput(fused, tuple(maps), aux)
        return fused

    def head_modules(self) -> list[nn.Module]:
        """The freshly initialised layers that train with the head learning rate."""
        raise NotImplementedError

    def load_imagenet(self, state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
        """Load a local ImageNet state_dict (read from ``path``) into the backbone."""
        raise NotImplementedError

    def _apply_output_stride(self, output_stride: int) -> None:
        """Re-dilate the backbone (and rescale ASPP rates) for ``output_stride``; called by ``set_output_stride``."""
        raise NotImplementedError

    @staticmethod
    def resize(logits: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = True) -> torch.Tensor:
        """Bilinearly resize ``logits`` to ``size`` (a no-op when it already has that size).

        While tracing (ONNX/TorchScript export) the resize is always recorded, so the exported graph does not bake
        in the example's sizes.
        """
        if not torch.jit.is_tracing() and tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)

    def wrap_output(self, out: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor | SegOutput:
        """Return ``SegOutput(out, aux)`` in training mode when there is an auxiliary output, else ``out``."""
        if aux is not None and self.training:
            return SegOutput(out, aux)
        return out

    def extra_repr(self) -> str:
        """Summary shown by ``print(model)``."""
        return (
            f"backbone={self.backbone}, num_classes={self.num_classes}, in_channels={self.in_channels}, "
            f"output_stride={self.output_stride}, has_aux={self.has_aux}, msc_scales={self.msc_scales}"
        )


def scale_input(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` bilinearly resized by ``scale`` (size ``floor(H * scale), floor(W * scale)``, at least 1 pixel).

    The factor, not a size, is recorded when tracing, so an exported graph keeps its dynamic height and width.
    """
    return interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True, recompute_scale_factor=False)
