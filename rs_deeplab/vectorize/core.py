"""The ``vectorize`` call: label raster → one polygon per connected region → GeoPackage/GeoJSON/GeoParquet."""

from __future__ import annotations

import contextlib
import logging
import numbers
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyogrio.errors

from rs_deeplab.cli.errors import InputError, RasterError, RsDeeplabError
from rs_deeplab.cli.locks import output_lock
from rs_deeplab.cli.outputs import check_output_file
from rs_deeplab.geo.raster import PathLike, atomic_output, check_complete, open_raster, short_message, small_block_cache
from rs_deeplab.vectorize.blocks import RegionStream
from rs_deeplab.vectorize.clean import Cleaner, Rows
from rs_deeplab.vectorize.measure import AreaMeter
from rs_deeplab.vectorize.metadata import read_class_names, select_classes
from rs_deeplab.vectorize.output import LayerWriter, output_format, parse_crs
from rs_deeplab.vectorize.parallel import check_workers, resolve_workers

log = logging.getLogger(__name__)


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
        workers: Processes that polygonized blocks (1: this process alone).
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
    workers: int = 1


def _check_arguments(min_area: float, simplify: float, fill_holes: float, block_size: int, layer: str) -> None:
    for name, value in (("min_area", min_area), ("simplify", simplify), ("fill_holes", fill_holes)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(block_size, numbers.Integral) or isinstance(block_size, bool) or block_size < 1:
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
    computed_columns: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    mode: Literal["w", "a"] = "w",
    quiet: bool = True,
    workers: int | None = None,
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
        computed_columns: Text columns computed for each batch of finished polygons: ``name → f(geometries)``,
            the geometries (shapely, in the raster's CRS) as a numpy array, one value per polygon back.
        mode: ``w`` replaces ``out_path``; ``a`` appends rows to the layer of an existing GeoPackage (or creates
            it), e.g. one scene after another.
        quiet: No progress bar.
        workers: Processes that read and polygonize blocks while this one merges seams and writes; 1 runs in
            this process; None: the cores this process may use (affinity-aware), one for rasters under ~8 Mpx.
            The output is byte for byte the same for any number.

    Raises:
        InputError: Bad argument (``workers`` below 1 too), unknown class name, unwritable output format or
            missing output folder;
            :class:`~rs_deeplab.cli.locks.OutputBusyError` when another run writes ``out_path``.
        RasterError: The input is not a single-band integer raster, or a worker process died.
    """
    start = time.perf_counter()
    _check_arguments(min_area, simplify, fill_holes, block_size, layer)
    check_workers(workers)
    if mode not in ("w", "a"):
        raise InputError(f"mode must be 'w' or 'a', got {mode!r}")
    out = Path(out_path)
    fmt = output_format(out, mode)
    check_output_file(out, what=f"output {out}", kind=fmt if mode == "w" else None, inputs=[raster_path])
    target = None if to_crs is None else parse_crs(to_crs)
    # one run per output (its lock, rs_deeplab.cli.locks): a second one stops here, before it reads the raster
    with output_lock(out), small_block_cache(), open_raster(raster_path) as src:
        _check_raster(src, raster_path)
        check_complete(src, raster_path)
        names = list(class_names) if class_names is not None else read_class_names(src) or []
        selection = select_classes(names, nodata=src.nodata, classes=classes, exclude=exclude)
        source = None if src.crs is None else parse_crs(src.crs, "raster CRS")
        meter = AreaMeter(src.crs, tuple(src.bounds))
        cleaner = Cleaner(meter, float(min_area), float(fill_holes))
        n_blocks = -(-src.height // int(block_size)) * -(-src.width // int(block_size))
        procs = resolve_workers(workers, pixels=src.height * src.width, blocks=n_blocks)
        regions = RegionStream(
            src, selection, block_size=int(block_size), simplify=float(simplify), quiet=quiet, workers=procs
        )
        with _write_errors(out), atomic_output(out) as tmp:  # lack of space: atomic_output's one line
            writer = LayerWriter(
                tmp,
                fmt,
                layer,
                selection,
                source_crs=source,
                target_crs=target,
                extra_columns=extra_columns,
                computed_columns=computed_columns,
                append_to=out if mode == "a" else None,
            )
            counts, areas = _write_all(regions, cleaner, writer)
    summary = VectorizeSummary(
        path=out,
        layer=layer,
        crs=writer.crs,
        polygons=writer.written,
        counts={selection.name(k): v for k, v in sorted(counts.items())},
        areas_m2={selection.name(k): v for k, v in sorted(areas.items())},
        blocks=regions.blocks,
        merged=regions.merger.merged,
        holes_filled=cleaner.holes_filled,
        absorbed=cleaner.absorbed,
        dropped_small=cleaner.dropped_small,
        area_method=meter.method,
        seconds=time.perf_counter() - start,
        workers=procs,
    )
    log.debug(
        "%s: %d polygons in layer %r (%d blocks, %d merged across seams)",
        out,
        summary.polygons,
        layer,
        summary.blocks,
        summary.merged,
    )
    return summary


@contextlib.contextmanager
def _write_errors(out: Path) -> Iterator[None]:
    """A file the output driver cannot create or write (folder removed, ...) as one line naming ``out``."""
    try:
        yield
    except (pyogrio.errors.DataSourceError, OSError) as exc:
        if isinstance(exc, RsDeeplabError):
            raise
        raise RasterError(
            f"{out}: cannot be written ({short_message(str(exc))}); check the folder and the disk"
        ) from None


def _write_all(regions: RegionStream, cleaner: Cleaner, writer: LayerWriter) -> tuple[dict[int, int], dict[int, float]]:
    """Clean and write every region; return polygon counts and areas per class id."""
    counts: dict[int, int] = {}
    areas: dict[int, float] = {}
    regions.on_drain = writer.flush  # the rows so far go to disk while workers polygonize the last blocks
    for values, geoms in regions:
        rows = cleaner.clean(values, geoms)
        _tally(rows, counts, areas)
        writer.write(rows)
    rows = cleaner.finish()
    _tally(rows, counts, areas)
    writer.write(rows)
    writer.close()
    return counts, areas


def _tally(rows: Rows, counts: dict[int, int], areas: dict[int, float]) -> None:
    if not len(rows):
        return
    ids, inverse = np.unique(rows.values, return_inverse=True)
    sums = np.bincount(inverse, weights=rows.area)
    for k, v, a in zip(ids.tolist(), np.bincount(inverse).tolist(), sums.tolist(), strict=True):
        counts[k] = counts.get(k, 0) + v
        areas[k] = areas.get(k, 0.0) + a
