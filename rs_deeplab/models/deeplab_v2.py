"""DeepLab v2 (Chen et al., TPAMI 2017) on a torchvision ResNet: dilated stages 3 and 4, summed ASPP, stride 8.

* Backbone: torchvision ResNet-101 by default (the paper's), ResNet-50 as in its ablations; ResNet-18/34/152
  are accepted as well (18 keeps tests fast). ``layer3`` is dilated by 2 and ``layer4`` by 4 instead of striding,
  so the features are at 1/8 of the input. The classifier (``fc``) and global pooling are removed.
* ASPP-L: four 3x3 convolutions with rates 6, 12, 18 and 24 on the ``layer4`` features, each producing class
  logits; the four logit maps are summed and bilinearly upsampled to the input size.

Only output stride 8 exists in the paper, so only 8 is offered. The Caffe models froze batch norm during
fine-tuning; that is a training choice left to the engine.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.models import resnet

from rs_deeplab.models.base import DeepLabBase
from rs_deeplab.models.heads import SummedASPP
from rs_deeplab.models.stride import dilate_resnet
from rs_deeplab.models.weights import StateDict, load_encoder_state, widen_first_conv

RESNETS = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
}
ASPP_RATES = (6, 12, 18, 24)


def torchvision_resnet_trunk(name: str, in_channels: int = 3) -> resnet.ResNet:
    """A randomly initialised torchvision ResNet without ``fc``/``avgpool`` parameters, taking ``in_channels``."""
    net = RESNETS[name](weights=None)
    net.fc = nn.Identity()
    net.conv1 = widen_first_conv(net.conv1, in_channels)
    return net


def resnet_last_features(net: resnet.ResNet, x: torch.Tensor) -> torch.Tensor:
    """Run the stem and the four stages of a torchvision ResNet and return the ``layer4`` features."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class DeepLabV2(DeepLabBase):
    """DeepLab v2: ``encoder`` (dilated torchvision ResNet) and ``aspp`` (:class:`SummedASPP`)."""

    allowed_output_strides = (8,)

    def __init__(self, *, num_classes: int, in_channels: int = 3, backbone: str = "resnet101") -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, backbone=backbone, output_stride=8)
        self.encoder = torchvision_resnet_trunk(backbone, in_channels)
        dilate_resnet(self.encoder, 8)
        self.aspp = SummedASPP(_layer4_channels(self.encoder), num_classes, ASPP_RATES)

    def head_modules(self) -> list[nn.Module]:
        """The ASPP classifiers are new; the ResNet is the backbone."""
        return [self.aspp]

    def _apply_output_stride(self, output_stride: int) -> None:
        dilate_resnet(self.encoder, output_stride)

    def forward_single(self, x: torch.Tensor, aux: bool = True) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` of one pass (no auxiliary head: ``aux`` is ignored)."""
        return self.resize(self.aspp(resnet_last_features(self.encoder, x)), x.shape[-2:])

    def load_imagenet(self, state: StateDict, path: str | os.PathLike[str]) -> None:
        """Load a torchvision ResNet ImageNet state_dict into the encoder (``fc.*`` is ignored)."""
        load_encoder_state(
            self.encoder,
            state,
            path=path,
            description=f"torchvision {self.backbone}",
            first_conv="conv1.weight",
            ignore_prefixes=("fc.",),
        )


def _layer4_channels(net: resnet.ResNet) -> int:
    block = net.layer4[-1]
    last_bn = block.bn3 if isinstance(block, resnet.Bottleneck) else block.bn2
    return int(last_bn.num_features)
