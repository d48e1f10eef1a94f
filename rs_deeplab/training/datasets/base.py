"""The protocol shared by every dataset reader, and label sanity checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.raster import open_raster
from rs_deeplab.labels.classes import IGNORE_INDEX


class SegmentationSource:
    """A list of (image, label) files read as raw arrays; subclasses fill ``images`` and ``labels``."""

    def __init__(self, images: Sequence[Path], labels: Sequence[Path], class_names: Sequence[str]) -> None:
        if len(images) != len(labels):
            raise InputError(f"{len(images)} images but {len(labels)} labels")
        self.images = list(images)
        self.labels = list(labels)
        self.class_names = tuple(class_names)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Number of classes the labels use."""
        return len(self.class_names)

    def read_image(self, index: int) -> np.ndarray:
        """``(bands, H, W)`` raw pixel values of sample ``index``."""
        return read_pixels(self.images[index])

    def read_label(self, index: int) -> np.ndarray:
        """``(H, W)`` uint8 class indices of sample ``index`` (255 = ignore)."""
        with Image.open(self.labels[index]) as img:
            return np.asarray(img, dtype=np.uint8)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and label of sample ``index``; their sizes must agree."""
        image, label = self.read_image(index), self.read_label(index)
        if image.shape[1:] != label.shape:
            raise InputError(
                f"{self.images[index]}: image is {image.shape[2]}x{image.shape[1]} but its label "
                f"{self.labels[index]} is {label.shape[1]}x{label.shape[0]}; re-create the pair"
            )
        return image, label

    def in_channels(self) -> int:
        """Band count of the first image."""
        with open_raster(self.images[0]) as src:
            return int(src.count)

    def band_names(self) -> list[str] | None:
        """Names of the bands the model sees (the first image's band descriptions), None when any is unnamed."""
        with open_raster(self.images[0]) as src:
            names = list(src.descriptions)
        bands: list[int] | None = getattr(self, "bands", None)  # TileIndexSource selects bands
        picked = [names[b - 1] for b in bands] if bands else names
        return picked if picked and all(picked) else None

    def scene_images(self, limit: int = 64) -> list[Path]:
        """One image per scene, for the training GSD (:func:`rs_deeplab.geo.gsd.rasters_gsd`).

        A plain source does not know its scenes: it gives up to ``limit`` images spread over the list (each
        benchmark image is a scene or a crop of one).
        """
        step = max(1, len(self.images) // limit)
        return self.images[::step][:limit]


def read_pixels(path: Path, bands: Sequence[int] | None = None) -> np.ndarray:
    """``(bands, H, W)`` pixels of a raster (1-based ``bands``; all when None), a failed read in one line.

    Raises:
        RasterError: The file cannot be opened or its pixels cannot be decoded (truncated, corrupt).
    """
    import rasterio.errors

    with open_raster(path) as src:
        if bands and max(bands) > src.count:
            raise InputError(f"{path}: has {src.count} bands but data.bands asks for band {max(bands)}")
        try:
            return src.read(list(bands)) if bands else src.read()
        except rasterio.errors.RasterioError as exc:
            raise read_failure(path, exc) from None


def read_failure(path: object, exc: BaseException) -> RasterError:
    """One line for a failed pixel read of ``path``: GDAL's own reason (rasterio chains it) and what to do."""
    cause = exc.__cause__ or exc.__context__ or exc
    problem = " ".join(str(cause).split()) or type(exc).__name__
    return RasterError(f"{path}: cannot read its pixels ({problem}); the file may be truncated: re-create it")


def check_labels(label: np.ndarray, num_classes: int, where: str) -> None:
    """Fail with one line if ``label`` holds a value that is neither a class index nor 255."""
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
    if bad.size:
        raise InputError(
            f"{where}: label value {int(bad[0])} is outside the {num_classes} classes and not 255 (ignore); "
            "check the dataset scheme or the model's class count"
        )


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else fail naming the path that was expected."""
    if not path.is_dir():
        raise InputError(f"{what}: expected folder {path} does not exist; check data.root")
    return path
