"""STAC Items as scenes: chosen single- or multi-band assets stacked into a local VRT that reads them remotely.

The VRT lies in a cache folder named after the Item and the assets; it is rewritten only when its content changes.
It records each asset's size and version (ETag, Last-Modified) as the server reports them, so a scene fingerprint
taken from the VRT file changes when an asset changes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.raster import atomic_output, open_raster
from rs_deeplab.geo.vrt import GDAL_TYPES
from rs_deeplab.remote.paths import gdal_path, is_remote, is_url, stat_remote

CACHE_ENV = "RS_DEEPLAB_STAC_CACHE"
"""Folder for the VRTs of STAC Items (default: ``<temp>/rs_deeplab-stac``)."""
RESAMPLING = "bilinear"
"""How coarser assets are brought to the finest asset's grid (the usual choice for 20 m bands at 10 m)."""


def is_stac_item(arg: str | os.PathLike[str]) -> bool:
    """Whether a scene argument names a STAC Item: a ``.json`` file or URL."""
    text = str(arg)
    path = urlsplit(text).path if is_url(text) else text
    return path.lower().endswith(".json")


@dataclass(frozen=True)
class Asset:
    """One asset as GDAL sees it."""

    name: str
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Any
    transform: Any
    nodata: float | None
    block: tuple[int, int]
    version: str


def read_item(href: str) -> Any:
    """Read a STAC Item with pystac.

    Raises:
        InputError: Not found, not JSON, or not a STAC Item.
        RasterError: A URL the server refuses (not found, access denied).
    """
    import pystac

    if not is_url(href) and not Path(href).exists():
        raise InputError(f"{href}: STAC Item not found; check the path")
    if is_url(href) and not href.lower().startswith("s3://"):
        stat_remote(href)  # 404, 403 or no answer: the server's problem in one line
    try:
        return pystac.Item.from_file(href)
    except Exception as exc:  # pystac raises urllib, JSON and STAC errors alike
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"{href}: not a STAC Item pystac can read ({first}); pass an Item's JSON") from None


def _asset(name: str, href: str) -> Asset:
    """Open one asset (checked with the server first when remote) and note its grid."""
    path = gdal_path(href)
    version = ""
    if is_remote(path):
        stat = stat_remote(path)
        version = f"{stat.size} {stat.etag or ''} {stat.modified or ''}".strip()
    with open_raster(path) as src:
        if len(set(src.dtypes)) > 1:
            raise RasterError(f"{href}: bands of different data types {src.dtypes}; convert to one type")
        return Asset(
            name,
            path,
            src.width,
            src.height,
            src.count,
            src.dtypes[0],
            src.crs,
            src.transform,
            src.nodata,
            tuple(src.block_shapes[0]),
            version,
        )


