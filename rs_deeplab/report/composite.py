"""The scene composite of a region: one GDAL VRT of all the region's scenes on its mosaic's grid, for the page.

The prediction page draws a scene composite under the class layer, pixel on pixel (:mod:`rs_deeplab.report.tiles`
reads one raster). For a mosaic of several scenes that raster is :func:`write_composite`'s VRT: the label mosaic's
CRS, transform and size, and every scene band by band in the first scene's band order. A scene on the grid (same
CRS and pixel size, origin on a whole pixel) is read as it is; any other (another CRS, or another pixel size) is
warped (nearest neighbour) onto its bounding window of the grid through a warped VRT beside the composite. Pixels
are drawn as the label mosaic draws them (:mod:`rs_deeplab.geo.mosaic`): every scene whole in the order given, then each
scene's owned rectangles on top, each source's own mask (nodata, alpha, outside a warped scene) transparent, so a
pixel shows the scene its class came from. The composite's mask band is the union of the scenes' masks: what no
scene covers is transparent on the page. Everything written is small XML: sources are named by absolute path (a
remote scene by its GDAL network path, also listed in the VRT's metadata, so
:func:`rs_deeplab.remote.scenes.reads_remote` reads the composite with the project's remote settings).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.mosaic import RegionGrid, Scene
from rs_deeplab.geo.ownership import Rect
from rs_deeplab.geo.vrt import GDAL_TYPES, vrt_root
from rs_deeplab.remote.scenes import gdal_path, is_remote
from rs_deeplab.report.tiles import reading


@dataclass(frozen=True)
class _Layer:
    """One scene as the composite reads it: the raster (the scene or its warped VRT) and where it lies."""

    path: str
    size: tuple[int, int]
    block: tuple[int, int]
    dtype: str
    footprint: Rect


def write_composite(
    scenes: Sequence[str | Path], grid: RegionGrid, owned: Sequence[Sequence[Rect]], folder: Path
) -> Path:
    """Write ``folder/composite.vrt``: the scenes on ``grid`` (module description) and return its path.

    Args:
        scenes: The region's scenes, in the mosaic's order (local paths, URLs or GDAL paths).
        grid: The label mosaic's grid.
        owned: Per scene, the region-pixel rectangles ``(row0, row1, col0, col1)`` it owns in the label mosaic.
        folder: An existing folder for the VRTs (a temporary one: the VRTs name their sources by absolute path).

    Raises:
        InputError: The scenes have different band counts.
        RasterError: A scene cannot be opened.
    """
    layers: list[_Layer | None] = []
    count, interp, dtype = 0, [ColorInterp.undefined], np.dtype("uint8")
    for i, scene in enumerate(scenes):
        source = str(Path(scene).absolute()) if not is_remote(scene) else gdal_path(scene)
        with reading(source) as ds:
            if i == 0:
                count, interp = ds.count, list(ds.colorinterp)
            elif ds.count != count:
                raise InputError(f"{scene}: {ds.count} band(s), but {scenes[0]} has {count}")
            dtype = np.promote_types(dtype, np.dtype(ds.dtypes[0]))
            layers.append(_layer(ds, source, grid, folder / f"{i:03d}_warped.vrt"))
    root = vrt_root(grid.width, grid.height, grid.crs.to_wkt(), grid.transform)
    meta = ET.SubElement(root, "Metadata")
    for i, scene in enumerate(scenes, start=1):  # a remote scene's path here makes reads_remote() see it
        ET.SubElement(meta, "MDI", key=f"SCENE_{i}").text = gdal_path(scene) if is_remote(scene) else str(scene)
    order = _drawing_order(layers, owned)
    gdal_type = GDAL_TYPES.get(dtype.name, "Float64")
    for band in range(1, count + 1):
        node = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(band))
        colour = interp[band - 1] if band <= len(interp) else ColorInterp.undefined
        if colour in (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.gray):
            ET.SubElement(node, "ColorInterp").text = colour.name.capitalize()
        for layer, box in order:
            _source(node, layer, str(band), box)
    mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
    for layer, box in order:
        _source(mask, layer, "mask,1", box)
    ET.indent(root)
    out = folder / "composite.vrt"
    out.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
    return out


def _layer(ds: rasterio.io.DatasetReader, source: str, grid: RegionGrid, warped: Path) -> _Layer | None:
    """The open scene ``ds`` on the grid: itself where it lies on it, else a warped VRT of its window (or None)."""
    rows, cols = ds.block_shapes[0]
    scene = Scene(
        Path(source), ds.crs, ds.transform, ds.width, ds.height, ds.count, tuple(ds.dtypes), (int(cols), int(rows))
    )
    on_grid = grid.footprint(scene)
    if on_grid is not None:
        return _Layer(source, (ds.width, ds.height), scene.block, ds.dtypes[0], on_grid)
    r0, r1, c0, c1 = window = grid.window(scene.bounds(grid.crs))
    if r1 <= r0 or c1 <= c0:
        return None
    transform = grid.transform @ Affine.translation(c0, r0)
    with WarpedVRT(
        ds,
        crs=grid.crs,
        transform=transform,
        width=c1 - c0,
        height=r1 - r0,
        resampling=Resampling.nearest,
        add_alpha=True,
    ) as vrt:
        rasterio.shutil.copy(vrt, warped, driver="VRT")
    # GDAL takes an alpha band for the mask of a 2- or 4-band raster only: a plain VRT over the warped one names
    # its alpha band (after the scene's bands) as its mask, whatever the band count
    size = (c1 - c0, r1 - r0)
    inner = _Layer(str(warped), size, size, ds.dtypes[0], (0, size[1], 0, size[0]))
    root = vrt_root(size[0], size[1], grid.crs.to_wkt(), transform)
    for band in range(1, ds.count + 1):
        node = ET.SubElement(root, "VRTRasterBand", dataType=GDAL_TYPES.get(ds.dtypes[0], "Float64"), band=str(band))
        _source(node, inner, str(band), inner.footprint, masked=False)
    mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
    _source(mask, inner, str(ds.count + 1), inner.footprint, masked=False)
    masked = warped.with_name(f"{warped.stem}_masked.vrt")
    ET.indent(root)
    masked.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
    return _Layer(str(masked), size, size, ds.dtypes[0], window)


def _drawing_order(layers: Sequence[_Layer | None], owned: Sequence[Sequence[Rect]]) -> list[tuple[_Layer, Rect]]:
    """Each scene whole, in order, then its owned rectangles (clipped to its footprint) on top."""
    whole = [(layer, layer.footprint) for layer in layers if layer is not None]
    tops = []
    for layer, rects in zip(layers, owned, strict=True):
        if layer is None:
            continue
        f0, f1, g0, g1 = layer.footprint
        for r0, r1, c0, c1 in rects:
            box = (max(r0, f0), min(r1, f1), max(c0, g0), min(c1, g1))
            if box[1] > box[0] and box[3] > box[2]:
                tops.append((layer, box))
    return whole + tops


def _source(parent: ET.Element, layer: _Layer, band: str, box: Rect, *, masked: bool = True) -> None:
    """A source drawing ``box`` (region pixels) of ``layer``'s ``band`` (``mask,1``: its mask); ``masked``: the
    source's masked pixels are transparent (they leave what is drawn below).
    """  # noqa: D205
    node = ET.SubElement(parent, "ComplexSource" if masked else "SimpleSource")
    ET.SubElement(node, "SourceFilename", relativeToVRT="0").text = layer.path
    ET.SubElement(node, "SourceBand").text = band
    if masked and band != "mask,1":  # GDAL need not open the scene until it draws from it
        ET.SubElement(
            node,
            "SourceProperties",
            RasterXSize=str(layer.size[0]),
            RasterYSize=str(layer.size[1]),
            DataType=GDAL_TYPES.get(layer.dtype, "Float64"),
            BlockXSize=str(layer.block[0]),
            BlockYSize=str(layer.block[1]),
        )
    r0, r1, c0, c1 = box
    f0, _, g0, _ = layer.footprint
    for tag, (x, y) in (("SrcRect", (c0 - g0, r0 - f0)), ("DstRect", (c0, r0))):
        ET.SubElement(node, tag, xOff=str(x), yOff=str(y), xSize=str(c1 - c0), ySize=str(r1 - r0))
    if not masked:
        return
    if band == "mask,1":
        ET.SubElement(node, "NODATA").text = "0"  # an invalid pixel leaves what is below
    else:
        ET.SubElement(node, "UseMaskBand").text = "true"
