"""Many per-scene label rasters joined into one seamless region raster: a GDAL VRT on a common grid, and a COG.

**Grid.** The region grid (:class:`RegionGrid`, :func:`region_grid`) has the first raster's CRS (or ``--to-crs``)
and pixel size (or ``--res``; in another CRS the first raster's pixel size as GDAL's suggested warp gives it), its
origin on the first raster's pixel grid when the CRS is the first raster's, and covers the union of all rasters'
bounds. A raster with the same CRS and pixel size whose origin lies on a whole pixel (within
:data:`GRID_TOLERANCE` pixel) is *on the grid* and used as it is; any other is first warped (nearest neighbour) to
its bounding window of the grid, into a tiled, deflated GeoTIFF in ``<out stem>_warped/`` beside the VRT.

**Overlaps.** Sliding-window predictions are worst near a scene's edge, where windows lack context. So each pixel
comes from the scene in which it lies farthest from that scene's edge: for a pixel (row ``r``, column ``c``) and
a scene whose footprint on the region grid is rows ``[r0, r1)`` × columns ``[c0, c1)`` the distance is
``d = min(r + 0.5 - r0, r1 - r - 0.5, c + 0.5 - c0, c1 - c - 0.5)`` and the covering scene with the largest ``d``
owns the pixel. Equal ``d`` go to the scene farther from its border along the other axis (the larger of its row
and column distance), then to the scene listed first. (Without that second key two scenes sharing an outer edge
of the region would tie along that whole edge, and the first would own a triangle of the other's half.) A regular
grid of equal tiles overlapping by a margin is thus cut at the middle of every overlap, 4-way corners into
quadrants, one rectangle per tile; :func:`rs_deeplab.geo.ownership.ownership` plans the rectangles exactly.

**Layers.** The VRT draws every scene whole, in the order given, with 255 transparent, then each scene's owned
rectangles on top (255 transparent again). A pixel thus holds its owner's class; where the owner has no data
(255) it holds the class of the *last-listed* scene that has data there; else 255. The VRT carries the first
raster's colour table and ``CLASS_NAMES`` tag (QGIS and :mod:`rs_deeplab.vectorize` read them) and names its
sources relative to itself, so the folder can be moved. ``cog=True`` writes, as well as the VRT, one
Cloud-Optimized GeoTIFF of it (``<out>.tif``, nearest-neighbour overviews). Probability rasters
(``probs``, uint8 0-255, no nodata value) go into ``<stem>_probs.vrt`` with the owned rectangles only: 0-255 are
all probabilities, so nothing is transparent and each pixel's bands are its owner's (all zeros where the owner
has no data, also where the label VRT took another scene's class). Every file is written under a temporary name
and renamed, so a re-run replaces the outputs atomically.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

from rs_deeplab.cli.diskspace import check_free_space
from rs_deeplab.cli.errors import InputError, RsDeeplabError
from rs_deeplab.cli.outputs import check_output_file, check_output_folder
from rs_deeplab.geo.ownership import Rect, ownership
from rs_deeplab.geo.raster import PathLike, atomic_output, geotiff_profile, open_raster, write_error
from rs_deeplab.geo.vrt import Band, Source, vrt_text
from rs_deeplab.labels.class_names import CLASS_NAMES_TAG
from rs_deeplab.labels.classes import IGNORE_INDEX

__all__ = ["RegionGrid", "RegionOutput", "Scene", "ownership", "region_grid", "write_region"]

GRID_TOLERANCE = 1e-6
"""How far (in pixels) a raster's edges may lie from whole pixels of the grid and still be on it."""
LABEL_BYTES_PER_PIXEL = 1 / 8
"""Disk space per label pixel for the free-space check (as
:data:`rs_deeplab.inference.writing.writer.LABEL_BYTES_PER_PIXEL`,
which a shared module may not import)."""
PROBS_BYTES_PER_PIXEL = 1 / 2
"""The same per probability band (as the inference writer's)."""
COG_OVERVIEWS = 4 / 3
"""A Cloud-Optimized copy is the raster plus overviews, each level a quarter of the one before."""
COG_BLOCK = 512
"""Block side of the Cloud-Optimized GeoTIFF (overviews are made until one block holds the raster)."""
VRT_BYTES = 16_384
"""A VRT's size without its sources, about (a full colour table is most of it)."""
VRT_SOURCE_BYTES = 512
"""A VRT's size per source rectangle and band, about."""


