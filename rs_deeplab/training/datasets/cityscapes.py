"""Cityscapes fine annotations: ``leftImg8bit`` images and ``gtFine`` label ids mapped to the 19 train ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.training.datasets.base import SegmentationSource, require_dir

SCHEME = SCHEMES["cityscapes"]


class CityscapesSource(SegmentationSource):
    """Split ``train``/``val``/``test`` of a Cityscapes root holding ``leftImg8bit/`` and ``gtFine/``."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        base = Path(root)
        img_dir = require_dir(base / "leftImg8bit" / split, "cityscapes")
        lbl_dir = require_dir(base / "gtFine" / split, "cityscapes")
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise InputError(f"cityscapes: no *_leftImg8bit.png images under {img_dir}")
        labels = [lbl_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png") for p in images]
        missing = [p for p in labels if not p.is_file()]
        if missing:
            raise InputError(f"cityscapes: label {missing[0]} not found for {len(missing)} images")
        super().__init__(images, labels, SCHEME.classes)

    def read_label(self, index: int) -> np.ndarray:
        """Label ids → train ids (others 255)."""
        return SCHEME.decode(super().read_label(index))
