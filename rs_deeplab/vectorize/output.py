"""Streaming polygon output: a GeoPackage layer written in batches, converted to GeoJSON/GeoParquet at the end."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.errors
import pyogrio.raw
import pyproj
import shapely

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import WARNINGS_LOCK, temporary_sibling
from rs_deeplab.vectorize.clean import Rows
from rs_deeplab.vectorize.metadata import ClassSelection

FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".parquet": "GeoParquet"}
"""Output formats by file extension."""

BASE_FIELDS = ("class_id", "class_name", "area_m2", "perimeter_m")
BATCH_ROWS = 50_000
BATCH_VERTICES = 2_000_000
"""Queued rows are written once either limit is reached, so the queue stays small whatever the output size."""


@contextlib.contextmanager
def no_crs_warning() -> Iterator[None]:
    """Silence pyogrio's "'crs' was not provided" warning for a raster without a CRS (said once, as an info line).

    Scoped to the block, one thread at a time (see :data:`rs_deeplab.geo.raster.WARNINGS_LOCK`).
    """
    with WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        yield


def output_format(path: Path, mode: str) -> str:
    """Return the output format for ``path`` or fail with one line naming what can be written.

    Raises:
        InputError: Unknown extension, GeoParquet without pyarrow, or appending to a format other than GPKG.
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise InputError(f"{path}: cannot write {path.suffix or 'files without an extension'!r}; use one of {known}")
    if fmt == "GeoParquet" and importlib.util.find_spec("pyarrow") is None:
        raise InputError(f"{path}: writing GeoParquet needs the pyarrow package (pip install pyarrow); or write .gpkg")
    if mode == "a" and fmt != "GPKG":
        raise InputError(f"{path}: appending is only supported for GeoPackage (.gpkg) output")
    return fmt


def parse_crs(value: Any, what: str = "to_crs") -> pyproj.CRS:
    """Parse a user CRS (``EPSG:4326``, WKT, PROJ string, rasterio CRS) or fail with one line."""
    try:
        return pyproj.CRS.from_user_input(value.to_wkt() if hasattr(value, "to_wkt") else value)
    except pyproj.exceptions.CRSError:
        raise InputError(f"{what}: cannot understand CRS {value!r}; pass e.g. EPSG:4326") from None


def crs_string(crs: pyproj.CRS) -> str:
    """``AUTHORITY:CODE`` when the CRS has one (so GeoPackages get a proper srs_id), else WKT."""
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


