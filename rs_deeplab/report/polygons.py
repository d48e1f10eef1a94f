"""Polygon outlines for a page: simplified per zoom level, in raster pixel coordinates, capped in size.

Each level keeps the polygons at least about a screen pixel across at that zoom, simplified to half a screen
pixel, so the coarse levels of a large prediction stay light. When the finest level alone would pass
:data:`MAX_VERTICES`, the largest polygons are kept and the page says how many are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

MAX_VERTICES = 400_000
"""Vertices of the finest level at most (about 4 MB of page data)."""
LEVEL_STEP = 2
"""Zoom levels between two levels of detail (each is 4× coarser than the next)."""
LEVELS = 4
"""Levels of detail at most; zooms below the coarsest use it."""


@dataclass
class Outlines:
    """Outlines in levels of detail, finest first, and a note for the page when polygons were left out.

    A level is ``{"minZoom": z, "polygons": [[class_id, [ring, ...]], ...]}``; a ring is a flat list of column, row
    pairs.
    """

    levels: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None


def _rings(geom: Any) -> list[list[float]]:
    rings = []
    for poly in getattr(geom, "geoms", [geom]):
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        for ring in (poly.exterior, *poly.interiors):
            coords = np.round(np.asarray(ring.coords)[:-1, :2], 2)
            rings.append(coords.ravel().tolist())
    return rings


def outline_levels(polygons: Path, grid: Any, max_zoom: int) -> Outlines:
    """The outlines of the GeoPackage's ``labels`` layer on ``grid`` (a :class:`~rs_deeplab.report.prediction.Grid`).

    Polygons in another CRS than the grid's are reprojected to it.
    """
    import geopandas

    frame = geopandas.read_file(polygons, layer="labels", columns=["class_id"])
    out = Outlines()
    if frame.empty:
        return out
    if grid.crs is not None and frame.crs is not None and not frame.crs.equals(grid.crs):
        frame = frame.to_crs(grid.crs)
    # to raster pixel coordinates (column, row): the page turns them into map coordinates with the grid
    geoms = shapely.transform(frame.geometry.values, lambda xy: (xy - [grid.x0, grid.y0]) / [grid.a, grid.e])
    classes = frame["class_id"].to_numpy()
    order = np.argsort(-shapely.area(geoms))
    geoms, classes = geoms[order], classes[order]
    fine = shapely.simplify(geoms, 0.5)
    vertices = np.cumsum(shapely.get_num_coordinates(fine))
    keep = int(np.searchsorted(vertices, MAX_VERTICES, side="right"))
    if keep < len(geoms):
        out.note = (
            f"Outlines of the {keep:,} largest of {len(geoms):,} polygons are drawn (at most "
            f"{MAX_VERTICES:,} vertices); the GeoPackage has them all."
        )
        geoms, classes = geoms[:keep], classes[:keep]
    for level in range(LEVELS):
        zoom = max_zoom - level * LEVEL_STEP
        step = 2.0 ** (max_zoom - zoom)  # raster pixels per screen pixel at this zoom
        big = shapely.area(geoms) >= step * step if level else np.ones(len(geoms), bool)
        simple = shapely.simplify(geoms[big], 0.5 * step)
        out.levels.append(
            {
                "minZoom": zoom if level < LEVELS - 1 and zoom > 0 else -99,
                "polygons": [[int(c), _rings(g)] for c, g in zip(classes[big], simple, strict=True)],
            }
        )
        if zoom <= 0:
            break
    out.levels[-1]["minZoom"] = -99
    return out
