"""DeepLab v3 and v3+ on segmentation-models-pytorch ResNet encoders, with the paper's head or an mmseg-style one.

``head="paper"`` uses smp's own decoders, kept under smp's attribute names (``encoder``, ``decoder``,
``segmentation_head``) so state_dicts match ``smp.DeepLabV3``/``smp.DeepLabV3Plus`` key for key (but one layer):

* v3 (Chen et al. 2017): ASPP with a 1x1 branch, three 3x3 branches at rates 6/12/18 (12/24/36 at output
  stride 8) and image-level pooling, all with batch norm, concatenated and projected to 256 channels (smp adds a
  3x3 conv-BN-ReLU after the projection, as torchvision's DeepLabHead does, and dropout 0.5); multi-grid (1, 2, 4)
  in ``layer4``.
* v3+ (Chen et al. 2018): the same ASPP with depthwise-separable 3x3 branches (the paper's choice, smp's
  default; smp adds a separable 3x3 conv-BN-ReLU after it), then the decoder: stride-4 ``layer1`` features
  projected to 48 channels, concatenated with the upsampled ASPP output, two separable 3x3 conv-BN-ReLU (smp's
  ``decoder.block2`` has one; the second, as in the paper, is appended to it, so an smp checkpoint loads with
  ``strict=False`` and misses only ``decoder.block2.3`` and ``.4``). No multi-grid (the paper's v3+ setting).

``head="mmseg"`` keeps the smp encoder and uses :class:`~rs_deeplab.models.heads.MMSegASPPHead` (512 channels,
128 for ResNet-18/34 as mmseg's R-18 configs narrow it; rates 12/24/36 at output stride 8, its default) plus,
when ``aux_weight > 0``, an auxiliary :class:`~rs_deeplab.models.heads.FCNAuxHead` on ``layer3`` whose logits the
engine weights by ``aux_weight`` (0.4 in mmseg). The training-mode output is then a
:class:`~rs_deeplab.models.base.SegOutput`. mmseg's ResNetV1c deep stem is not reproduced: the backbone is the
plain torchvision-layout ResNet (mmseg's ``R-50b`` rows).

smp's forward needs inputs divisible by the output stride; this module's forward resizes by target size instead
of by scale factor, so any input size works and gives logits at the input size (and for divisible sizes the
paper head computes exactly what smp's forward computes with the same layers).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.decoders.deeplabv3.decoder import SeparableConv2d
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from rs_deeplab.models.base import DeepLabBase, SegOutput
from rs_deeplab.models.heads import FCNAuxHead, MMSegASPPHead
from rs_deeplab.models.stride import dilate_resnet, scaled_rates, set_conv_rate
from rs_deeplab.models.weights import StateDict, load_encoder_state

BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
)
RATES_AT_16 = (6, 12, 18)
MULTI_GRID = (1, 2, 4)
PAPER_CHANNELS = 256
MMSEG_CHANNELS = 512


def mmseg_widths(last_channels: int) -> tuple[int, int, int]:
    """``(ASPP channels, decoder skip channels, auxiliary channels)`` of mmseg's head for a backbone.

    mmseg's ResNet-18/34 configs (512-channel last stage) narrow the head to 128/12/64; deeper ResNets (2048)
    use 512/48/256.
    """
    return (128, 12, 64) if last_channels <= 512 else (MMSEG_CHANNELS, 48, 256)


HeadName = Literal["paper", "mmseg"]


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU()]


class DeepLabV3(DeepLabBase):
    """DeepLab v3 (``plus=False``) or v3+ (``plus=True``); see the module docstring for the two head variants."""

    allowed_output_strides = (8, 16)

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet101",
        output_stride: int = 16,
        head: HeadName = "paper",
        aux_weight: float = 0.4,
        plus: bool = False,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, backbone=backbone, output_stride=16)
        self.plus = plus
        self.head = head
        self.multi_grid = MULTI_GRID if head == "paper" and not plus else (1,)
        self.aux_head: nn.Module | None = None
        if head == "paper":
            self._build_paper_head(num_classes, in_channels, backbone)
        else:
            encoder = get_encoder(backbone, in_channels=in_channels, depth=5, weights=None)
            channels: list[int] = list(encoder.out_channels)
            self.encoder = encoder
            width, skip, aux = mmseg_widths(channels[-1])
            self.decode_head = MMSegASPPHead(
                channels[-1],
                width,
                scaled_rates(RATES_AT_16, 16),
                num_classes,
                low_level_channels=channels[2] if plus else None,
                skip_channels=skip,
            )
            if aux_weight > 0:
                self.aux_head = FCNAuxHead(channels[-2], num_classes, channels=aux)
                self.has_aux, self.aux_weight = True, float(aux_weight)
        self._apply_output_stride(output_stride)
        self.output_stride = output_stride

    def _build_paper_head(self, num_classes: int, in_channels: int, backbone: str) -> None:
        smp_class = smp.DeepLabV3Plus if self.plus else smp.DeepLabV3
        net = smp_class(
            encoder_name=backbone,
            encoder_weights=None,
            encoder_output_stride=16,
            decoder_atrous_rates=RATES_AT_16,
            in_channels=in_channels,
            classes=num_classes,
        )
        self.encoder = net.encoder
        self.decoder = net.decoder
        if self.plus:
            self.decoder.up = nn.Identity()  # upsampling by target size happens in forward
            # The paper refines the concatenation with two 3x3 convolutions; smp's block2 has one. Add the second.
            self.decoder.block2.extend(
                [SeparableConv2d(PAPER_CHANNELS, PAPER_CHANNELS, 3, padding=1, bias=False), *_bn_relu(PAPER_CHANNELS)]
            )
        self.segmentation_head = nn.Sequential(net.segmentation_head[0])  # the 1x1 classifier, smp's key names
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.segmentation_head)

    def head_modules(self) -> list[nn.Module]:
        """ASPP, decoder, classifier and auxiliary head; the smp encoder is the backbone."""
        if self.head == "paper":
            return [self.decoder, self.segmentation_head]
        return [self.decode_head] + ([self.aux_head] if self.aux_head is not None else [])

    def _apply_output_stride(self, output_stride: int) -> None:
        dilate_resnet(self.encoder, output_stride, self.multi_grid)
        smp_encoder: Any = self.encoder
        smp_encoder._output_stride = output_stride  # what smp's EncoderMixin.output_stride reports
        rates = scaled_rates(RATES_AT_16, output_stride)
        if self.head == "mmseg":
            self.decode_head.set_rates(rates)
            return
        aspp = self.decoder.aspp[0] if self.plus else self.decoder.aspp
        for branch, rate in zip(aspp.convs[1:4], rates, strict=True):
            set_conv_rate(branch, rate)

    @property
    def aspp_rates(self) -> tuple[int, ...]:
        """The current atrous rates of the three 3x3 ASPP branches."""
        if self.head == "mmseg":
            branches = list(self.decode_head.branches[2:])
        else:
            branches = list((self.decoder.aspp[0] if self.plus else self.decoder.aspp).convs[1:4])
        return tuple(int(next(m for m in b.modules() if isinstance(m, nn.Conv2d)).dilation[0]) for b in branches)

    def _paper_forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if not self.plus:
            return self.segmentation_head(self.decoder(features))
        decoder = self.decoder
        skip = decoder.block1(features[2])
        context = self.resize(decoder.aspp(features[-1]), skip.shape[-2:], align_corners=True)
        return self.segmentation_head(decoder.block2(torch.cat([context, skip], dim=1)))

    def forward_single(self, x: torch.Tensor, aux: bool = True) -> torch.Tensor | SegOutput:
        """Logits ``(B, num_classes, H, W)``; ``SegOutput(out, aux)`` in training mode with an auxiliary head.

        ``aux=False`` skips the auxiliary head (the MSC passes at scales other than 1).
        """
        features = self.encoder(x)
        size = x.shape[-2:]
        if self.head == "paper":
            return self.resize(self._paper_forward(features), size, align_corners=True)
        logits = self.decode_head(features[-1], features[2] if self.plus else None)
        out = self.resize(logits, size, align_corners=False)
        aux_out = None
        if aux and self.aux_head is not None and self.training:
            aux_out = self.resize(self.aux_head(features[-2]), size, align_corners=False)
        return self.wrap_output(out, aux_out)

    def load_imagenet(self, state: StateDict, path: str | os.PathLike[str]) -> None:
        """Load a torchvision-layout ResNet/ResNeXt ImageNet state_dict into the encoder (``fc.*`` is ignored)."""
        load_encoder_state(
            self.encoder,
            state,
            path=path,
            description=f"torchvision {self.backbone}",
            first_conv="conv1.weight",
            ignore_prefixes=("fc.",),
        )


class DeepLabV3Plus(DeepLabV3):
    """DeepLab v3+: :class:`DeepLabV3` with the stride-4 decoder (``plus=True``)."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet101",
        output_stride: int = 16,
        head: HeadName = "paper",
        aux_weight: float = 0.4,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            backbone=backbone,
            output_stride=output_stride,
            head=head,
            aux_weight=aux_weight,
            plus=True,
        )
