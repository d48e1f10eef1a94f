"""Dataset readers: the tiler's index (remote-sensing datasets), Pascal VOC 2012 + SBD, and Cityscapes.

Every reader is a :class:`SegmentationSource`: a list of samples, each read as a ``(bands, H, W)`` image of
raw pixel values and an ``(H, W)`` uint8 class-index mask with 255 for ignore.
"""

from __future__ import annotations

from rs_deeplab.training.datasets.base import SegmentationSource, check_labels
from rs_deeplab.training.datasets.cityscapes import CityscapesSource
from rs_deeplab.training.datasets.voc import VOCSource

__all__ = ["CityscapesSource", "SegmentationSource", "VOCSource", "check_labels"]
