"""The ``vectorize`` call: label raster → one polygon per connected region → GeoPackage/GeoJSON/GeoParquet."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from affine import Affine
from rasterio.windows import Window

from rs_deeplab.cli import progress
from rs_deeplab.errors import InputError, RasterError
from rs_deeplab.raster import PathLike, atomic_output, open_raster
from rs_deeplab.vectorize.clean import Cleaner, Rows, simplify_block
from rs_deeplab.vectorize.measure import AreaMeter
from rs_deeplab.vectorize.metadata import ClassSelection, read_class_names, select_classes
from rs_deeplab.vectorize.output import LayerWriter, output_format, parse_crs
from rs_deeplab.vectorize.polygonize import apply_affine, polygonize_block
from rs_deeplab.vectorize.seams import SeamMerger

log = logging.getLogger(__name__)

_CAST: dict[str, type[np.integer[Any]]] = {"int8": np.int16, "uint32": np.int32, "int64": np.int32, "uint64": np.int32}
"""Integer types ``shapes`` cannot read, and the type they are read as (values must fit)."""


@dataclass(frozen=True)
class VectorizeSummary:
    """What a :func:`vectorize` run wrote.

    Attributes:
        path: The output file.
        layer: The layer written.
        crs: CRS of the output geometries (``EPSG:…`` or WKT), None without one.
        polygons: Number of polygons written.
        counts: Polygons per class name.
        areas_m2: Total area per class name, square metres.
        blocks: Blocks read.
        merged: Polygons assembled from pieces cut by block seams.
        holes_filled: Interior rings removed by ``fill_holes``.
        absorbed: Polygons dropped because they lay inside a filled hole.
        dropped_small: Polygons dropped by ``min_area``.
        area_method: ``native`` (measured in the raster CRS) or ``equal-area`` (projected first).
        seconds: Wall time.
    """

    path: Path
    layer: str
    crs: str | None
    polygons: int
    counts: dict[str, int] = field(default_factory=dict)
    areas_m2: dict[str, float] = field(default_factory=dict)
    blocks: int = 0
    merged: int = 0
    holes_filled: int = 0
    absorbed: int = 0
    dropped_small: int = 0
    area_method: str = "native"
    seconds: float = 0.0


def block_windows(height: int, width: int, size: int) -> Iterator[tuple[int, int, Window]]:
    """Row-major ``(block_row, block_col, window)`` tiling of a raster; edge blocks are smaller."""
    for bi, row in enumerate(range(0, height, size)):
        for bj, col in enumerate(range(0, width, size)):
            yield bi, bj, Window(col, row, min(size, width - col), min(size, height - row))


def _check_arguments(min_area: float, simplify: float, fill_holes: float, block_size: int, layer: str) -> None:
    for name, value in (("min_area", min_area), ("simplify", simplify), ("fill_holes", fill_holes)):
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise InputError(f"block_size must be a positive integer number of pixels, got {block_size!r}")
    if not layer or not isinstance(layer, str):
        raise InputError(f"layer must be a non-empty name, got {layer!r}")


def _check_raster(src: Any, path: PathLike) -> None:
    if src.count != 1:
        raise RasterError(f"{path}: has {src.count} bands; expected a single-band class-label raster")
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind not in "ui":
        raise RasterError(
            f"{path}: is a {dtype.name} raster; expected integer class labels (uint8 as written by pipelines/infer.py)"
        )


def _read_block(src: Any, window: Window) -> np.ndarray:
    data = src.read(1, window=window)
    cast = _CAST.get(data.dtype.name)
    if cast is not None:
        info = np.iinfo(cast)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise RasterError(f"{src.name}: label values outside {info.min}..{info.max} cannot be polygonized")
        data = data.astype(cast)
    return data


@dataclass
class _BlockRun:
    """State shared by the blocks of one run."""

    transform: Affine
    n_rows: int
    n_cols: int
    selection: ClassSelection
    simplify: float
    block_size: int
    merger: SeamMerger = field(init=False)

    def __post_init__(self) -> None:
        self.merger = SeamMerger(self.block_size, validate=self.simplify > 0)

    def process(self, bi: int, bj: int, window: Window, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polygonize one block; return the class ids and CRS geometries of the regions now complete."""
        row, col = int(window.row_off), int(window.col_off)
        height, width = data.shape
        mask = None if self.simplify > 0 else self.selection.mask(data)
        flat = polygonize_block(data, row, col, mask)
        kept = self.selection.keeps_array(flat.values)
        internal = {"left": bj > 0, "right": bj < self.n_cols - 1, "top": bi > 0, "bottom": bi < self.n_rows - 1}
        owners: dict[str, np.ndarray] = {}
        is_open = np.zeros(len(flat), dtype=bool)
        for side, own in flat.side_owners(row, col, height, width).items():
            if internal[side]:
                valid = own >= 0
                valid[valid] = kept[own[valid]]
                owners[side] = np.where(valid, own, -1)
                is_open[own[valid]] = True
        closed = kept & ~is_open
        if self.simplify > 0:
            pixel = simplify_block(flat.polygons(), self.simplify)
            closed_geoms = shapely.transform(pixel[closed], self._to_crs)
            open_geoms = pixel[is_open]
        else:
            closed_geoms = flat.polygons(closed, self.transform)
            open_geoms = flat.polygons(is_open)
        remap = np.full(len(flat) + 1, -1, dtype=np.int64)
        remap[np.flatnonzero(is_open)] = np.arange(int(is_open.sum()))
        owners = {s: remap[o] for s, o in owners.items()}
        values, merged = self.merger.add_block(bj, open_geoms, flat.values[is_open], owners)
        if len(merged):
            merged = shapely.transform(merged, self._to_crs)
        return np.concatenate([flat.values[closed], values]), np.concatenate([closed_geoms, merged])

    def _to_crs(self, xy: np.ndarray) -> np.ndarray:
        return apply_affine(self.transform, xy)