@dataclass(frozen=True)
class Scene:
    """What a mosaic needs of one input raster, read once."""

    path: Path
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    block: tuple[int, int]

    @classmethod
    def read(cls, path: PathLike) -> Scene:
        """Read the metadata of ``path``.

        Raises:
            RasterError: It is missing or not a raster GDAL reads.
        """
        with open_raster(path) as src:
            rows, cols = src.block_shapes[0]
            return cls(
                Path(path),
                src.crs,
                src.transform,
                src.width,
                src.height,
                src.count,
                tuple(src.dtypes),
                (int(cols), int(rows)),
            )

    def bounds(self, crs: CRS) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the raster's four corners, in ``crs`` (densified when it differs)."""
        xs, ys = zip(*(self.transform @ (c, r) for c in (0, self.width) for r in (0, self.height)), strict=True)
        box = (min(xs), min(ys), max(xs), max(ys))
        return box if self.crs == crs else transform_bounds(self.crs, crs, *box, densify_pts=21)


@dataclass(frozen=True)
class RegionGrid:
    """The pixel grid of a mosaic: north-up ``transform`` in ``crs``, ``width`` × ``height`` pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    def footprint(self, scene: Scene) -> Rect | None:
        """The scene's ``(row0, row1, col0, col1)`` on this grid when it is on it, else None (it needs warping)."""
        t, g = scene.transform, self.transform
        if scene.crs != self.crs or t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            return None
        left, right = (t.c - g.c) / g.a, (t.c + t.a * scene.width - g.c) / g.a
        top, bottom = (t.f - g.f) / g.e, (t.f + t.e * scene.height - g.f) / g.e
        edges = [round(v) for v in (top, bottom, left, right)]
        if any(abs(v - e) > GRID_TOLERANCE for v, e in zip((top, bottom, left, right), edges, strict=True)):
            return None
        r0, r1, c0, c1 = edges
        return (r0, r1, c0, c1) if (r1 - r0, c1 - c0) == (scene.height, scene.width) else None

    def window(self, bounds: tuple[float, float, float, float]) -> Rect:
        """The smallest ``(row0, row1, col0, col1)`` of this grid holding ``bounds`` (in its CRS), clipped to it."""
        g = self.transform
        left, bottom, right, top = bounds
        c0, c1 = math.floor((left - g.c) / g.a + GRID_TOLERANCE), math.ceil((right - g.c) / g.a - GRID_TOLERANCE)
        r0, r1 = math.floor((top - g.f) / g.e + GRID_TOLERANCE), math.ceil((bottom - g.f) / g.e - GRID_TOLERANCE)
        return max(r0, 0), min(r1, self.height), max(c0, 0), min(c1, self.width)


@dataclass(frozen=True)
class RegionOutput:
    """What :func:`write_region` wrote.

    Attributes:
        vrt: The label mosaic (GDAL VRT).
        cog: The Cloud-Optimized GeoTIFF of it, when asked for.
        probs_vrt: The probability mosaic, when probability rasters were given.
        grid: The region grid.
        sources: Per scene, the raster the VRT reads: the input, or its warped copy.
        footprints: Per scene, its rectangle ``(row0, row1, col0, col1)`` on the grid (the window of a warped copy).
        owned: Per scene, the disjoint rectangles whose pixels it owns (region pixels, same form).
        warped: The warped copies written (labels and probabilities).
    """

    vrt: Path
    cog: Path | None
    probs_vrt: Path | None
    grid: RegionGrid
    sources: tuple[Path, ...]
    footprints: tuple[Rect, ...]
    owned: tuple[tuple[Rect, ...], ...]
    warped: tuple[Path, ...]

    def owner(self, row: int, col: int) -> int | None:
        """Index of the scene owning region pixel ``(row, col)``, or None where no scene covers it."""
        return next(
            (i for i, rects in enumerate(self.owned) for r0, r1, c0, c1 in rects if r0 <= row < r1 and c0 <= col < c1),
            None,
        )


