"""Label sources for the tiler: colour-coded or class-index rasters, and vector polygons rasterized strip by strip."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from affine import Affine

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.labels.classes import IGNORE_INDEX, ClassScheme
from rs_deeplab.labels.decoding import decode_label

VECTOR_SUFFIXES = frozenset({".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite"})
"""File suffixes read as vector labels; anything else is opened as a raster."""


@dataclass(frozen=True)
class LabelSource:
    """Where a scene's labels come from; plain values only, so it can travel to Dask workers.

    Attributes:
        path: Label file.
        kind: ``raster`` (colour-coded or class-index raster on the scene grid), ``warp`` (a one-band class raster
            on another grid, reprojected per read with nearest neighbour) or ``vector`` (polygons).
        field: Vector attribute holding each polygon's class.
        mapping: Vector attribute value (as text) → class id, covering every value in the file.
        fill: Class id of pixels no polygon covers (vector labels only).
    """

    path: str
    kind: Literal["raster", "warp", "vector"] = "raster"
    field: str | None = None
    mapping: tuple[tuple[str, int], ...] = ()
    fill: int = IGNORE_INDEX


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` is read as vector labels (by its suffix)."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def check_label_raster(image: Any, label: Any, scheme: ClassScheme | None) -> None:
    """Refuse a label raster that does not lie pixel for pixel on its image.

    A label without any georeferencing (a PNG mask) is taken to be on the image's pixel grid when the sizes match.

    Args:
        image: Open rasterio dataset of the scene.
        label: Open rasterio dataset of the labels.
        scheme: Class scheme used to decode the labels, if any.

    Raises:
        RasterError: Size, CRS or transform differ, or the band count cannot be decoded.
    """
    where = f"labels {label.name} do not match scene {image.name}"
    if (label.height, label.width) != (image.height, image.width):
        raise RasterError(
            f"{where}: {label.width}×{label.height} pixels vs {image.width}×{image.height}; "
            "labels must cover the scene pixel for pixel"
        )
    georeferenced = label.crs is not None or not label.transform.is_identity
    if georeferenced and label.crs != image.crs:
        raise RasterError(f"{where}: CRS {label.crs} vs {image.crs}; reproject the labels onto the scene grid")
    if georeferenced and not label.transform.almost_equals(image.transform, precision=1e-9):
        raise RasterError(
            f"{where}: geotransform {tuple(label.transform)[:6]} vs {tuple(image.transform)[:6]}; "
            "resample the labels onto the scene grid"
        )
    if label.count == 2:
        raise RasterError(f"labels {label.name} have 2 bands; expected 1 (class ids) or 3 (colours)")
    if label.count >= 3 and scheme is None:
        raise InputError(f"labels {label.name} are colour-coded ({label.count} bands); pass --scheme NAME to decode")
    if label.count >= 3 and scheme is not None and scheme.name and scheme.encoding != "rgb":
        raise InputError(
            f"labels {label.name} are colour-coded ({label.count} bands) but --scheme {scheme.name} stores class "
            "values in one band; pass the scheme of these labels (potsdam, vaihingen and isaid are colour-coded)"
        )
    if np.dtype(label.dtypes[0]).kind == "c":
        raise RasterError(f"labels {label.name} hold complex numbers; expected class ids or colours")


def _value_key(value: Any) -> str:
    """Attribute value as mapping key text: ``3.0`` → ``"3"``."""
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def resolve_mapping(
    values: Sequence[Any],
    mapping: Mapping[str, int] | None,
    scheme: ClassScheme | None,
    *,
    where: str,
    auto: bool = False,
) -> tuple[tuple[str, int], ...]:
    """Map every attribute value of a vector label file to a class id.

    Order of lookup: the explicit ``mapping``; a class name of ``scheme``; a whole number 0..254 (255 = ignore).
    With ``auto`` (no mapping and no scheme), the remaining values (names) take the lowest free ids in sorted
    order; see :func:`auto_class_names` for the names that go with them.

    Raises:
        InputError: A value maps to nothing, or a mapped id is outside 0..255.
    """
    names = {name: i for i, name in enumerate(scheme.classes)} if scheme else {}
    resolved: dict[str, int] = {}
    unknown: list[str] = []
    for key in sorted({_value_key(v) for v in values if v is not None and v == v}):
        if mapping is not None and key in mapping:
            resolved[key] = int(mapping[key])
        elif key in names:
            resolved[key] = names[key]
        elif key.isdigit() and int(key) <= IGNORE_INDEX:
            resolved[key] = int(key)
        else:
            unknown.append(key)
    if unknown and auto:
        free = (i for i in range(IGNORE_INDEX) if i not in set(resolved.values()))
        for key in unknown:
            cid = next(free, None)
            if cid is None:
                raise InputError(f"{where}: more than 255 distinct values; map them with --label-map VALUE=ID")
            resolved[key] = cid
        unknown = []
    if unknown:
        hint = f"name the classes with --classes or map them with --label-map {unknown[0]}=ID"
        raise InputError(f"{where}: values {unknown[:5]} are neither class ids nor class names; {hint}")
    bad = {k: v for k, v in resolved.items() if not 0 <= v <= IGNORE_INDEX}
    if bad:
        raise InputError(f"{where}: class ids must be 0..255, got {bad}")
    return tuple(sorted(resolved.items()))


def auto_class_names(entries: Sequence[tuple[str, int]]) -> tuple[str, ...]:
    """Class names of ids ``0..max`` from an automatic mapping: the attribute value, or the id as text."""
    by_id = {cid: key for key, cid in entries if cid != IGNORE_INDEX}
    return tuple(by_id.get(i, str(i)) for i in range(max(by_id, default=-1) + 1))


def custom_scheme(names: Sequence[str]) -> ClassScheme:
    """A class scheme of the given names (ids ``0..n-1``, index-encoded) with a fixed, distinct colour each."""
    import colorsys

    colours = []
    for i in range(len(names)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return ClassScheme("", tuple(names), tuple(colours), "index")


def _missing(value: Any) -> bool:
    return value is None or value != value or (isinstance(value, str) and not value.strip())


def vector_values(path: str | Path, *, field: str | None, scene_crs: Any) -> list[Any]:
    """Check a vector label file and return its ``field`` values (reads the attribute column only).

    Raises:
        InputError: The file is unreadable, ``field`` is not given or not in the file, some features have no value
            in it, or the scene has no CRS to place georeferenced polygons on.
    """
    import pyogrio

    p: Any = str(path) if str(path).startswith("/vsi") else Path(path)  # a GDAL path (remote labels) stays text
    if isinstance(p, Path) and not p.exists():
        raise InputError(f"{p}: vector labels not found; check the path")
    try:
        info = pyogrio.read_info(p)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        hint = "pass a GeoPackage, GeoJSON or shapefile"
        raise InputError(f"{p}: not a vector file GDAL can read ({reason}); {hint}") from None
    fields = [str(f) for f in info["fields"]]
    if not field:
        raise InputError(f"{p}: vector labels need --label-field NAME naming the class attribute (one of {fields})")
    if field not in fields:
        raise InputError(f"{p}: no attribute {field!r}; choose --label-field from {fields}")
    if info["crs"] is not None and scene_crs is None:
        raise InputError(f"{p}: the scene has no CRS, so georeferenced polygons cannot be placed on it")
    try:
        table = pyogrio.read_dataframe(p, columns=[field], read_geometry=False, fid_as_index=True)
    except Exception as exc:  # pyogrio's DataSourceError/FieldError and GDAL read errors of a damaged file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        hint = "the file may be damaged: export it again"
        raise InputError(f"{p}: cannot read the features ({reason}); {hint}") from None
    missing = [fid for fid, v in zip(table.index, table[field], strict=True) if _missing(v)]
    if missing:
        raise InputError(
            f"{p}: {len(missing)} of {len(table)} features have no {field!r} value (fid {missing[:5]}); "
            "fill it in (e.g. in QGIS) or delete those features"
        )
    return list(table[field])


def rasterize_vector(
    source: LabelSource, crs: Any, transform: Affine, shape: tuple[int, int], *, all_touched: bool = False
) -> np.ndarray:
    """Burn the polygons of ``source`` touching a ``shape`` block at ``transform`` into uint8 class ids.

    Polygons are read with a bounding-box filter, reprojected to ``crs`` and burnt at pixel centres (every touched
    pixel with ``all_touched``); pixels no polygon covers get ``source.fill``. Later features overwrite earlier ones
    where they overlap.
    """
    import pyogrio
    from rasterio.features import rasterize
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    bounds = array_bounds(shape[0], shape[1], transform)
    info_crs = pyogrio.read_info(source.path)["crs"]
    bbox = transform_bounds(crs, info_crs, *bounds, densify_pts=21) if info_crs and crs else bounds
    frame = pyogrio.read_dataframe(source.path, columns=[source.field], bbox=tuple(bbox))
    out = np.full(shape, source.fill, dtype=np.uint8)
    if frame.empty:
        return out
    if info_crs and crs and frame.crs != crs:
        frame = frame.to_crs(crs)
    lookup = dict(source.mapping)
    shapes = [
        (geom, lookup[_value_key(value)])
        for geom, value in zip(frame.geometry, frame[source.field], strict=True)
        if geom is not None and not geom.is_empty and value is not None and value == value
    ]
    if shapes:
        rasterize(shapes, out=out, transform=transform, dtype=np.uint8, all_touched=all_touched)
    return out


def read_labels(
    source: LabelSource,
    src: Any,
    window: Any,
    scheme: ClassScheme | None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Class ids (uint8, 255 ignore) of ``window`` of the open scene ``src``, optionally decimated to ``out_shape``.

    Rasters on the scene grid are read as they are; ``warp`` rasters through a nearest-neighbour warp onto the
    pixels asked for only (those they do not cover are 255); polygons are rasterized (every touched pixel when
    decimated).
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from rs_deeplab.geo.raster import open_raster

    shape = out_shape or (int(window.height), int(window.width))
    scale = Affine.scale(window.width / shape[1], window.height / shape[0])
    transform = src.transform @ Affine.translation(window.col_off, window.row_off) @ scale
    if source.kind == "vector":
        return rasterize_vector(source, src.crs, transform, shape, all_touched=out_shape is not None)
    with open_raster(source.path) as lab:
        if source.kind == "raster":
            return decode_label(lab.read(window=window, out_shape=(lab.count, *shape)), scheme)
        grid = {"crs": src.crs, "transform": transform, "width": shape[1], "height": shape[0]}
        with WarpedVRT(lab, resampling=Resampling.nearest, add_alpha=True, **grid) as vrt:
            data = vrt.read(1)
            valid = vrt.read_masks(1) > 0
    return np.where(valid, decode_label(data[np.newaxis], scheme), np.uint8(IGNORE_INDEX)).astype(np.uint8)


CHECK_PIXELS = 512
"""Side of the decimated read that checks a scene's labels before anything is written."""
SCAN_ROWS = 1024
"""Rows read at a time when the decimated check found nothing and the full-resolution scan runs."""