def vectorize(
    raster_path: PathLike,
    out_path: PathLike,
    *,
    class_names: Sequence[str] | None = None,
    min_area: float = 0,
    simplify: float = 0,
    fill_holes: float = 0,
    classes: Iterable[str | int] | None = None,
    exclude: Iterable[str | int] | None = None,
    to_crs: Any = None,
    block_size: int = 2048,
    layer: str = "labels",
    extra_columns: Mapping[str, Any] | None = None,
    mode: Literal["w", "a"] = "w",
    quiet: bool = True,
) -> VectorizeSummary:
    """Turn a class-label raster into one polygon per connected region (4-connected, as ``shapes``).

    The raster is read in blocks of ``block_size``²; regions cut by block seams are merged back, so the output
    does not depend on the block size (without ``simplify``) and memory holds one block plus the regions that
    touch an unread block. Pixels equal to 255 or the raster's nodata are never polygonized. Each feature has
    ``class_id``, ``class_name``, ``area_m2`` and ``perimeter_m`` (true metres also for geographic CRSs).

    Args:
        raster_path: Single-band integer label raster (class ids, 255 = nodata).
        out_path: ``.gpkg``, ``.geojson``/``.json`` or ``.parquet`` (GeoParquet, needs pyarrow); written atomically.
        class_names: Class names in index order; default: the raster's ``CLASS_NAMES`` tag, else ``class_<id>``.
        min_area: Drop polygons smaller than this many square metres (after hole filling; leaves gaps).
        simplify: Coverage-preserving simplification tolerance in pixels (0: exact pixel edges).
        fill_holes: Remove holes smaller than this many square metres, with the polygons inside them.
        classes: Only these classes (names or ids).
        exclude: Leave out these classes (names or ids), e.g. ``["clutter"]``.
        to_crs: Reproject the output (``"EPSG:4326"``, WKT, ...); areas are still measured in metres.
        block_size: Block edge in pixels; a multiple of the raster's tile size reads fastest.
        layer: Output layer name (GeoPackage).
        extra_columns: Constant columns for every row, e.g. ``{"scene": "top_potsdam_2_13"}``.
        mode: ``w`` replaces ``out_path``; ``a`` appends rows to the layer of an existing GeoPackage (or creates
            it), e.g. one scene after another.
        quiet: No progress bar.

    Raises:
        InputError: Bad argument, unknown class name, unwritable output format or missing output folder.
        RasterError: The input is not a single-band integer raster.
    """
    start = time.perf_counter()
    _check_arguments(min_area, simplify, fill_holes, block_size, layer)
    if mode not in ("w", "a"):
        raise InputError(f"mode must be 'w' or 'a', got {mode!r}")
    out = Path(out_path)
    fmt = output_format(out, mode)
    target = None if to_crs is None else parse_crs(to_crs)
    with open_raster(raster_path) as src:
        _check_raster(src, raster_path)
        names = list(class_names) if class_names is not None else read_class_names(src) or []
        selection = select_classes(names, nodata=src.nodata, classes=classes, exclude=exclude)
        source = None if src.crs is None else parse_crs(src.crs, "raster CRS")
        meter = AreaMeter(src.crs, tuple(src.bounds))
        cleaner = Cleaner(meter, float(min_area), float(fill_holes))
        n_rows, n_cols = -(-src.height // block_size), -(-src.width // block_size)
        run = _BlockRun(src.transform, n_rows, n_cols, selection, float(simplify), block_size)
        counts: dict[int, int] = {}
        areas: dict[int, float] = {}
        with atomic_output(out) as tmp:
            writer = LayerWriter(
                tmp, fmt, layer, selection, source_crs=source, target_crs=target, extra_columns=extra_columns,
                append_to=out if mode == "a" else None,
            )  # fmt: skip
            blocks = block_windows(src.height, src.width, block_size)
            for bi, bj, window in progress(blocks, total=n_rows * n_cols, desc="vectorize", quiet=quiet):
                rows = cleaner.clean(*run.process(bi, bj, window, _read_block(src, window)))
                _tally(rows, counts, areas)
                writer.write(rows)
            rows = cleaner.finish()
            _tally(rows, counts, areas)
            writer.write(rows)
            written = writer.close()
    summary = VectorizeSummary(
        path=out,
        layer=layer,
        crs=writer.crs,
        polygons=written,
        counts={selection.name(k): v for k, v in sorted(counts.items())},
        areas_m2={selection.name(k): v for k, v in sorted(areas.items())},
        blocks=n_rows * n_cols,
        merged=run.merger.merged,
        holes_filled=cleaner.holes_filled,
        absorbed=cleaner.absorbed,
        dropped_small=cleaner.dropped_small,
        area_method=meter.method,
        seconds=time.perf_counter() - start,
    )
    log.info(
        "%s: %d polygons in layer %r (%d blocks, %d merged across seams)",
        out,
        written,
        layer,
        summary.blocks,
        summary.merged,
    )
    return summary


def _tally(rows: Rows, counts: dict[int, int], areas: dict[int, float]) -> None:
    if not len(rows):
        return
    ids, inverse = np.unique(rows.values, return_inverse=True)
    sums = np.bincount(inverse, weights=rows.area)
    for k, v, a in zip(ids.tolist(), np.bincount(inverse).tolist(), sums.tolist(), strict=True):
        counts[k] = counts.get(k, 0) + v
        areas[k] = areas.get(k, 0.0) + a
