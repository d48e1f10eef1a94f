"""Training and evaluation transforms for n-band imagery: albumentations geometry, dtype-free photometry.

Every random choice comes from a per-sample seed, so a batch is the same whatever the number of DataLoader
workers or processes, and a resumed run sees exactly the samples the interrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import rasterio
import torch

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import open_raster
from rs_deeplab.labels.classes import IGNORE_INDEX
from rs_deeplab.training.datasets.base import read_failure

NO_UPDATE_CHECK = "NO_ALBUMENTATIONS_UPDATE"
"""albumentations asks PyPI for a newer version when it is imported unless this variable is ``1``."""


@contextlib.contextmanager
def _no_update_check() -> Iterator[None]:
    """Set :data:`NO_UPDATE_CHECK` for the import only (a value the caller set stays), then restore the environment."""
    previous = os.environ.get(NO_UPDATE_CHECK)
    if previous is None:
        os.environ[NO_UPDATE_CHECK] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(NO_UPDATE_CHECK, None)


with _no_update_check():
    import albumentations as A

FlipMode = Literal["aerial", "horizontal", "none"]
PhotometricMode = Literal["bands", "rgb", "none"]


@dataclass(frozen=True)
class ChannelStats:
    """Per-band mean and standard deviation of the training imagery, in raw pixel units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict[str, list[float]]:
        """Plain form stored in checkpoints."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> ChannelStats:
        """Inverse of :meth:`as_dict`."""
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))


def compute_band_stats(
    paths: Sequence[str | os.PathLike[str]], *, bands: Sequence[int] | None = None, max_side: int = 128
) -> ChannelStats:
    """Mean and std of each band over ``paths``, read decimated to at most ``max_side`` pixels a side.

    Nodata pixels (by the file's nodata value or mask) are left out. 1-based ``bands`` select bands.
    """
    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None
    count: np.ndarray | None = None
    for path in paths:
        with open_raster(path) as src:
            idx = list(bands) if bands else list(range(1, src.count + 1))
            scale = max(src.width, src.height) / max_side
            shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
            try:
                data = src.read(
                    idx, out_shape=(len(idx), *shape), masked=True, resampling=rasterio.enums.Resampling.nearest
                )
            except rasterio.errors.RasterioError as exc:
                raise read_failure(path, exc) from None
        values = np.ma.filled(data.astype(np.float64), np.nan).reshape(len(idx), -1)
        valid = ~np.isnan(values)
        s, sq, n = np.nansum(values, 1), np.nansum(values**2, 1), valid.sum(1)
        total, total_sq, count = (s, sq, n) if total is None else (total + s, total_sq + sq, count + n)
    if total is None or total_sq is None or count is None or (count == 0).any():
        raise InputError(
            f"no valid pixels to compute band statistics from ({len(paths)} images, all nodata); "
            "check the crops' nodata value or tile again"
        )
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return ChannelStats(tuple(mean.tolist()), tuple(np.maximum(std, 1e-6).tolist()))


def normalise(image: np.ndarray, stats: ChannelStats | None) -> np.ndarray:
    """``(H, W, C)`` raw values → float32 ``(x - mean) / std`` (raw float32 when ``stats`` is None)."""
    out = image.astype(np.float32)
    if stats is not None:
        if len(stats.mean) != out.shape[-1]:
            raise ValueError(f"band statistics are for {len(stats.mean)} bands, the image has {out.shape[-1]}")
        out -= np.asarray(stats.mean, dtype=np.float32)
        out /= np.asarray(stats.std, dtype=np.float32)
    return out


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and per-band gain jitter on a normalised ``(H, W, C)`` image, any band count.

    Working in standard-deviation units makes it independent of dtype (8- or 16-bit) and band order; the
    per-band gain plays the role RGB saturation/hue jitter has for three bands.
    """
    out: np.ndarray = image.astype(np.float32, copy=True)
    if rng.random() < 0.5:
        out += np.float32(rng.uniform(-0.25, 0.25))
    if rng.random() < 0.5:
        out *= np.float32(rng.uniform(0.75, 1.25))
    if rng.random() < 0.5:
        out *= np.asarray(rng.uniform(0.9, 1.1, size=out.shape[-1]), dtype=np.float32)
    return out


def photometric_rgb(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ``PhotoMetricDistortion`` of mmsegmentation on a raw 8-bit ``(H, W, 3)`` RGB image, in float32.

    Each step with probability 1/2: brightness ``+U(-32, 32)``; contrast ``×U(0.5, 1.5)`` (before or after the
    colour steps, chosen at random); saturation ``×U(0.5, 1.5)``; hue shifted by an integer in ``[-18, 18]`` of
    OpenCV's 180-step hue circle. Values are clipped to ``[0, 255]`` after every step, as mmseg's are.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"photometric 'rgb' needs 3-band images, got shape {image.shape}")
    out: np.ndarray = image.astype(np.float32, copy=True)

    def contrast() -> None:
        if rng.integers(2):
            np.clip(out * np.float32(rng.uniform(0.5, 1.5)), 0, 255, out=out)

    if rng.integers(2):
        np.clip(out + np.float32(rng.uniform(-32, 32)), 0, 255, out=out)
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        contrast()
    saturate, shift = rng.integers(2), rng.integers(2)
    factor, hue = np.float32(rng.uniform(0.5, 1.5)), int(rng.integers(-18, 19))
    if saturate or shift:
        hsv = cv2.cvtColor(out / np.float32(255), cv2.COLOR_RGB2HSV)  # H in degrees, S and V in [0, 1]
        if saturate:
            hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 1)
        if shift:
            hsv[..., 0] = (hsv[..., 0] + 2 * hue) % 360
        out = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * np.float32(255), 0, 255)
    if not contrast_first:
        contrast()
    return out


