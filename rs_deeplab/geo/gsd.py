"""Ground sampling distance (metres per pixel) of rasters, of training data, and the GSD inference works at.

A model learns objects at the pixel size of its training crops; a scene at another GSD shows them at another size
in pixels. Training records the median GSD of its scenes (:func:`training_gsd`, ``state["gsd"]`` in the
checkpoint); inference reads a scene resampled to it (:func:`working_gsd`). No torch here.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("rs_deeplab.geo.gsd")

GSD_SPREAD = 1.25
"""Ratio between two GSDs above which they count as different scales (warnings)."""
GSD_TOLERANCE = 0.01
"""Relative difference up to which ``--gsd auto`` keeps the scene's own scale (no resampling)."""
EARTH_RADIUS = 6_371_008.8
"""Mean Earth radius in metres (IUGG): degrees of a geographic CRS become metres on this sphere."""
GSD_CHOICES = ("auto", "native")
AUTO_PIXEL_LIMIT = 4.0
"""``--gsd auto`` reads a scene at the model's GSD only while that changes its pixel count by at most this factor
either way (a 2× finer or coarser GSD); beyond it the run stops and asks for ``--gsd native`` or a number, instead
of silently multiplying (or discarding) the work: a 0.6 m scene at a 0.05 m model's scale is 144× the pixels."""


def raster_gsd(transform: Any, crs: Any, shape: tuple[int, int] | None = None) -> float | None:
    """Metres per pixel of a raster: the square root of a pixel's area (rotation and non-square pixels included).

    Projected CRSs are converted from their linear unit (feet, US survey feet, ...) to metres. Geographic CRSs
    (degrees) are converted on a sphere at the latitude of the raster's centre (``shape`` = ``(height, width)``;
    the transform's origin without it): east-west degrees shrink with the cosine of the latitude.

    Args:
        transform: The raster's affine transform (``rasterio`` ``Affine``).
        crs: Its CRS (``rasterio.crs.CRS``) or None.
        shape: ``(height, width)`` of the raster, to find its centre latitude in a geographic CRS.

    Returns:
        The GSD, or None without a CRS (pixel-only data such as PNG/JPEG), for an identity or degenerate transform,
        or a CRS whose unit is unknown.
    """
    if crs is None or transform is None:
        return None
    a, b, d, e = float(transform.a), float(transform.b), float(transform.d), float(transform.e)
    area = abs(a * e - b * d)
    if not math.isfinite(area) or area <= 0:
        return None
    if getattr(crs, "is_geographic", False):
        rows, cols = shape if shape is not None else (0, 0)
        _, lat = transform @ (cols / 2, rows / 2)
        if not -90.0 <= lat <= 90.0:
            return None
        metres_per_degree = math.pi * EARTH_RADIUS / 180.0
        return math.sqrt(area * math.cos(math.radians(lat))) * metres_per_degree
    try:
        factor = float(crs.linear_units_factor[1])
    except Exception:  # rasterio raises CRSError for CRSs without a linear unit
        return None
    return math.sqrt(area) * factor if factor > 0 else None


def training_gsd(gsds: Iterable[float | None]) -> float | None:
    """The GSD a model learns at: the median of its training scenes' GSDs (None when none has one).

    Logs a warning when the scenes' GSDs differ by more than :data:`GSD_SPREAD` from each other (the model then
    learns several scales and inference resamples every scene to the median), or when only some scenes have one.
    """
    items = list(gsds)
    values = [float(g) for g in items if g is not None and math.isfinite(g) and g > 0]
    missing = len(items) - len(values)
    if not values:
        return None
    median = float(statistics.median(values))
    if max(values) > GSD_SPREAD * min(values):
        log.warning(
            "training scenes have different ground sampling distances (%.3g to %.3g m/pixel); the model "
            "is recorded at their median, %.3g m/pixel",
            min(values),
            max(values),
            median,
        )
    if missing:
        log.warning(
            "%d training scene(s) have no ground sampling distance; the model is recorded at %.3g m/pixel",
            missing,
            median,
        )
    return median


