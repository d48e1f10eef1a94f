"""STAC catalog of a prediction run: one Item per predicted scene, one Collection for the run, every href relative.

Layout on disk, beside the outputs it describes (``x.gpkg`` → ``x.stac/``, see :func:`stac_folder`)::

    x_a.tif  x_a_probs.tif  x_b.tif  x.vrt  x.gpkg      outputs of the run (not moved, not copied)
    x.stac/collection.json                              the run: extent, item_assets, region assets (../x.vrt)
    x.stac/<item id>/<item id>.json                     one scene: labels (../../x_a.tif), probabilities

This is pystac's own layout for a self-contained catalog (``CatalogType.SELF_CONTAINED``: no self links, links
and asset hrefs relative), so ``pystac.Collection.from_file`` reads it back as written, and the folder holding
the outputs and ``x.stac/`` can be moved or copied as a whole. The only href that may point outside that folder
is each Item's ``derived_from`` link to its input scene: a URL as given, or a local path made relative (so it
still resolves when inputs and outputs move together; it is a link, not an asset, so the product is complete
without it).

An Item's ``datetime`` is the scene's acquisition time where its source records one: the ``TIFFTAG_DATETIME`` of
a local raster (``YYYY:MM:DD HH:MM:SS``, taken as UTC) or the ``datetime`` (else ``start_datetime``) of a local
STAC Item; otherwise (remote sources are not opened) it is the prediction time. ``rs_deeplab:datetime_source``
says which (``acquired`` or ``predicted``); ``created`` is always the prediction time. The geometry is the label
raster's four corners transformed to EPSG:4326 (no densified edges; a footprint across the antimeridian is not
split).

The catalog is built in a temporary folder beside ``x.stac`` and swapped in when complete, so readers see the old
catalog or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pystac
import rasterio
import rasterio.warp
from pystac.utils import str_to_datetime
from rasterio.errors import RasterioError

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import is_vsi, open_raster, temporary_sibling
from rs_deeplab.labels.class_names import class_name
from rs_deeplab.labels.classes import IGNORE_INDEX
from rs_deeplab.remote.scenes import is_url

PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
GEOTIFF = "image/tiff; application=geotiff"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
VRT = "application/x-vrt"
"""No registered media type exists for GDAL VRT; ``application/x-vrt`` is what STAC producers write."""
GEOPACKAGE = "application/geopackage+sqlite3"
COLLECTION_FILE = "collection.json"
TIFF_DATETIME = "%Y:%m:%d %H:%M:%S"


@dataclass(frozen=True)
class SceneAssets:
    """The outputs of one predicted scene: one STAC Item."""

    name: str
    """Item id: the scene's output name (unique in the run, e.g. ``north_tile``)."""
    labels: Path
    """uint8 class raster (255 = nodata)."""
    probabilities: Path | None = None
    """uint8 0-255 raster, one band per class."""
    source: Path | str | None = None
    """The input scene as the user named it: a local path (raster or STAC Item JSON) or a URL."""
    acquired: datetime | None = None
    """Acquisition time when the caller knows it (overrides what the source records)."""


@dataclass(frozen=True)
class RegionAssets:
    """Outputs of the whole run, on the Collection."""

    mosaic_vrt: Path | None = None
    mosaic_tif: Path | None = None
    polygons: Path | None = None
    """GeoPackage with layer ``labels``."""


def stac_folder(out: Path) -> Path:
    """The catalog folder of a run writing ``out`` (``x.gpkg`` or ``x.tif``): ``x.stac`` beside it."""
    return out.with_name(f"{out.stem}.stac")