def pad_to(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``(H, W, C)`` image with 0 (the mean, once normalised) and mask with 255 to at least ``size``."""
    h, w = mask.shape
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, mask
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image, mask


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    max_class_ratio: float,
    tries: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``size`` (h, w); retry up to ``tries`` times while one class covers more than ``max_class_ratio``."""
    h, w = mask.shape
    ch, cw = size
    for _ in range(tries):
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = mask[top : top + ch, left : left + cw]
        counts = np.bincount(crop[crop != IGNORE_INDEX].ravel(), minlength=1)
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < max_class_ratio:
            break
    return image[top : top + ch, left : left + cw], crop


class TrainTransform:
    """Scale → class-balanced crop (padded when small) → normalise → photometric → flips/rotations, from one seed."""

    def __init__(
        self,
        *,
        crop_size: int | tuple[int, int],
        stats: ChannelStats | None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flips: FlipMode = "aerial",
        max_class_ratio: float = 0.75,
        photometric: PhotometricMode = "bands",
    ) -> None:
        self.crop_size: tuple[int, int] = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        self.stats = stats
        self.max_class_ratio = max_class_ratio
        self.photometric = photometric
        low, high = scale_range
        self.scale_range = (float(low), float(high))
        self.scale = A.Compose(
            [A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0)]
        )
        geometry: list[A.BasicTransform] = []
        if flips in ("aerial", "horizontal"):
            geometry.append(A.HorizontalFlip(p=0.5))
        if flips == "aerial":
            geometry += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
        self.geometry = A.Compose(geometry)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` ``(C, H, W)`` raw values, ``mask`` ``(H, W)`` uint8 → float tensor, uint8 mask tensor."""
        rng = np.random.default_rng(seed)
        self.scale.set_random_seed(int(rng.integers(2**31)))
        self.geometry.set_random_seed(int(rng.integers(2**31)))
        photo_rng = np.random.default_rng(int(rng.integers(2**31)))
        hwc = np.ascontiguousarray(np.moveaxis(image, 0, -1)).astype(np.float32)
        out = self.scale(image=hwc, mask=mask)
        img, msk = out["image"], out["mask"]
        if msk.shape[0] >= self.crop_size[0] and msk.shape[1] >= self.crop_size[1]:
            # per-pixel photometry commutes with cropping: normalise only the crop (a 512 tile costs 16x a 128 crop)
            img, msk = random_crop(img, msk, self.crop_size, rng, self.max_class_ratio)
            img = self._colour(img, photo_rng)
        else:  # pad after normalising, so that the padding is the mean (0)
            img, msk = pad_to(self._colour(img, photo_rng), msk, self.crop_size)
            img, msk = random_crop(img, msk, self.crop_size, rng, self.max_class_ratio)
        out = self.geometry(image=np.ascontiguousarray(img), mask=np.ascontiguousarray(msk))
        return to_tensors(out["image"], out["mask"])

    def _colour(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Raw ``(H, W, C)`` values → normalised, colour-jittered as ``photometric`` says."""
        if self.photometric == "rgb":
            return normalise(photometric_rgb(img, rng), self.stats)
        out = normalise(img, self.stats)
        return photometric(out, rng) if self.photometric == "bands" else out


class EvalTransform:
    """Normalisation only: evaluation sees whole tiles/images at their own size."""

    def __init__(self, stats: ChannelStats | None) -> None:
        self.stats = stats

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Same signature as :class:`TrainTransform`; the seed is unused."""
        return to_tensors(normalise(np.moveaxis(image, 0, -1), self.stats), mask)


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W, C)`` float32 and ``(H, W)`` uint8 → ``(C, H, W)`` float tensor and ``(H, W)`` uint8 tensor.

    Masks stay uint8 (class ids < 255, 255 = ignore) through collation, pinning and the copy to the device; the
    training step widens them to int64 there.
    """
    img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32))
    out = np.ascontiguousarray(mask, dtype=np.uint8)
    if not out.flags.writeable:  # a decoded PNG's buffer, passed through untouched (no scale, crop or flip)
        out = out.copy()
    return img, torch.from_numpy(out)