def rasters_gsd(paths: Iterable[str | os.PathLike[str]]) -> float | None:
    """:func:`training_gsd` of rasters read from their headers (e.g. one training crop per scene).

    Crops carry their scene's pixel size and CRS, so one crop per scene gives the scenes' GSDs; PNG/JPEG samples
    (Pascal VOC, Cityscapes) have no CRS and give None.
    """
    from rs_deeplab.geo.raster import open_raster

    gsds = []
    for path in paths:
        with open_raster(path) as src:
            gsds.append(raster_gsd(src.transform, src.crs, (src.height, src.width)))
    return training_gsd(gsds)


def parse_gsd(text: str) -> str | float:
    """``--gsd``: ``auto``, ``native`` or a positive number of metres per pixel.

    Raises:
        ValueError: Anything else (the message says what is allowed).
    """
    choice = text.strip().lower()
    if choice in GSD_CHOICES:
        return choice
    try:
        value = float(choice)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--gsd {text!r}: expected auto, native or a positive number of metres per pixel (e.g. 0.5)")
    return value


def working_gsd(
    choice: str | float, model_gsd: float | None, scene_gsd: float | None, scene: str = "scene"
) -> float | None:
    """The GSD to read a scene at, or None to predict it at its own scale; pure apart from warnings.

    Args:
        choice: ``auto`` (the model's GSD when the scene is more than :data:`GSD_TOLERANCE` off it), ``native``
            (the scene's own scale; warns when it is more than :data:`GSD_SPREAD` off the model's), or a number.
        model_gsd: The checkpoint's GSD (None: trained on pixel-only data, or an old checkpoint).
        scene_gsd: The scene's GSD (:func:`raster_gsd`).
        scene: Name for messages.

    Raises:
        ValueError: A number is asked for but the scene has no GSD (no CRS).
    """
    if isinstance(choice, (int, float)):
        if scene_gsd is None:
            raise ValueError(
                f"{scene}: has no georeferencing in metres, so --gsd {choice:g} cannot resample it; use --gsd native"
            )
        return None if _close(scene_gsd, float(choice)) else float(choice)
    if choice not in GSD_CHOICES:
        raise ValueError(f"--gsd {choice!r}: expected auto, native or a positive number")
    if model_gsd is None:
        return None
    if scene_gsd is None:
        log.warning(
            "%s: no ground sampling distance (no CRS); predicted at its own scale, although the model was "
            "trained at %.3g m/pixel",
            scene,
            model_gsd,
        )
        return None
    off = max(scene_gsd, model_gsd) / min(scene_gsd, model_gsd)
    if choice == "native":
        if off > GSD_SPREAD:
            log.warning(
                "%s: %.3g m/pixel, the model was trained at %.3g m/pixel (%.2g× off); predicted at the "
                "scene's scale as --gsd native asks",
                scene,
                scene_gsd,
                model_gsd,
                off,
            )
        return None
    if _close(scene_gsd, model_gsd):
        return None
    pixels = (scene_gsd / model_gsd) ** 2  # the working grid's pixels per scene pixel
    limit = AUTO_PIXEL_LIMIT * (1 + GSD_TOLERANCE)  # a GSD measured a hair off an exact 2× is still 2×
    if not 1 / limit <= pixels <= limit:
        more = f"{pixels:.3g}× the pixels" if pixels > 1 else f"1/{1 / pixels:.3g} of the pixels"
        raise ValueError(
            f"{scene}: {scene_gsd:.3g} m/pixel, the model was trained at {model_gsd:.3g} m/pixel: "
            f"--gsd auto would predict it at {more} (beyond {AUTO_PIXEL_LIMIT:g}× either way); use "
            f"--gsd native for its own pixels, or --gsd <metres> (e.g. --gsd {model_gsd:.3g}) to accept "
            "the cost"
        )
    return model_gsd


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= GSD_TOLERANCE * max(a, b)
