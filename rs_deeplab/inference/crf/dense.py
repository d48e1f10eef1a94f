"""DenseCRF refinement of class probabilities with the image (Krähenbühl & Koltun, as in DeepLab v1/v2).

One call refines one window: the unary term is ``-log p`` of the blended probabilities, the pairwise terms are
DeepLab's defaults, a Gaussian smoothness kernel (``sxy`` 3, compatibility 3) and a bilateral appearance kernel
(``sxy`` 80, ``srgb`` 13, compatibility 10), both Potts. The bilateral kernel needs an 8-bit colour image, so three
chosen bands are converted: uint8 bands are used as they are; any other type (uint16, float reflectance, ...)
is stretched linearly per band so that its 2nd..98th percentile (over valid pixels of the window, or a range the
caller gives, e.g. scene statistics for identical stretching in every window) spans 0..255. A percentile stretch
keeps ``srgb`` meaningful for 16-bit data whose values fill only part of the type's range, and is robust to a few
saturated or dark pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rs_deeplab.cli.errors import InputError, RsDeeplabError

PROB_FLOOR = 1e-6
"""Probabilities are clipped to at least this before ``-log``, so a zero costs ~14 rather than infinity."""

STRETCH_PERCENTILES = (2.0, 98.0)
"""Percentiles of each non-uint8 band mapped to 0 and 255."""

STRETCH_SAMPLES = 1 << 16
"""At most this many valid pixels (an even stride through them) estimate the percentiles of a band."""


class MissingDependencyError(RsDeeplabError, ImportError):
    """An optional package needed for the requested feature is not installed."""


KERNELS = ("gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat", "iterations")
"""The kernel and iteration fields of :class:`CRFSettings` (the search's table and record, ``dense_crf``'s keywords)."""


@dataclass(frozen=True)
class CRFSettings:
    """DenseCRF settings: the colour bands, the kernels and iterations (DeepLab's defaults), and how a scene is refined.

    Attributes:
        bands: 1-based image bands used as the colour image, as GDAL and ``--crf-bands`` count them (1 to 3; fewer
            than 3 repeat the last one). :func:`colour_image` is the one place that turns them into array indices.
        gaussian_sxy: Spatial standard deviation of the smoothness kernel, pixels.
        gaussian_compat: Weight of the smoothness kernel.
        bilateral_sxy: Spatial standard deviation of the appearance kernel, pixels.
        bilateral_srgb: Colour standard deviation of the appearance kernel, in 0..255 units.
        bilateral_compat: Weight of the appearance kernel.
        iterations: Mean-field iterations.
        band_ranges: Value range of each of ``bands`` stretched to 0..255 for non-8-bit scenes (the same in every
            window of a scene); None: each window's percentiles.
        margin: Context columns on each side of a block of a scene refined block by block.
        processes: Processes refining a scene's blocks (:mod:`rs_deeplab.inference.crf.pool`); 1: a thread; None:
            the cores usable where it runs (or ``RS_DEEPLAB_CRF_PROCESSES``). The labels do not depend on it (not in
            the run's fingerprint).
    """

    bands: tuple[int, ...] = (1, 2, 3)
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    iterations: int = 5
    band_ranges: tuple[tuple[float, float], ...] | None = None
    margin: int = 64
    processes: int | None = field(default=1, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not getattr(self, name) > 0:
                raise InputError(f"CRF {name} must be > 0, got {getattr(self, name)}")
        for name in ("gaussian_compat", "bilateral_compat"):
            if not getattr(self, name) >= 0:
                raise InputError(f"CRF {name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise InputError(f"CRF iterations must be an integer >= 0, got {self.iterations!r}")
        if not 1 <= len(self.bands) <= 3:
            raise InputError(f"CRF bands must list 1 to 3 band indices, got {list(self.bands)}")

    def __repr__(self) -> str:
        """The form inference's resume fingerprint (``repr`` of its job) has always recorded, unchanged."""
        kernels = ", ".join(f"{k}={getattr(self, k)!r}" for k in KERNELS)
        return (
            f"CRFSettings(bands={self.bands!r}, params=CRFParams(bands=None, {kernels}), "
            f"band_ranges={self.band_ranges!r}, margin={self.margin!r})"
        )

    def kernels(self) -> dict[str, Any]:
        """The kernels and iterations by name (:data:`KERNELS`)."""
        return {k: getattr(self, k) for k in KERNELS}

    def refine(
        self,
        probs: np.ndarray,
        image: np.ndarray,
        *,
        valid: np.ndarray | None = None,
        band_ranges: Sequence[tuple[float, float]] | None = None,
    ) -> np.ndarray:
        """:func:`dense_crf` with these settings (``bands`` numbering the bands of ``image``)."""
        return dense_crf(probs, image, bands=self.bands, valid=valid, band_ranges=band_ranges, **self.kernels())


def resolve_bands(bands: Sequence[int] | None, count: int) -> tuple[int, int, int]:
    """The 0-based array indices of the three image bands used as colour channels, from 1-based ``bands``.

    None takes the first three bands, or all of an image with fewer.

    Raises:
        InputError: A band is outside ``1..count`` or the list is empty or too long.
    """
    chosen = list(range(1, min(count, 3) + 1)) if bands is None else [int(b) for b in bands]
    if not 1 <= len(chosen) <= 3:
        raise InputError(f"CRF bands must list 1 to 3 band indices, got {chosen}")
    bad = [b for b in chosen if not 1 <= b <= count]
    if bad:
        raise InputError(
            f"CRF band {bad[0]} is out of range for an image with {count} band(s); use bands 1..{count}, counted from 1"
        )
    chosen += [chosen[-1]] * (3 - len(chosen))
    return chosen[0] - 1, chosen[1] - 1, chosen[2] - 1


def _stretch(band: np.ndarray, valid: np.ndarray | None, value_range: tuple[float, float] | None) -> np.ndarray:
    """Map one band linearly to uint8 so that ``value_range`` (default: its 2-98 % percentiles) spans 0..255."""
    data = band.astype(np.float32, copy=False)
    if value_range is None:
        sample = data[valid] if valid is not None else data.reshape(-1)
        sample = sample[np.isfinite(sample)]
        sample = sample[:: max(1, sample.size // STRETCH_SAMPLES)]
        if sample.size == 0:
            return np.zeros(band.shape, dtype=np.uint8)
        low, high = (float(v) for v in np.percentile(sample, STRETCH_PERCENTILES))
    else:
        low, high = (float(v) for v in value_range)
    scale = 255.0 / (high - low) if high > low else 0.0
    out = (data - low) * scale
    np.clip(out, 0, 255, out=out)
    return np.nan_to_num(out, nan=0.0).astype(np.uint8)


def colour_image(
    image: np.ndarray,
    bands: Sequence[int] | None = None,
    *,
    valid: np.ndarray | None = None,
    band_ranges: Sequence[tuple[float, float]] | None = None,
) -> np.ndarray:
    """The ``(H, W, 3)`` C-contiguous uint8 colour image the bilateral kernel compares.

    Args:
        image: ``(bands, H, W)`` or ``(H, W)`` pixels of any numeric type.
        bands: 1-based bands of ``image`` (see :attr:`CRFSettings.bands`); None: the first three, or all of fewer.
        valid: Optional ``(H, W)`` mask of pixels the percentiles are taken over.
        band_ranges: Optional ``(low, high)`` per image band, used instead of the window's percentiles.
    """
    data = image[np.newaxis] if image.ndim == 2 else image
    chosen = resolve_bands(bands, data.shape[0])
    if band_ranges is not None and len(band_ranges) != data.shape[0]:
        raise InputError(f"band_ranges has {len(band_ranges)} entries for an image with {data.shape[0]} bands")
    out = np.empty((*data.shape[1:], 3), dtype=np.uint8)
    done: dict[int, np.ndarray] = {}
    for channel, b in enumerate(chosen):
        if b not in done:
            if data.dtype == np.uint8:
                done[b] = data[b]
            else:
                done[b] = _stretch(data[b], valid, None if band_ranges is None else band_ranges[b])
        out[..., channel] = done[b]
    return out


def _check_shapes(probs: np.ndarray, image: np.ndarray, valid: np.ndarray | None) -> None:
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise InputError(f"CRF probabilities must be (classes, H, W), got shape {probs.shape}")
    if image.ndim not in (2, 3) or image.shape[-2:] != probs.shape[1:]:
        raise InputError(f"CRF image of shape {image.shape} does not match probabilities {probs.shape} (need H, W)")
    if valid is not None and valid.shape != probs.shape[1:]:
        raise InputError(f"CRF valid mask of shape {valid.shape} does not match probabilities {probs.shape}")


def _densecrf_module() -> Any:
    """Import pydensecrf's ``densecrf`` lazily (an optional dependency)."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as exc:
        raise MissingDependencyError(
            f"DenseCRF refinement needs pydensecrf ({exc}); install it with: pip install pydensecrf2"
        ) from None
    return densecrf


def dense_crf(
    probs: np.ndarray,
    image: np.ndarray,
    *,
    bands: Sequence[int] | None = None,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
    iterations: int = 5,
    valid: np.ndarray | None = None,
    band_ranges: Sequence[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Refine class probabilities of one window with a fully connected CRF.

    Args:
        probs: ``(C, H, W)`` probabilities summing to 1 over ``C``.
        image: ``(bands, H, W)`` (or ``(H, W)``) pixels of the same window, any numeric type.
        bands: 1-based bands of ``image`` used as colour (see :attr:`CRFSettings.bands`); None: the first three,
            or all of an image with fewer.
        gaussian_sxy: Smoothness kernel spatial standard deviation (pixels).
        gaussian_compat: Smoothness kernel weight.
        bilateral_sxy: Appearance kernel spatial standard deviation (pixels).
        bilateral_srgb: Appearance kernel colour standard deviation (0..255 units).
        bilateral_compat: Appearance kernel weight.
        iterations: Mean-field iterations.
        valid: Optional ``(H, W)`` bool mask; invalid pixels (nodata) get a uniform unary, so they pull no class,
            and keep their input probabilities in the output.
        band_ranges: Optional ``(low, high)`` per image band for the 8-bit stretch of non-uint8 images.

    Returns:
        ``(C, H, W)`` float32 refined probabilities.

    Raises:
        InputError: Shapes disagree, a band index is out of range or a setting is invalid.
        MissingDependencyError: pydensecrf is not installed.
    """
    params = CRFSettings(
        bands=(1, 2, 3) if bands is None else tuple(bands),
        gaussian_sxy=gaussian_sxy,
        gaussian_compat=gaussian_compat,
        bilateral_sxy=bilateral_sxy,
        bilateral_srgb=bilateral_srgb,
        bilateral_compat=bilateral_compat,
        iterations=iterations,
    )
    _check_shapes(probs, image, valid)
    num_classes, height, width = probs.shape
    rgb = colour_image(image, bands, valid=valid, band_ranges=band_ranges)
    if valid is not None and not valid.any():
        return probs.astype(np.float32, copy=True)
    densecrf = _densecrf_module()
    unary = np.clip(probs, PROB_FLOOR, 1.0).astype(np.float32, copy=False).reshape(num_classes, -1)
    unary = -np.log(unary)
    if valid is not None:
        unary[:, ~valid.reshape(-1)] = np.float32(np.log(num_classes))
    crf = densecrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=rgb, compat=params.bilateral_compat
    )
    refined = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(num_classes, height, width)
    if valid is not None:
        refined[:, ~valid] = probs[:, ~valid]
    return refined