def package_version() -> str:
    """rs_deeplab's installed version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return version("rs_deeplab")
    except PackageNotFoundError:
        return "0+unknown"


def media_type(src: Any) -> str:
    """STAC media type of an open raster: VRT, Cloud-Optimized GeoTIFF (GDAL's ``LAYOUT=COG``) or GeoTIFF.

    GDAL 3.1+ reports ``LAYOUT=COG`` for files with the COG header; older GDAL is trusted on tiles + overviews.
    """
    if src.driver == "VRT":
        return VRT
    layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
    if layout is not None:
        return COG if layout.upper() == "COG" else GEOTIFF
    old_gdal = tuple(int(p) for p in rasterio.__gdal_version__.split(".")[:2]) < (3, 1)
    tiled = src.block_shapes[0][1] < src.width
    return COG if old_gdal and tiled and src.overviews(1) else GEOTIFF


def _footprint(src: Any, path: Path) -> tuple[list[list[float]], list[float]]:
    """Corners of a raster in EPSG:4326 as a closed counter-clockwise ring, and their bbox."""
    if src.crs is None:
        raise InputError(f"{path}: raster has no CRS; a STAC Item needs its footprint in EPSG:4326")
    cols, rows = [0, 0, src.width, src.width], [0, src.height, src.height, 0]
    xs, ys = zip(*(src.transform @ (c, r) for c, r in zip(cols, rows, strict=True)), strict=True)
    lons, lats = rasterio.warp.transform(src.crs, "EPSG:4326", list(xs), list(ys))
    ring = [[float(x), float(y)] for x, y in zip(lons, lats, strict=True)]
    area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1], strict=True))
    if area2 < 0:  # a south-up or mirrored grid: GeoJSON wants exterior rings counter-clockwise
        ring.reverse()
    bbox = [min(lons), min(lats), max(lons), max(lats)]
    return [*ring, ring[0]], [float(v) for v in bbox]


def _projection(src: Any) -> dict[str, Any]:
    """Projection extension v2 fields of an open raster."""
    epsg = src.crs.to_epsg() if src.crs is not None else None
    fields: dict[str, Any] = {"proj:code": f"EPSG:{epsg}" if epsg else None}
    if not epsg and src.crs is not None:
        fields["proj:wkt2"] = src.crs.to_wkt()
    fields["proj:shape"] = [src.height, src.width]
    fields["proj:transform"] = [float(v) for v in tuple(src.transform)[:6]]
    return fields


def classification_classes(
    class_names: Sequence[str], colours: Mapping[int, Sequence[int]] | None, nodata: int = IGNORE_INDEX
) -> list[dict[str, Any]]:
    """``classification:classes`` (extension v2): one entry per class, plus ``nodata`` flagged.

    ``name`` is the class name made machine-readable (v2 allows letters, digits, ``-`` and ``_``), ``title`` the
    name as written in the raster's ``CLASS_NAMES``; ``color_hint`` is ``RRGGBB`` where ``colours`` has the class.
    """
    classes = []
    for value in [*range(len(class_names)), nodata]:
        title = class_name(class_names, value) if value != nodata else "no data"
        entry: dict[str, Any] = {"value": value, "name": re.sub(r"[^0-9A-Za-z_-]+", "_", title), "title": title}
        if colours is not None and value in colours:
            entry["color_hint"] = "".join(f"{int(c):02X}" for c in colours[value][:3])
        if value == nodata:
            entry["name"], entry["nodata"] = "nodata", True
        classes.append(entry)
    return classes


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _raster_asset(path: Path, start: Path, title: str, extra: dict[str, Any]) -> pystac.Asset:
    with open_raster(path) as src:
        kind = media_type(src)
    return pystac.Asset(_relative(path, start), title=title, media_type=kind, roles=["data"], extra_fields=extra)


def _acquired(scene: SceneAssets) -> datetime | None:
    """The acquisition time the scene's local source records, if any (module docstring)."""
    if scene.acquired is not None:
        return scene.acquired if scene.acquired.tzinfo else scene.acquired.replace(tzinfo=UTC)
    src = scene.source
    if src is None or is_url(src) or is_vsi(src) or not Path(src).is_file():
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError, OSError, RasterioError):
        if Path(src).suffix.lower() == ".json":
            props = json.loads(Path(src).read_text(encoding="utf-8"))["properties"]
            return str_to_datetime(props.get("datetime") or props["start_datetime"])
        with rasterio.open(src) as ds:
            return datetime.strptime(ds.tags()["TIFFTAG_DATETIME"], TIFF_DATETIME).replace(tzinfo=UTC)
    return None


