"""Cleaning: coverage-preserving simplification, hole filling and a minimum area.

Simplification runs per block on the *whole* block coverage (every pixel value, nodata included), in pixel
units, with the block outline held fixed: each boundary shared by two classes is simplified once, so
neighbours stay edge-matched (no gaps, no overlaps), and pieces cut by a seam still meet exactly on it.
Hole filling removes interior rings smaller than a threshold and drops the polygons inside those holes, so the
output stays free of overlaps; the minimum area then drops small polygons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from rs_deeplab.vectorize.measure import AreaMeter
from rs_deeplab.vectorize.rings import densify_pixel_polygons, drop_collinear, ring_ends


def simplify_block(polys: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify a complete block coverage of pixel polygons, keeping the block outline fixed.

    Args:
        polys: Every polygon of one block (all values), in pixel coordinates.
        tolerance: Visvalingam-Whyatt tolerance in pixels (about the square root of the largest triangle area
            removed).
    """
    if len(polys) == 0:
        return polys
    simple = shapely.coverage_simplify(densify_pixel_polygons(polys), tolerance, simplify_boundary=False)
    return drop_collinear(simple)


@dataclass
class Rows:
    """Finished polygons ready to write: class id, geometry (raster CRS), area and perimeter in metres."""

    values: np.ndarray
    geoms: np.ndarray
    area: np.ndarray
    perimeter: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def take(self, select: np.ndarray) -> Rows:
        """Rows where ``select`` is True (or at the given indices)."""
        return Rows(self.values[select], self.geoms[select], self.area[select], self.perimeter[select])

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        """Concatenate row batches (an empty list gives no rows)."""
        if not parts:
            return Rows(np.empty(0, np.int64), np.empty(0, object), np.empty(0), np.empty(0))
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("values", "geoms", "area", "perimeter")))


@dataclass
class Cleaner:
    """Applies hole filling and the minimum area to finished regions (geometries in the raster CRS).

    Polygons smaller than ``fill_holes`` might lie in a hole that a region finished later fills, so they are
    held back until :meth:`finish` (only when ``fill_holes > 0``).
    """

    meter: AreaMeter
    min_area: float = 0.0
    fill_holes: float = 0.0
    holes_filled: int = 0
    absorbed: int = 0
    dropped_small: int = 0
    _holes: list[np.ndarray] = field(default_factory=list)
    _held: list[Rows] = field(default_factory=list)
    _held_points: list[np.ndarray] = field(default_factory=list)

    def clean(self, values: np.ndarray, geoms: np.ndarray) -> Rows:
        """Fill small holes, measure, drop small polygons; return the rows that can be written now."""
        original = geoms
        if self.fill_holes > 0:
            geoms = self._fill(geoms)
        area, perimeter = self.meter.measure(geoms)
        rows = Rows(values, geoms, area, perimeter)
        keep = area >= self.min_area
        self.dropped_small += int((~keep).sum())
        if self.fill_holes > 0:
            held = keep & (area < self.fill_holes)
            if held.any():
                self._held.append(rows.take(held))
                self._held_points.append(shapely.point_on_surface(original[held]))
            keep &= ~held
        return rows.take(keep)

    def finish(self) -> Rows:
        """Return the held-back polygons that no filled hole swallowed."""
        held = Rows.concat(self._held)
        if not len(held) or not self._holes:
            return held
        tree = shapely.STRtree(np.concatenate(self._holes))
        points = np.concatenate(self._held_points)
        inside = np.unique(tree.query(points, predicate="within")[0])
        self.absorbed += len(inside)
        keep = np.ones(len(held), dtype=bool)
        keep[inside] = False
        return held.take(keep)

    def _fill(self, geoms: np.ndarray) -> np.ndarray:
        has = shapely.get_num_interior_rings(geoms) > 0
        if not has.any():
            return geoms
        rings, owner = shapely.get_rings(geoms[has], return_index=True)
        exterior, _ = ring_ends(owner)
        holes = shapely.polygons(rings[~exterior])
        small = self.meter.area(holes) < self.fill_holes
        if not small.any():
            return geoms
        self.holes_filled += int(small.sum())
        self._holes.append(holes[small])
        keep = exterior.copy()
        keep[~exterior] = ~small
        out = geoms.copy()
        out[has] = shapely.polygons(rings[keep], indices=owner[keep])
        return out