def _why_all_ignore(source: LabelSource, src: Any) -> str:
    """The likely reason labels of scene ``src`` come out entirely 255, as a phrase."""
    from rasterio.coords import disjoint_bounds
    from rasterio.warp import transform_bounds

    from rs_deeplab.geo.raster import open_raster

    if source.kind == "vector":
        import pyogrio

        info = pyogrio.read_info(source.path)
        bounds, crs = info["total_bounds"], info["crs"]
        mapped = {cid for _, cid in source.mapping}
        if mapped <= {IGNORE_INDEX}:
            return f"every value of {source.field!r} maps to 255 (ignore); check --label-map"
    else:
        with open_raster(source.path) as lab:
            bounds, crs, dtype = lab.bounds, lab.crs, np.dtype(lab.dtypes[0])
        if dtype.kind == "f":
            return f"they hold {dtype.name} values, not whole class ids; write the labels as integers"
    if crs is not None and src.crs is not None:
        bounds = transform_bounds(crs, src.crs, *bounds, densify_pts=21)
    if disjoint_bounds(tuple(bounds), tuple(src.bounds)):
        return (
            f"they do not overlap the scene (labels span {tuple(round(b, 1) for b in bounds)}, the scene "
            f"{tuple(round(b, 1) for b in src.bounds)} in its CRS); pass the labels of this scene"
        )
    return "no pixel holds a class of the scheme; check --scheme, --classes or --label-map"