def target_crs(to_crs: str | None) -> CRS | None:
    """``--to-crs`` as a CRS (None stays None).

    Raises:
        InputError: It is not a coordinate reference system.
    """
    if to_crs is None:
        return None
    import pyproj  # here: the GPU path imports this module and carries no pyproj

    try:  # pyproj first: GDAL would print its own PROJ error line before refusing
        crs = CRS.from_wkt(pyproj.CRS.from_user_input(to_crs).to_wkt())
    except (pyproj.exceptions.CRSError, CRSError, ValueError, TypeError):
        crs = None
    if crs is None:
        raise InputError(
            f"--to-crs {to_crs}: not a coordinate reference system; use e.g. EPSG:32633 or a WKT/PROJ string"
        )
    return crs


def checked_res(res: float | None) -> float | None:
    """``--res`` checked: a positive, finite number (None stays None).

    Raises:
        InputError: It is not.
    """
    if res is None:
        return None
    try:
        value = float(res)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InputError(
            f"--res {res}: the pixel size must be a positive number in target CRS units; use e.g. "
            "--res 0.5 (metres in a UTM CRS), or leave it out for the first raster's size"
        )
    return value


def region_grid(rasters: Sequence[PathLike], to_crs: str | None = None, res: float | None = None) -> RegionGrid:
    """The grid a mosaic of ``rasters`` is drawn on (module docstring, Grid).

    Args:
        rasters: The rasters, first one first (it sets the CRS, pixel size and pixel grid by default).
        to_crs: The target CRS (anything rasterio/pyproj accept); default the first raster's.
        res: The pixel size in target CRS units; default the first raster's.

    Raises:
        InputError: No rasters, a raster without a CRS, or a bad ``to_crs`` / ``res``.
        RasterError: A raster cannot be read.
    """
    crs, step = target_crs(to_crs), checked_res(res)
    if not rasters:
        raise InputError("no rasters to join into a mosaic; pass at least one label raster")
    return grid_of([Scene.read(p) for p in rasters], crs, step)


def grid_of(scenes: Sequence[Scene], crs: CRS | None, res: float | None) -> RegionGrid:
    """:func:`region_grid` of scenes already read (``crs`` and ``res`` already checked)."""
    for scene in scenes:
        if scene.crs is None:
            raise InputError(
                f"{scene.path}: has no coordinate reference system; a mosaic needs georeferenced "
                "rasters (write them with their scene's CRS)"
            )
    first = scenes[0]
    assert first.crs is not None  # checked above
    target = crs or first.crs
    same = target == first.crs
    if res is not None:
        rx = ry = res
    elif same:
        rx, ry = math.hypot(first.transform.a, first.transform.d), math.hypot(first.transform.b, first.transform.e)
    else:
        suggested, _, _ = calculate_default_transform(
            first.crs, target, first.width, first.height, *first.bounds(first.crs)
        )
        rx, ry = abs(suggested.a), abs(suggested.e)
    boxes = [s.bounds(target) for s in scenes]
    left, bottom = min(b[0] for b in boxes), min(b[1] for b in boxes)
    right, top = max(b[2] for b in boxes), max(b[3] for b in boxes)
    ax, ay = (first.transform.c, first.transform.f) if same else (left, top)
    c0 = math.floor((left - ax) / rx + GRID_TOLERANCE)
    c1 = math.ceil((right - ax) / rx - GRID_TOLERANCE)
    r0 = math.floor((ay - top) / ry + GRID_TOLERANCE)
    r1 = math.ceil((ay - bottom) / ry - GRID_TOLERANCE)
    return RegionGrid(target, Affine(rx, 0, ax + c0 * rx, 0, -ry, ay - r0 * ry), max(c1 - c0, 1), max(r1 - r0, 1))


