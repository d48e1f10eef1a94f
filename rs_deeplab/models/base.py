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
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.functional import interpolate


class SegOutput(NamedTuple):
    """Training-mode output of a model with an auxiliary head: main and auxiliary logits, both at input size."""

    out: torch.Tensor
    aux: torch.Tensor


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
            f"output_stride={self.output_stride}, has_aux={self.has_aux}"
        )