def check_label_coverage(source: LabelSource, src: Any, scheme: ClassScheme | None) -> None:
    """Stop before anything is written when the labels of the open scene ``src`` come out entirely ignore.

    A decimated read (at most ``CHECK_PIXELS`` a side) decides almost always; only when it finds nothing are
    raster labels scanned at full resolution (sparse labels), stopping at the first labelled pixel. With a custom
    scheme (``--classes``) raster values beyond its names are refused.

    Raises:
        InputError: Every label pixel of the scene is 255, or raster values have no class name.
    """
    from rasterio.windows import Window

    from rs_deeplab.geo.raster import open_raster

    h, w = src.height, src.width
    whole = Window(0, 0, w, h)
    small = (min(h, CHECK_PIXELS), min(w, CHECK_PIXELS))
    if scheme is not None and not scheme.name and source.kind != "vector":
        raw = np.unique(read_labels(source, src, whole, None, small))
        extra = [int(v) for v in raw if v != IGNORE_INDEX and v >= scheme.num_classes]
        if extra:
            raise InputError(
                f"{source.path}: label values {extra[:5]} have no name in --classes ({scheme.num_classes} names for "
                f"ids 0..{scheme.num_classes - 1}); give one name per class id"
            )
    labelled = bool((read_labels(source, src, whole, scheme, small) != IGNORE_INDEX).any())
    if not labelled and source.kind != "vector" and small != (h, w):
        for top in range(0, h, SCAN_ROWS):
            strip = Window(0, top, w, min(SCAN_ROWS, h - top))
            if (read_labels(source, src, strip, scheme) != IGNORE_INDEX).any():
                labelled = True
                break
    if not labelled:
        raise InputError(
            f"{source.path}: the labels of scene {src.name} are all 255 (ignore): {_why_all_ignore(source, src)}; "
            "nothing was written"
        )
    if source.kind == "raster":
        from rs_deeplab.tiling.checks import warn_outside_scheme

        with open_raster(source.path) as lab:
            raw = lab.read(out_shape=(lab.count, *small))
        warn_outside_scheme(source.path, raw, scheme, h * w)