def write_region(
    rasters: Sequence[PathLike],
    out: PathLike,
    *,
    to_crs: str | None = None,
    res: float | None = None,
    cog: bool = False,
    probs: Sequence[PathLike] | None = None,
) -> RegionOutput:
    """Join per-scene label rasters into one region mosaic (module docstring: grid, overlap rule, layers).

    Every check runs before anything is written.

    Args:
        rasters: The scenes' uint8 single-band label rasters (255 = nodata); the first sets the CRS, pixel size,
            pixel grid, colour table and class names by default.
        out: The VRT to write (``.vrt``); warped copies go to ``<stem>_warped/`` beside it.
        to_crs: Target CRS (``--to-crs``), default the first raster's.
        res: Target pixel size in target CRS units (``--res``), default the first raster's.
        cog: Also write a Cloud-Optimized GeoTIFF of the mosaic at ``out.with_suffix(".tif")``.
        probs: Per scene, in the same order, its uint8 probability raster on the label raster's grid: joined into
            ``<stem>_probs.vrt``.

    Returns:
        The paths written, the grid, and each scene's footprint and owned rectangles in region pixels.

    Raises:
        InputError: A bad ``to_crs`` / ``res``, no rasters, rasters that are no labels (or probabilities that do
            not match them), an output that is a folder, lies in a missing folder or under a file.
        RasterError: An input cannot be read, or an output cannot be written.
        DiskFullError: The outputs need more space than the disk has (refused before writing), or filled it.
    """
    out = Path(out)
    crs, step = target_crs(to_crs), checked_res(res)
    if not rasters:
        raise InputError("no rasters to join into a mosaic; pass at least one label raster")
    scenes = [Scene.read(p) for p in rasters]
    _check_labels(scenes)
    prob_scenes = _check_probs(scenes, probs) if probs is not None else None
    grid = grid_of(scenes, crs, step)
    on_grid = [grid.footprint(s) for s in scenes]
    footprints = [on or grid.window(s.bounds(grid.crs)) for s, on in zip(scenes, on_grid, strict=True)]
    names = _Names(out)
    warping = [i for i, on in enumerate(on_grid) if on is None and _area(footprints[i])]
    _check_outputs(names, scenes, prob_scenes, cog, warping=bool(warping))
    owned = ownership(footprints)
    what = "the mosaic" + (" and its Cloud-Optimized GeoTIFF" if cog else "") + (" and warped copies" * bool(warping))
    layers = len(scenes) + sum(map(len, owned))
    check_free_space(out, _needed(grid, [footprints[i] for i in warping], layers, prob_scenes, cog), what)
    sources = [s.path for s in scenes]
    prob_sources = [s.path for s in prob_scenes] if prob_scenes is not None else []
    for i in warping:
        names.warped.mkdir(exist_ok=True)
        sources[i] = _warp(scenes[i], grid, footprints[i], names.warped / f"{i:03d}_{scenes[i].path.stem}.tif")
        if prob_scenes is not None:
            target = names.warped / f"{i:03d}_{prob_scenes[i].path.stem}.tif"
            prob_sources[i] = _warp(prob_scenes[i], grid, footprints[i], target, labels=False)
    labels = [_as_warped(s, p) for s, p in zip(scenes, sources, strict=True)]
    _write_vrt(out, grid, _label_band(scenes[0], labels, footprints, owned), _label_metadata(scenes[0]))
    if prob_scenes is not None:
        bands = _prob_bands(prob_scenes, prob_sources, footprints, owned)
        _write_vrt(names.probs, grid, bands, _label_metadata(prob_scenes[0]))
    if cog:
        _write_cog(out, names.cog, int(grid.width * grid.height * LABEL_BYTES_PER_PIXEL * COG_OVERVIEWS))
    warped = [sources[i] for i in warping] + [prob_sources[i] for i in warping if prob_scenes is not None]
    return RegionOutput(
        out,
        names.cog if cog else None,
        names.probs if prob_scenes is not None else None,
        grid,
        tuple(sources),
        tuple(footprints),
        tuple(tuple(r) for r in owned),
        tuple(warped),
    )


@dataclass(frozen=True)
class _Names:
    """The paths a mosaic at ``vrt`` writes."""

    vrt: Path

    @property
    def cog(self) -> Path:
        return self.vrt.with_suffix(".tif")

    @property
    def probs(self) -> Path:
        return self.vrt.with_name(f"{self.vrt.stem}_probs.vrt")

    @property
    def warped(self) -> Path:
        return self.vrt.with_name(f"{self.vrt.stem}_warped")


def _area(rect: Rect) -> int:
    return max(rect[1] - rect[0], 0) * max(rect[3] - rect[2], 0)


def _check_labels(scenes: Sequence[Scene]) -> None:
    for scene in scenes:
        if scene.count != 1 or scene.dtypes[0] != "uint8":
            raise InputError(
                f"{scene.path}: not a label raster ({scene.count} band(s) of {scene.dtypes[0]}); a "
                "mosaic joins uint8 single-band label rasters as infer writes them (255 = nodata): pass "
                "those (probabilities go to probs)"
            )


