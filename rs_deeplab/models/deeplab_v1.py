"""DeepLab v1 "LargeFOV" (Chen et al., ICLR 2015) on a torchvision VGG-16, output stride 8.

Layout, following the paper's DeepLab-LargeFOV variant:

* VGG-16 conv layers (torchvision's ``features``, same indices, so its ImageNet keys load directly);
  pool1-pool3 become 3x3/stride-2 max pooling with padding 1, pool4 and pool5 3x3/stride-1 (no downsampling),
  and the conv5 block is dilated by 2 to keep its field of view: output stride 8.
* fc6 as a 3x3 convolution with dilation 12 and 1024 channels, fc7 as a 1x1 convolution with 1024 channels, each
  followed by ReLU and dropout 0.5; fc8 a 1x1 convolution to the classes.
* Logits are bilinearly upsampled to the input size (the paper's "bilinear interpolation" of the score map).

With a local torchvision ``vgg16`` state_dict, the conv layers load directly and, when the file has the
classifier too, fc6/fc7 are initialised by decimating VGG's fully connected layers as the paper does: every 4th
output unit (4096 -> 1024), and for fc6 every 3rd position of the 7x7 kernel (-> 3x3).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from torchvision.models import vgg

from rs_deeplab.cli.errors import CheckpointError
from rs_deeplab.models.base import DeepLabBase
from rs_deeplab.models.weights import StateDict, load_encoder_state, widen_first_conv

log = logging.getLogger(__name__)

_DOWNSAMPLING_POOLS = (4, 9, 16)  # indices of pool1..pool3 in torchvision's vgg16().features
_STRIDE1_POOLS = (23, 30)  # pool4, pool5
_CONV5 = (24, 26, 28)
FC_CHANNELS = 1024
FC6_RATE = 12
_VGG_FC_SHAPES = {
    "classifier.0.weight": (4096, 512 * 7 * 7),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
}


def vgg16_largefov_features(in_channels: int = 3) -> nn.Sequential:
    """VGG-16 conv layers rearranged for output stride 8 (module docstring); torchvision's indices are kept."""
    # torchvision's own VGG-16 ("D") layer builder; the 120M-parameter classifier is never built.
    features = vgg.make_layers(vgg.cfgs["D"])
    for module in features:
        if isinstance(module, nn.Conv2d):  # torchvision VGG's initialisation
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)  # type: ignore[arg-type]
    for i in _DOWNSAMPLING_POOLS:
        features[i] = nn.MaxPool2d(3, stride=2, padding=1)
    for i in _STRIDE1_POOLS:
        features[i] = nn.MaxPool2d(3, stride=1, padding=1)
    for i in _CONV5:
        conv = features[i]
        assert isinstance(conv, nn.Conv2d)
        conv.dilation, conv.padding = (2, 2), (2, 2)
    first = features[0]
    assert isinstance(first, nn.Conv2d)
    features[0] = widen_first_conv(first, in_channels)
    return features


class DeepLabV1(DeepLabBase):
    """DeepLab v1 LargeFOV: ``encoder`` (VGG-16 conv layers), ``fc6``, ``fc7``, ``fc8``; see the module docstring."""

    allowed_output_strides = (8,)

    def __init__(self, *, num_classes: int, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, backbone="vgg16", output_stride=8)
        self.encoder = vgg16_largefov_features(in_channels)
        self.fc6 = nn.Conv2d(512, FC_CHANNELS, 3, padding=FC6_RATE, dilation=FC6_RATE)
        self.fc7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        self.fc8 = nn.Conv2d(FC_CHANNELS, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)  # element-wise, as Caffe's dropout layer
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        nn.init.normal_(self.fc8.weight, std=0.01)  # as the paper's Caffe model
        nn.init.zeros_(self.fc8.bias)  # type: ignore[arg-type]

    def head_modules(self) -> list[nn.Module]:
        """Only fc8 is new; fc6/fc7 come from VGG's fully connected layers when weights are loaded."""
        return [self.fc8]

    def _apply_output_stride(self, output_stride: int) -> None:
        pass  # v1 exists at output stride 8 only; set_output_stride has checked that

    def forward_single(self, x: torch.Tensor, aux: bool = True) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` of one pass (no auxiliary head: ``aux`` is ignored)."""
        h = self.encoder(x)
        h = self.dropout(self.relu(self.fc6(h)))
        h = self.dropout(self.relu(self.fc7(h)))
        return self.resize(self.fc8(h), x.shape[-2:])

    def load_imagenet(self, state: StateDict, path: str | os.PathLike[str]) -> None:
        """Load a torchvision ``vgg16`` state_dict: conv layers always, fc6/fc7 by decimation when present."""
        load_encoder_state(
            self.encoder,
            state,
            path=path,
            description="torchvision vgg16",
            first_conv="0.weight",
            prefix="features.",
            ignore_prefixes=("classifier.",),
        )
        if not any(k.startswith("classifier.") for k in state):
            log.info("%s has no VGG classifier; fc6/fc7 keep their random initialisation", path)
            return
        shapes = {k: tuple(state[k].shape) if k in state else None for k in _VGG_FC_SHAPES}
        if shapes != _VGG_FC_SHAPES:
            raise CheckpointError(
                f"{path}: VGG classifier tensors have shapes {shapes}; a torchvision vgg16 has {_VGG_FC_SHAPES}"
            )
        with torch.no_grad():
            fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
            self.fc6.weight.copy_(fc6)
            self.fc6.bias.copy_(state["classifier.0.bias"][::4])  # type: ignore[union-attr]
            self.fc7.weight.copy_(state["classifier.3.weight"][::4, ::4].reshape(FC_CHANNELS, FC_CHANNELS, 1, 1))
            self.fc7.bias.copy_(state["classifier.3.bias"][::4])  # type: ignore[union-attr]
