"""ISPRS Potsdam and Vaihingen sample tiles in the real datasets' folder layouts and GeoTIFF encodings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.sample.output import PathLike, Size, check_size, folder, sub_seed
from rs_deeplab.sample.scene import Scene, boundary_mask, generate_scene

POTSDAM_ORIGIN = (366_000.0, 5_812_000.0)
"""Map coordinates (EPSG:32633) of the corner of tile 0_0; tile ``i_j`` lies ``i`` tiles east, ``j`` south."""
VAIHINGEN_ORIGIN = (496_000.0, 5_422_000.0)
"""Map coordinates (EPSG:32632) of the first area; area ``N`` lies ``N`` areas east."""
VAIHINGEN_SIZE = (2560, 1920)
"""Default (H, W) of a Vaihingen area (the real ones are about 2500 x 1900)."""


@dataclass(frozen=True)
class PotsdamFiles:
    """The four files of one Potsdam tile."""

    tile: str
    rgbir: Path
    rgb: Path
    label: Path
    label_noboundary: Path


@dataclass(frozen=True)
class VaihingenFiles:
    """The three files of one Vaihingen area."""

    area: int
    image: Path
    label: Path
    label_noboundary: Path


def _labels(scene: Scene, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Colour-coded label ``(3, H, W)`` and its eroded copy with black within 3 px of class boundaries."""
    label = SCHEMES[scheme].encode_colours(scene.classes)
    eroded = label.copy()
    eroded[:, boundary_mask(scene.classes, 3)] = 0
    return label, eroded


def _tile_ids(ids: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """Validate Potsdam tile ids ``(i, j)`` (non-negative integers, no duplicates)."""
    out: list[tuple[int, int]] = []
    for tile in ids:
        pair = tuple(tile)
        if len(pair) != 2 or not all(isinstance(k, (int, np.integer)) and k >= 0 for k in pair):
            raise InputError(f"Potsdam tile ids are pairs of non-negative integers like (2, 13), got {tile!r}")
        if pair in out:
            raise InputError(f"Potsdam tile {pair[0]}_{pair[1]} is listed twice")
        out.append((int(pair[0]), int(pair[1])))
    if not out:
        raise InputError("no Potsdam tile ids given; pass at least one, e.g. ids=((2, 13),)")
    return out


def write_potsdam(
    root: PathLike, ids: Iterable[Sequence[int]] = ((2, 13),), *, size: Size = 6000, seed: int = 0, gsd: float = 0.05
) -> list[PotsdamFiles]:
    """Write Potsdam tiles ``top_potsdam_{i}_{j}_*`` under ``root`` in the dataset's folder layout.

    ``4_Ortho_RGBIR/`` (R, G, B, NIR), ``2_Ortho_RGB/``, ``5_Labels_all/`` (ISPRS colours) and
    ``5_Labels_all_noBoundary/`` (black within 3 px of class boundaries); uint8 GeoTIFFs in EPSG:32633.
    Each tile has its own seed derived from ``(seed, i, j)`` and sits at its place in the tile grid.

    Args:
        root: Dataset root (created if missing).
        ids: Tile ids ``(i, j)``.
        size: Tile size ``N`` or ``(H, W)`` in pixels (the real tiles are 6000).
        seed: Base seed.
        gsd: Pixel size in metres (the real tiles have 5 cm).
    """
    tiles = _tile_ids(ids)
    h, w = check_size(size)
    sub = {
        name: folder(root, name) for name in ("2_Ortho_RGB", "4_Ortho_RGBIR", "5_Labels_all", "5_Labels_all_noBoundary")
    }
    written = []
    for i, j in tiles:
        origin = (POTSDAM_ORIGIN[0] + i * w * gsd, POTSDAM_ORIGIN[1] - j * h * gsd)
        scene = generate_scene(h, w, seed=sub_seed(seed, i, j), gsd=gsd, origin=origin)
        stem = f"top_potsdam_{i}_{j}"
        files = PotsdamFiles(
            f"{i}_{j}",
            sub["4_Ortho_RGBIR"] / f"{stem}_RGBIR.tif",
            sub["2_Ortho_RGB"] / f"{stem}_RGB.tif",
            sub["5_Labels_all"] / f"{stem}_label.tif",
            sub["5_Labels_all_noBoundary"] / f"{stem}_label_noBoundary.tif",
        )
        geo: dict[str, Any] = {"crs": scene.crs, "transform": scene.transform}
        write_geotiff(files.rgbir, scene.image, descriptions=("red", "green", "blue", "nir"), **geo)
        write_geotiff(files.rgb, scene.image[:3], descriptions=("red", "green", "blue"), **geo)
        label, eroded = _labels(scene, "potsdam")
        write_geotiff(files.label, label, **geo)
        write_geotiff(files.label_noboundary, eroded, **geo)
        written.append(files)
    return written


def write_vaihingen(
    root: PathLike, areas: Iterable[int] = (1, 2), *, size: Size = VAIHINGEN_SIZE, seed: int = 0
) -> list[VaihingenFiles]:
    """Write Vaihingen areas ``top_mosaic_09cm_area{N}`` under ``root`` in the dataset's folder layout.

    ``top/`` holds 3-band IRRG images (bands NIR, R, G; 9 cm; EPSG:32632), ``gts_for_participants/`` the
    ISPRS colour labels and ``gts_eroded_for_participants/`` the ``_noBoundary`` labels.

    Args:
        root: Dataset root (created if missing).
        areas: Area numbers.
        size: Area size ``N`` or ``(H, W)`` in pixels.
        seed: Base seed; each area's seed is derived from ``(seed, N)``.
    """
    given = list(areas)
    numbers = [int(n) for n in given if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0]
    if not numbers or len(numbers) != len(given) or len(set(numbers)) != len(numbers):
        raise InputError(f"Vaihingen areas must be distinct non-negative integers like (1, 2), got {areas!r}")
    h, w = check_size(size)
    top, gts = folder(root, "top"), folder(root, "gts_for_participants")
    eroded_dir = folder(root, "gts_eroded_for_participants")
    written = []
    for n in numbers:
        origin = (VAIHINGEN_ORIGIN[0] + n * w * 0.09, VAIHINGEN_ORIGIN[1])
        scene = generate_scene(h, w, seed=sub_seed(seed, "vaihingen", n), gsd=0.09, origin=origin, crs="EPSG:32632")
        stem = f"top_mosaic_09cm_area{n}"
        files = VaihingenFiles(n, top / f"{stem}.tif", gts / f"{stem}.tif", eroded_dir / f"{stem}_noBoundary.tif")
        geo: dict[str, Any] = {"crs": scene.crs, "transform": scene.transform}
        write_geotiff(files.image, scene.image[[3, 0, 1]], descriptions=("nir", "red", "green"), **geo)
        label, eroded = _labels(scene, "vaihingen")
        write_geotiff(files.label, label, **geo)
        write_geotiff(files.label_noboundary, eroded, **geo)
        written.append(files)
    return written