def _source_link(source: Path | str, start: Path) -> pystac.Link:
    text = str(source)
    href = text if is_url(text) or is_vsi(text) else _relative(Path(text), start)
    kind = "application/geo+json" if href.lower().endswith(".json") else None
    if href.lower().endswith((".tif", ".tiff")):
        kind = GEOTIFF
    return pystac.Link("derived_from", href, media_type=kind, title="input scene")


def _item(
    scene: SceneAssets,
    folder: Path,
    names: Sequence[str],
    colours: Mapping[int, Sequence[int]] | None,
    properties: dict[str, Any],
    predicted: datetime,
) -> pystac.Item:
    """One scene's Item; asset hrefs relative to where it will lie (``folder/<id>/``)."""
    start = folder / scene.name
    with open_raster(scene.labels) as src:
        geometry, bbox = _footprint(src, scene.labels)
        proj = _projection(src)
        nodata = int(src.nodata) if src.nodata is not None else IGNORE_INDEX
    acquired = _acquired(scene)
    props = {**properties, **proj, "rs_deeplab:datetime_source": "acquired" if acquired else "predicted"}
    schemas = [PROJECTION_SCHEMA, CLASSIFICATION_SCHEMA, PROCESSING_SCHEMA]
    polygon = {"type": "Polygon", "coordinates": [geometry]}
    item = pystac.Item(scene.name, polygon, bbox, acquired or predicted, props, stac_extensions=schemas)
    item.common_metadata.created = predicted
    label_fields = {
        "data_type": "uint8",
        "nodata": nodata,
        "classification:classes": classification_classes(names, colours, nodata),
    }
    item.add_asset("labels", _raster_asset(scene.labels, start, "class labels", label_fields))
    if scene.probabilities is not None:
        with open_raster(scene.probabilities) as src:
            count = src.count
        bands = [
            {
                "name": class_name(names, i),
                "description": f"probability of {class_name(names, i)} (0-255)",
                "data_type": "uint8",
            }
            for i in range(count)
        ]
        item.add_asset(
            "probabilities", _raster_asset(scene.probabilities, start, "class probabilities", {"bands": bands})
        )
    if scene.source is not None:
        item.add_link(_source_link(scene.source, start))
    return item


def _region_assets(region: RegionAssets, folder: Path, classes: list[dict[str, Any]]) -> dict[str, pystac.Asset]:
    assets = {}
    for key, path in (("mosaic_vrt", region.mosaic_vrt), ("mosaic_tif", region.mosaic_tif)):
        if path is not None:
            with open_raster(path) as src:
                proj = _projection(src)
            extra = {**proj, "data_type": "uint8", "nodata": IGNORE_INDEX, "classification:classes": classes}
            assets[key] = _raster_asset(path, folder, "mosaic of the class labels", extra)
    if region.polygons is not None:
        assets["polygons"] = pystac.Asset(
            _relative(region.polygons, folder),
            title="class polygons (layer labels)",
            media_type=GEOPACKAGE,
            roles=["data"],
        )
    return assets


def check_catalog(folder: Path) -> None:
    """Refuse a catalog folder that cannot be written (before a run's work): missing parent, or not a catalog.

    Raises:
        InputError: The folder's parent is missing, or ``folder`` exists and is no earlier catalog.
    """
    if not folder.parent.is_dir():
        raise InputError(f"{folder}: output folder {folder.parent} does not exist; create it first")
    if folder.exists() and not (folder / COLLECTION_FILE).is_file():
        raise InputError(f"{folder}: exists and holds no {COLLECTION_FILE}; remove it or choose another output")