def _check_probs(scenes: Sequence[Scene], probs: Sequence[PathLike]) -> list[Scene]:
    if len(probs) != len(scenes):
        raise InputError(
            f"{len(probs)} probability rasters for {len(scenes)} label rasters; pass one per label "
            "raster, in the same order (or none)"
        )
    out = [Scene.read(p) for p in probs]
    for label, prob in zip(scenes, out, strict=True):
        if set(prob.dtypes) != {"uint8"} or prob.count != out[0].count:
            raise InputError(
                f"{prob.path}: {prob.count} band(s) of {', '.join(sorted(set(prob.dtypes)))}, but "
                f"{out[0].path} has {out[0].count} of uint8; pass the uint8 probability rasters infer "
                "wrote with the same model"
            )
        if (prob.crs, prob.transform, prob.width, prob.height) != (
            label.crs,
            label.transform,
            label.width,
            label.height,
        ):
            raise InputError(
                f"{prob.path}: not on the grid of its label raster {label.path}; pass each scene's "
                "probabilities in the order of the label rasters"
            )
    return out


def _check_outputs(
    names: _Names, scenes: Sequence[Scene], probs: Sequence[Scene] | None, cog: bool, *, warping: bool
) -> None:
    out = names.vrt
    if out.suffix.lower() != ".vrt":
        raise InputError(
            f"{out}: the mosaic is a GDAL VRT; name it with .vrt, e.g. region.vrt (a Cloud-Optimized "
            "GeoTIFF is written beside it as region.tif when asked for)"
        )
    inputs = [s.path for s in [*scenes, *(probs or [])]]
    targets = [out] + ([names.probs] if probs is not None else [])
    for target in targets:
        check_output_file(target, what="the mosaic", inputs=inputs)
        if (
            target.is_file()
            and target.stat().st_size
            and not target.read_bytes()[:64].lstrip().startswith(b"<VRTDataset")
        ):
            raise InputError(f"the mosaic: {target} exists and is not a VRT; remove it or choose another name")
    if cog:
        check_output_file(names.cog, what="the mosaic", kind="GeoTIFF", inputs=inputs)
    if warping:
        check_output_folder(names.warped, what="the mosaic's warped copies")


def _needed(grid: RegionGrid, warped: Sequence[Rect], sources: int, probs: Sequence[Scene] | None, cog: bool) -> int:
    """About the bytes the outputs take: the ``warped`` windows' copies, the COG, the VRTs of ``sources`` sources.

    Per pixel as the inference writer estimates its rasters (:data:`LABEL_BYTES_PER_PIXEL`, :data:`COG_OVERVIEWS`);
    a VRT takes about :data:`VRT_BYTES` plus :data:`VRT_SOURCE_BYTES` per source and band.
    """
    bands = probs[0].count if probs else 0
    per_pixel = LABEL_BYTES_PER_PIXEL + bands * PROBS_BYTES_PER_PIXEL
    region = grid.width * grid.height * LABEL_BYTES_PER_PIXEL * COG_OVERVIEWS if cog else 0
    vrts = VRT_BYTES * (1 + (probs is not None)) + VRT_SOURCE_BYTES * sources * (1 + bands)
    return int(sum(map(_area, warped)) * per_pixel + region + vrts)


def _warp(scene: Scene, grid: RegionGrid, window: Rect, dest: Path, *, labels: bool = True) -> Path:
    """``scene`` resampled (nearest) onto its window of ``grid``, written atomically to ``dest``."""
    r0, r1, c0, c1 = window
    nodata = IGNORE_INDEX if labels else None
    profile = geotiff_profile(
        width=c1 - c0,
        height=r1 - r0,
        count=scene.count,
        dtype="uint8",
        crs=grid.crs,
        transform=grid.transform @ Affine.translation(c0, r0),
        nodata=nodata,
    )
    profile.pop("predictor", None)  # class ids are not a smooth signal
    needed = int(_area(window) * (LABEL_BYTES_PER_PIXEL if labels else PROBS_BYTES_PER_PIXEL * scene.count))
    with (
        _translated(dest),
        atomic_output(dest, needed=needed) as tmp,
        open_raster(scene.path) as src,
        rasterio.open(tmp, "w", **profile) as dst,
    ):
        for band in range(1, scene.count + 1):
            reproject(
                rasterio.band(src, band),
                rasterio.band(dst, band),
                src_nodata=nodata,
                dst_nodata=nodata,
                resampling=Resampling.nearest,
            )
            dst.set_band_description(band, src.descriptions[band - 1] or "")
        dst.update_tags(**src.tags())
        if labels and (colormap := _colormap(src)):
            dst.write_colormap(1, colormap)
    return dest


