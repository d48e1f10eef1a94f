"""Polygon areas and perimeters in metres, whatever the raster's CRS.

Projected CRSs whose area scale at the raster's centre is within 1% of true (UTM, national grids, ...) are
measured directly, in their linear unit converted to metres. Geographic CRSs (EPSG:4326) and strongly
distorting projections (Web Mercator away from the equator) are measured after projecting to a Lambert
azimuthal equal-area projection centred on the raster, so areas are true square metres there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pyproj
import shapely

log = logging.getLogger(__name__)

MAX_AREA_DISTORTION = 0.01
"""Largest relative area error accepted before measuring in an equal-area projection instead."""


class AreaMeter:
    """Measures geometries given in a raster's CRS in square metres and metres.

    Args:
        crs: The raster's CRS (anything with ``to_wkt()``, e.g. a rasterio CRS), or None for pixel/unknown units.
        bounds: ``(left, bottom, right, top)`` of the raster in that CRS.

    Attributes:
        method: ``native`` (measured in the CRS) or ``equal-area`` (projected to a centred LAEA first).
    """

    def __init__(self, crs: object | None, bounds: tuple[float, float, float, float]) -> None:
        self._factor = 1.0
        self._to_laea: pyproj.Transformer | None = None
        self.method = "native"
        if crs is None:
            log.warning("the raster has no CRS: area_m2 and perimeter_m are in squared/linear pixel-grid units")
            return
        source = pyproj.CRS.from_wkt(crs.to_wkt())  # type: ignore[attr-defined]
        left, bottom, right, top = bounds
        cx, cy = (left + right) / 2, (bottom + top) / 2
        lon, lat = pyproj.Transformer.from_crs(source, "EPSG:4326", always_xy=True).transform(cx, cy)
        if not (np.isfinite(lon) and np.isfinite(lat)):
            log.warning("the raster CRS has no geographic position: area_m2 and perimeter_m are in its own units")
            return
        laea = pyproj.CRS.from_proj4(f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +ellps=WGS84 +units=m +no_defs")
        to_laea = pyproj.Transformer.from_crs(source, laea, always_xy=True)
        if source.is_projected:
            self._factor = float(source.axis_info[0].unit_conversion_factor)
            half = max(min(right - left, top - bottom) / 200, 1e-6)
            probe = shapely.box(cx - half, cy - half, cx + half, cy + half)
            native = probe.area * self._factor**2
            true = shapely.transform(probe, _projector(to_laea)).area
            if abs(native / true - 1) <= MAX_AREA_DISTORTION:
                return
        self._to_laea = to_laea
        self.method = "equal-area"

    def measure(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(area_m2, perimeter_m)`` of each geometry (perimeter includes hole boundaries)."""
        if self._to_laea is not None and len(geoms):
            geoms = shapely.transform(geoms, _projector(self._to_laea))
        return shapely.area(geoms) * self._factor**2, shapely.length(geoms) * self._factor

    def area(self, geoms: np.ndarray) -> np.ndarray:
        """Area of each geometry in square metres."""
        return self.measure(geoms)[0]


def _projector(transformer: pyproj.Transformer) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a pyproj transformer as a coordinate function for ``shapely.transform``."""

    def apply(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack((x, y))

    return apply