def _check(folder: Path, scenes: Sequence[SceneAssets], region: RegionAssets | None, collection_id: str) -> None:
    check_catalog(folder)
    if not collection_id.strip() or not scenes:
        raise InputError(f"{folder}: a STAC collection needs an id and at least one scene")
    ids = Counter(s.name for s in scenes)
    for name in ids:
        if not name or name.startswith(".") or re.search(r"[/\\]", name) or ids[name] > 1:
            raise InputError(
                f"{folder}: scene name {name!r} cannot be an Item id (empty, hidden, a path or a "
                "repeat); give each scene a unique file-name-like name"
            )
    paths = [p for s in scenes for p in (s.labels, s.probabilities) if p is not None]
    if region is not None:
        paths += [p for p in (region.mosaic_vrt, region.mosaic_tif, region.polygons) if p is not None]
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: output to catalog not found; write it before the STAC catalog")
        if path.resolve().is_relative_to(folder.resolve()):
            raise InputError(f"{path}: lies inside the catalog folder {folder}, which is replaced; keep it outside")


@contextlib.contextmanager
def _swapped_in(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; put it in ``folder``'s place when the block succeeds."""
    tmp = temporary_sibling(folder)
    old = temporary_sibling(folder)
    tmp.mkdir()
    try:
        yield tmp
        moved = folder.exists()
        if moved:
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if moved:
                os.replace(old, folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_stac(
    folder: Path,
    scenes: Sequence[SceneAssets],
    region: RegionAssets | None = None,
    *,
    class_names: Sequence[str],
    colours: Mapping[int, Sequence[int]] | None,
    model: str,
    collection_id: str,
    description: str | None = None,
    predicted: datetime | None = None,
) -> Path:
    """Write the STAC Collection of a prediction run and one Item per scene (layout: module docstring).

    Args:
        folder: The catalog folder, normally :func:`stac_folder` of the run's output; replaced when it holds an
            earlier catalog.
        scenes: The predicted scenes, in the order their Items are linked.
        region: The run's mosaic and polygons, as Collection assets.
        class_names: Class names in index order (the rasters' ``CLASS_NAMES``).
        colours: Class colours ``{value: (r, g, b[, a])}`` (the rasters' colour table), or None.
        model: The model's name, recorded as ``rs_deeplab:model``.
        collection_id: The Collection's id.
        description: The Collection's description (default: names the model and the scene count).
        predicted: The prediction time (default: now, UTC).

    Returns:
        The path of ``collection.json``.

    Raises:
        InputError: An output is missing or has no CRS, a scene name is no valid Item id, or ``folder`` is taken.
    """
    _check(folder, scenes, region, collection_id)
    when = predicted or datetime.now(UTC)
    properties = {"rs_deeplab:model": model, "processing:software": {"rs_deeplab": package_version()}}
    items = [_item(s, folder, class_names, colours, properties, when) for s in scenes]
    times = [i.datetime for i in items if i.datetime is not None]
    bbox = [min(i.bbox[k] for i in items if i.bbox) for k in (0, 1)]
    bbox += [max(i.bbox[k] for i in items if i.bbox) for k in (2, 3)]
    extent = pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[min(times), max(times)]]))
    text = description or f"Predictions of {model} for {len(items)} scene(s), written by rs_deeplab."
    collection = pystac.Collection(
        collection_id, text, extent, license="other", stac_extensions=[CLASSIFICATION_SCHEMA, PROJECTION_SCHEMA]
    )
    first = items[0].assets["labels"].to_dict()
    classes = first["classification:classes"]
    defs = {"labels": {k: v for k, v in first.items() if k != "href"}}
    with_probs = next((i for i in items if "probabilities" in i.assets), None)
    if with_probs is not None:
        defs["probabilities"] = {k: v for k, v in with_probs.assets["probabilities"].to_dict().items() if k != "href"}
    collection.item_assets = {k: pystac.ItemAssetDefinition(v) for k, v in defs.items()}
    for key, asset in _region_assets(region or RegionAssets(), folder, classes).items():
        collection.add_asset(key, asset)
    collection.add_items(items)
    with _swapped_in(folder) as tmp:
        collection.normalize_hrefs(str(tmp / COLLECTION_FILE))
        collection.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / COLLECTION_FILE
