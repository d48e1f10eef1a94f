"""The region outputs of a many-scene run: one mosaic on one grid, polygons merged across scene edges, a catalog.

After :func:`~rs_deeplab.inference.predicting.scene.predict_scenes` wrote each scene's label raster,
:func:`write_region`
joins them in one raster on the region grid (:mod:`rs_deeplab.geo.mosaic`: a VRT over the scene rasters, and a COG
under ``--cog``; an overlap is decided once, by the scene whose border is farthest). The polygons are the
vectorizer's run over that mosaic, so an object cut by a scene edge is merged exactly as one cut by a block seam.
Each polygon's ``scene`` names the scene whose share of the mosaic it lies in, or the scenes (comma-separated)
when it spans several. :func:`write_catalog` writes the STAC Collection and Items (:mod:`rs_deeplab.geo.stac_outputs`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from rs_deeplab.cli.diskspace import check_free_space, out_of_space
from rs_deeplab.cli.errors import DiskFullError
from rs_deeplab.cli.outputs import check_output_file, check_output_folder
from rs_deeplab.geo.mosaic import (
    COG_OVERVIEWS,
    LABEL_BYTES_PER_PIXEL,
    PROBS_BYTES_PER_PIXEL,
    RegionGrid,
    RegionOutput,
    Scene,
    checked_res,
    grid_of,
    target_crs,
)
from rs_deeplab.geo.raster import temporary_sibling
from rs_deeplab.inference.reading.reader import SceneInfo


def check_region(
    scenes: Sequence[Path | str],
    headers: Sequence[SceneInfo],
    rasters: Sequence[Path],
    out: Path,
    *,
    to_crs: str | None,
    res: float | None,
    cog: bool,
    classes: int | None,
) -> RegionGrid:
    """Before any prediction: the mosaic's options, its outputs, and room on the disk for the whole job.

    The grid comes from the scenes' ``headers``, already read (each label raster lies on its scene's grid). The
    space needed is the label rasters not yet written (and their probabilities when ``classes`` is given), their
    Cloud-Optimized copies under ``cog``, the warped copies of scenes off the region grid and the mosaic's COG,
    estimated per pixel as the
    writers do (:data:`rs_deeplab.geo.mosaic.LABEL_BYTES_PER_PIXEL`).

    Raises:
        InputError: A bad ``--to-crs`` / ``--res``, a scene without a CRS, a mosaic output that cannot be written.
        DiskFullError: The job needs more space than the output's file system has.
    """
    crs, step = target_crs(to_crs), checked_res(res)
    grid = grid_of([_scene(h) for h in headers], crs, step)
    vrt = out.with_suffix(".vrt")
    local = [Path(s) for s in scenes if isinstance(s, Path)]
    check_output_file(vrt, what=f"the mosaic of --out {out}", inputs=local)
    if cog:
        check_output_file(vrt.with_suffix(".tif"), what=f"the mosaic of --out {out}", kind="GeoTIFF", inputs=local)
    off_grid = [h for h in headers if grid.footprint(_scene(h)) is None]
    if off_grid:
        check_output_folder(vrt.with_name(f"{vrt.stem}_warped"), what="the mosaic's warped copies")
    per_pixel = LABEL_BYTES_PER_PIXEL + (classes * PROBS_BYTES_PER_PIXEL if classes else 0)
    todo = sum(h.width * h.height for h, r in zip(headers, rasters, strict=True) if not r.exists())
    needed = todo * per_pixel * (1 + COG_OVERVIEWS if cog else 1)
    needed += sum(h.width * h.height for h in off_grid) * per_pixel  # about: the warped window's pixels
    needed += grid.width * grid.height * LABEL_BYTES_PER_PIXEL * COG_OVERVIEWS if cog else 0
    needed += 1 << 16  # the VRTs
    check_free_space(vrt, int(needed), f"the label rasters of {len(scenes)} scenes and their mosaic")
    return grid


def _scene(header: SceneInfo) -> Scene:
    """A scene's header as the mosaic describes a raster (no second read of the file)."""
    t = header.transform
    assert isinstance(t, Affine), "a scene header holds rasterio's Affine"
    return Scene(
        Path(header.path),
        header.crs,
        t,
        header.width,
        header.height,
        header.count,
        (header.dtype,) * header.count,
        (0, 0),
    )


def owner_boxes(region: RegionOutput) -> tuple[np.ndarray, np.ndarray]:
    """Every scene's owned rectangles as boxes in the region's CRS, and the scene index of each."""
    import shapely  # here: the inference package is imported where no shapely is installed (a GPU box)

    t: Affine = region.grid.transform
    boxes, index = [], []
    for i, rects in enumerate(region.owned):
        for r0, r1, c0, c1 in rects:
            x0, y0 = t @ (c0, r0)
            x1, y1 = t @ (c1, r1)
            boxes.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            index.append(i)
    return np.array(boxes, dtype=object), np.array(index, dtype=np.int64)


def scene_column(region: RegionOutput, names: Sequence[str]) -> Any:
    """``geoms → names``: the scene whose share of the mosaic each polygon lies in (``a,b`` across a seam)."""
    import shapely

    boxes, index = owner_boxes(region)
    tree = shapely.STRtree(boxes)

    def column(geoms: np.ndarray) -> np.ndarray:
        out = np.full(len(geoms), "", dtype=object)
        if not len(geoms) or not len(boxes):
            return out
        g, b = tree.query(geoms, predicate="intersects")
        shared = shapely.area(shapely.intersection(geoms[g], boxes[b])) > 0  # not a touch along a seam
        found: dict[int, set[int]] = {}
        for gi, scene in zip(g[shared].tolist(), index[b[shared]].tolist(), strict=True):
            found.setdefault(gi, set()).add(scene)
        for gi, scenes in found.items():
            out[gi] = ",".join(names[s] for s in sorted(scenes))
        return out

    return column


def vectorize_region(
    region: RegionOutput,
    names: Sequence[str],
    out: Path,
    *,
    class_names: Sequence[str],
    min_area: float,
    simplify: float,
    quiet: bool,
    workers: int | None = None,
) -> int:
    """Polygons of the mosaic into ``out`` (layer ``labels``, in the region's CRS), written atomically."""
    from rs_deeplab.vectorize import vectorize

    with staged(out) as staging:
        summary = vectorize(
            region.vrt,
            staging,
            class_names=list(class_names),
            min_area=min_area,
            simplify=simplify,
            layer="labels",
            computed_columns={"scene": scene_column(region, names)},
            workers=workers,
            quiet=quiet,
        )
    return summary.polygons


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary name beside ``out`` to write it under; renamed to ``out`` when the block succeeds, else removed.

    Lack of space while writing names ``out`` (the file the user asked for), not the temporary name.
    """
    staging = temporary_sibling(out)
    try:
        yield staging
        os.replace(staging, out)
    except DiskFullError as exc:
        if exc.errno_code is None:
            raise
        raise out_of_space(out, exc.errno_code, exc.needed) from None
    finally:
        staging.unlink(missing_ok=True)
