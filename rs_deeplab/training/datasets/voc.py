"""Pascal VOC 2012 with the SBD augmented set (``SegmentationClassAug`` + ``train_aug``)."""

from __future__ import annotations

import os
from pathlib import Path

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.classes import VOC_CLASSES
from rs_deeplab.training.datasets.base import SegmentationSource, require_dir


def find_voc_root(root: str | os.PathLike[str]) -> Path:
    """Accept ``VOCdevkit/VOC2012``, ``VOCdevkit`` or the folder that holds ``VOCdevkit``."""
    base = Path(root)
    for candidate in (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise InputError(f"voc: expected folder {base / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'} does not exist")


class VOCSource(SegmentationSource):
    """VOC split ``train``/``val``/``trainval`` (palette PNGs) or ``train_aug`` (SBD grey index PNGs)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train_aug") -> None:
        voc = find_voc_root(root)
        sets = require_dir(voc / "ImageSets" / "Segmentation", "voc")
        list_file = sets / f"{split}.txt"
        if not list_file.is_file():
            known = ", ".join(sorted(p.stem for p in sets.glob("*.txt")))
            raise InputError(f"voc: split file {list_file} not found; splits present: {known or 'none'}")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        label_dir = require_dir(
            voc / ("SegmentationClassAug" if split.endswith("_aug") else "SegmentationClass"), "voc"
        )
        super().__init__(
            [voc / "JPEGImages" / f"{i}.jpg" for i in ids], [label_dir / f"{i}.png" for i in ids], VOC_CLASSES
        )