def choose_assets(item: Any, href: str, assets: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(name, absolute href)`` of the asked assets, in order.

    Raises:
        InputError: No assets asked, or the Item lacks some.
    """
    have = sorted(item.assets)
    if not assets:
        raise InputError(f"{href}: is a STAC Item; choose its bands with --assets (it has: {', '.join(have)})")
    missing = [a for a in assets if a not in item.assets]
    if missing:
        raise InputError(
            f"{href}: STAC Item {item.id!r} has no asset {', '.join(missing)} (it has: "
            f"{', '.join(have)}); pass --assets with names it has"
        )
    return [(a, item.assets[a].get_absolute_href() or item.assets[a].href) for a in assets]


def item_vrt(href: str, assets: Sequence[str] | None, folder: str | os.PathLike[str] | None = None) -> Path:
    """Stack the ``assets`` of the STAC Item at ``href`` into a VRT (one band per asset band, in order).

    Every asset must share one CRS; the VRT covers their union on the finest asset's pixel size, coarser assets
    resampled (:data:`RESAMPLING`). The VRT references remote assets through ``/vsicurl/`` (or ``/vsis3/``...).

    Args:
        href: The Item's JSON file or URL.
        assets: Asset names in band order.
        folder: Where to write the VRT (default: :data:`CACHE_ENV`, else a folder in the temporary directory).

    Returns:
        ``<folder>/<hash>/<item id>.vrt``, so output names derived from the scene are the Item's id.

    Raises:
        InputError: Not a readable Item, assets missing, or assets in different CRSs.
        RasterError: An asset cannot be read (not found, access denied, no Range support...).
    """
    item = read_item(href)
    chosen = [_asset(name, asset_href) for name, asset_href in choose_assets(item, href, assets)]
    crss = {str(a.crs) for a in chosen}
    if len(crss) > 1:
        raise InputError(
            f"{href}: assets {', '.join(a.name for a in chosen)} are in different CRSs; pick assets that share one"
        )
    text = vrt_xml(chosen)
    root = Path(folder or os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "rs_deeplab-stac")
    key = hashlib.sha1(f"{href}\n{','.join(a.name for a in chosen)}".encode()).hexdigest()[:16]
    target = root / key / f"{_safe(item.id)}.vrt"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_text() != text:
        with atomic_output(target) as tmp:
            tmp.write_text(text)
    return target


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "item"


def vrt_xml(assets: Sequence[Asset]) -> str:
    """The VRT of ``assets`` stacked on the finest grid covering them all."""
    xres = min(abs(a.transform.a) for a in assets)
    yres = min(abs(a.transform.e) for a in assets)
    bounds = [_bounds(a) for a in assets]
    left, top = min(b[0] for b in bounds), max(b[3] for b in bounds)
    width = round((max(b[2] for b in bounds) - left) / xres)
    height = round((top - min(b[1] for b in bounds)) / yres)
    dtype = np.result_type(*[np.dtype(a.dtype) for a in assets])
    gdal_type = GDAL_TYPES[dtype.name]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if assets[0].crs is not None:
        lines.append(f"  <SRS>{escape(assets[0].crs.to_wkt())}</SRS>")
    lines.append(f"  <GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {-yres!r}</GeoTransform>")
    lines.append("  <Metadata>")
    lines.extend(f"    <MDI key={quoteattr('asset_' + a.name)}>{escape(a.version)}</MDI>" for a in assets)
    lines.append("  </Metadata>")
    band = 0
    for a, (x0, _, _, y1) in zip(assets, bounds, strict=True):
        dst = (
            (x0 - left) / xres,
            (top - y1) / yres,
            a.width * abs(a.transform.a) / xres,
            a.height * abs(a.transform.e) / yres,
        )
        for source_band in range(1, a.count + 1):
            band += 1
            lines.extend(_band_xml(a, source_band, band, gdal_type, dst))
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def _band_xml(a: Asset, source_band: int, band: int, gdal_type: str, dst: tuple[float, ...]) -> list[str]:
    """One VRT band reading band ``source_band`` of asset ``a`` into the destination rectangle ``dst``."""
    description = a.name if a.count == 1 else f"{a.name}_{source_band}"
    nodata = [] if a.nodata is None else [f"    <NoDataValue>{a.nodata!r}</NoDataValue>"]
    props = (
        f'RasterXSize="{a.width}" RasterYSize="{a.height}" DataType="{GDAL_TYPES[a.dtype]}" '
        f'BlockXSize="{a.block[1]}" BlockYSize="{a.block[0]}"'
    )
    return [
        f'  <VRTRasterBand dataType="{gdal_type}" band="{band}">',
        f"    <Description>{escape(description)}</Description>",
        *nodata,
        f'    <ComplexSource resampling="{RESAMPLING}">',
        f'      <SourceFilename relativeToVRT="0">{escape(a.path)}</SourceFilename>',
        f"      <SourceBand>{source_band}</SourceBand>",
        f"      <SourceProperties {props}/>",
        f'      <SrcRect xOff="0" yOff="0" xSize="{a.width}" ySize="{a.height}"/>',
        '      <DstRect xOff="{:.10g}" yOff="{:.10g}" xSize="{:.10g}" ySize="{:.10g}"/>'.format(*dst),
        *([] if a.nodata is None else [f"      <NODATA>{a.nodata!r}</NODATA>"]),
        "    </ComplexSource>",
        "  </VRTRasterBand>",
    ]


def _bounds(a: Asset) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of a north-up asset."""
    t = a.transform
    if t.b or t.d:
        raise InputError(f"{a.path}: a rotated grid; STAC assets must be north-up to be stacked")
    x0, y0 = t.c, t.f
    x1, y1 = x0 + a.width * t.a, y0 + a.height * t.e
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