def _as_warped(scene: Scene, source: Path) -> Scene:
    """``scene`` as the VRT reads it: itself, or its warped copy."""
    return scene if source == scene.path else Scene.read(source)


def _colormap(src: Any) -> dict[int, tuple[int, ...]] | None:
    try:
        return {int(k): tuple(v) for k, v in src.colormap(1).items()}
    except ValueError:  # no colour table
        return None


def _label_metadata(scene: Scene) -> dict[str, str]:
    with open_raster(scene.path) as src:
        names = src.tags().get(CLASS_NAMES_TAG) or src.tags(1).get(CLASS_NAMES_TAG)
    return {CLASS_NAMES_TAG: names} if names else {}


def _layers(scene: Scene, band: int, footprint: Rect, rects: Sequence[Rect], nodata: int | None) -> list[Source]:
    """Sources of ``scene``'s ``rects`` (region pixels; its whole footprint when empty)."""
    r0, _, c0, _ = footprint
    boxes = [(c0, r0, scene.width, scene.height)] if not rects else [(a, b, d - a, e - b) for b, e, a, d in rects]
    return [
        Source(scene.path, band, (scene.width, scene.height), scene.block, (x - c0, y - r0, w, h), (x, y, w, h), nodata)
        for x, y, w, h in boxes
    ]


def _label_band(
    first: Scene, scenes: Sequence[Scene], footprints: Sequence[Rect], owned: Sequence[Sequence[Rect]]
) -> list[Band]:
    whole = [
        src
        for s, fp in zip(scenes, footprints, strict=True)
        if _area(fp)
        for src in _layers(s, 1, fp, [], IGNORE_INDEX)
    ]
    tops = [
        src
        for s, fp, rects in zip(scenes, footprints, owned, strict=True)
        if rects
        for src in _layers(s, 1, fp, rects, IGNORE_INDEX)
    ]
    with open_raster(first.path) as src:
        colormap = _colormap(src)
    return [Band([*whole, *tops], "class", IGNORE_INDEX, colormap)]


def _prob_bands(
    scenes: Sequence[Scene], sources: Sequence[Path], footprints: Sequence[Rect], owned: Sequence[Sequence[Rect]]
) -> list[Band]:
    read = [_as_warped(s, p) for s, p in zip(scenes, sources, strict=True)]
    with open_raster(scenes[0].path) as src:
        descriptions = list(src.descriptions)
    return [
        Band(
            [
                layer
                for s, fp, rects in zip(read, footprints, owned, strict=True)
                if rects
                for layer in _layers(s, band, fp, rects, None)
            ],
            descriptions[band - 1] or "",
        )
        for band in range(1, scenes[0].count + 1)
    ]


def _write_vrt(out: Path, grid: RegionGrid, bands: Sequence[Band], metadata: dict[str, str]) -> None:
    text = vrt_text(
        out.parent,
        width=grid.width,
        height=grid.height,
        wkt=grid.crs.to_wkt(),
        transform=grid.transform,
        bands=bands,
        metadata=metadata,
    )
    with _translated(out), atomic_output(out, needed=len(text)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_cog(vrt: Path, cog: Path, needed: int) -> None:
    """The VRT copied into one Cloud-Optimized GeoTIFF (deflate, nearest-neighbour overviews), atomically."""
    with _translated(cog), atomic_output(cog, needed=needed) as tmp:
        rasterio.shutil.copy(
            vrt,
            tmp,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=COG_BLOCK,
            OVERVIEW_RESAMPLING="NEAREST",
            BIGTIFF="IF_SAFER",
        )


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    """GDAL and OS failures of a write of ``path`` as one line (lack of space is a DiskFullError already)."""
    try:
        yield
    except (rasterio.errors.RasterioError, CPLE_BaseError, OSError) as exc:
        if isinstance(exc, RsDeeplabError):
            raise
        raise write_error(path, exc) from None