class LayerWriter:
    """Write polygon rows to one layer, in batches; the file is complete only after :meth:`close`.

    Args:
        path: Where to write (a temporary path handed out by ``atomic_output``).
        fmt: ``GPKG``, ``GeoJSON`` or ``GeoParquet``.
        layer: Layer name.
        selection: Gives the class name written for each class id.
        source_crs: CRS of the incoming geometries, or None.
        target_crs: CRS to reproject to, or None to keep the source CRS.
        extra_columns: Constant columns added to every row (e.g. ``{"scene": "top_potsdam_2_13"}``).
        computed_columns: Text columns computed per row from the geometries (source CRS), after the constant ones.
        append_to: An existing GeoPackage whose content is copied first, then appended to.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        layer: str,
        selection: ClassSelection,
        *,
        source_crs: pyproj.CRS | None,
        target_crs: pyproj.CRS | None = None,
        extra_columns: Mapping[str, Any] | None = None,
        computed_columns: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
        append_to: Path | None = None,
    ) -> None:
        self.path, self.fmt, self.layer, self._names = path, fmt, layer, selection
        self._gpkg = path if fmt == "GPKG" else temporary_sibling(path.with_suffix(".gpkg"))
        self._extra = _check_extra(extra_columns or {})
        self._computed = dict(computed_columns or {})
        _check_extra(dict.fromkeys(self._computed, ""))
        if set(self._computed) & set(self._extra):
            raise InputError(f"columns {sorted(set(self._computed) & set(self._extra))} given twice")
        out_crs = target_crs or source_crs
        self.crs = crs_string(out_crs) if out_crs is not None else None
        """Output CRS as ``AUTHORITY:CODE`` or WKT (None without a CRS)."""
        self._reproject = None
        if target_crs is not None and source_crs is not None and not target_crs.equals(source_crs):
            self._reproject = pyproj.Transformer.from_crs(source_crs, target_crs, always_xy=True)
        self._layer_exists = False
        self._buffer: list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]] = []
        self._buffered = 0
        self._vertices = 0
        self.written = 0
        if append_to is not None and append_to.exists():
            shutil.copyfile(append_to, self._gpkg)
            self._layer_exists = self._check_existing(append_to)

    def write(self, rows: Rows) -> None:
        """Queue rows (geometries in the source CRS); flushes every few tens of thousands of rows.

        The rows are made ready to write here (reprojected, WKB, columns), so a flush only writes: a caller
        that waits for more rows (worker processes) has done this work by the time the last rows come.
        """
        if len(rows):
            self._buffer.append(self._prepare(rows))
            self._buffered += len(rows)
            self._vertices += int(shapely.get_num_coordinates(rows.geoms).sum())
        if self._buffered >= BATCH_ROWS or self._vertices >= BATCH_VERTICES:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows."""
        if not self._buffer:
            return
        batches, self._buffer, self._buffered, self._vertices = self._buffer, [], 0, 0
        wkb = np.concatenate([b[0] for b in batches])
        base = [np.concatenate([b[1][k] for b in batches]) for k in range(len(BASE_FIELDS))]
        computed = [np.concatenate([b[2][k] for b in batches]) for k in range(len(self._computed))]
        self._write(wkb, base, computed)
        self.written += len(wkb)

    def _prepare(self, rows: Rows) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """WKB, base columns and computed columns of ``rows``."""
        geoms = self._to_target(rows)
        ids, inverse = np.unique(rows.values, return_inverse=True)
        names = np.array([self._names.name(int(v)) for v in ids], dtype=object)[inverse]
        computed = [np.asarray(fn(rows.geoms), dtype=object) for fn in self._computed.values()]
        return shapely.to_wkb(geoms), [rows.values.astype(np.int32), names, rows.area, rows.perimeter], computed

    def close(self) -> int:
        """Flush, create the layer even when empty, convert to the final format; return the rows written."""
        self.flush()
        if not self._layer_exists:
            empty = [np.empty(0, np.int32), np.empty(0, object), np.empty(0), np.empty(0)]
            self._write(np.empty(0, dtype=object), empty, [np.empty(0, object) for _ in self._computed])
        if self.fmt != "GPKG":
            try:
                self._convert()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self._gpkg.unlink()
        return self.written

    def _write(self, wkb: np.ndarray, base: list[np.ndarray], computed: list[np.ndarray]) -> None:
        n = len(wkb)
        extra = [np.full(n, v, dtype=object if isinstance(v, str) else None) for v in self._extra.values()]
        extra += computed
        with no_crs_warning():
            pyogrio.raw.write(
                self._gpkg,
                wkb,
                base + extra,
                fields=[*BASE_FIELDS, *self._extra, *self._computed],
                layer=self.layer,
                driver="GPKG",
                crs=self.crs,
                geometry_type="Polygon",
                append=self._layer_exists,
            )
        self._layer_exists = True

    def _to_target(self, rows: Rows) -> np.ndarray:
        geoms = rows.geoms
        if self._reproject is None:
            return geoms
        transformer = self._reproject

        def project(coords: np.ndarray) -> np.ndarray:
            return np.column_stack(transformer.transform(coords[:, 0], coords[:, 1]))

        geoms = shapely.transform(geoms, project)
        bad = ~shapely.is_valid(geoms)
        if bad.any():
            geoms = geoms.copy()
            geoms[bad] = [_largest_polygon(g) for g in shapely.make_valid(geoms[bad])]
        return geoms

    def _check_existing(self, path: Path) -> bool:
        """Whether the layer already exists in ``path``; fail if its columns or CRS do not match."""
        try:
            layers = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
        except pyogrio.errors.DataSourceError:
            raise InputError(f"{path}: cannot append, not a GeoPackage; pass another output or mode 'w'") from None
        if self.layer not in layers:
            return False
        info = pyogrio.read_info(path, layer=self.layer)
        missing = [f for f in (*BASE_FIELDS, *self._extra) if f not in list(info["fields"])]
        if missing:
            raise InputError(f"{path}: layer {self.layer!r} has no column(s) {', '.join(missing)}; use another layer")
        if self.crs is not None and info["crs"] and not pyproj.CRS(info["crs"]).equals(pyproj.CRS(self.crs)):
            raise InputError(f"{path}: layer {self.layer!r} is in {info['crs']}, not {self.crs}; pass to_crs to match")
        return True

    def _convert(self) -> None:
        if self.fmt == "GeoJSON":
            meta, _, geometry, field_data = pyogrio.raw.read(self._gpkg, layer=self.layer)
            with no_crs_warning():
                pyogrio.raw.write(
                    self.path,
                    geometry,
                    field_data,
                    fields=list(meta["fields"]),
                    layer=self.layer,
                    driver="GeoJSON",
                    crs=meta["crs"],
                    geometry_type="Polygon",
                )
        else:
            import geopandas

            with no_crs_warning():
                geopandas.read_file(self._gpkg, layer=self.layer).to_parquet(self.path)


def _largest_polygon(geom: shapely.Geometry) -> shapely.Geometry:
    """The largest polygon of a repaired geometry (reprojection can rarely pinch a ring)."""
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, shapely.Polygon)]
    return max(parts, key=lambda p: p.area) if parts else geom


def _check_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in extra.items():
        if name in BASE_FIELDS or not name.isidentifier():
            raise InputError(f"extra column {name!r} clashes with a built-in column or is not a plain name")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InputError(f"extra column {name!r} must be a string or a number, got {type(value).__name__}")
    return dict(extra)
