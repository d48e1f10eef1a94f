"""GDAL VRT text for a mosaic: layers of source rectangles drawn in order, paths relative to the VRT."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from affine import Affine

GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}
"""numpy's data type names → GDAL's (a VRT's ``dataType``)."""

Box = tuple[int, int, int, int]
"""``(x_off, y_off, x_size, y_size)`` in pixels."""


@dataclass(frozen=True)
class Source:
    """One rectangle of one band of a raster, drawn at ``dst`` of the VRT (later sources are drawn on top).

    Attributes:
        path: The raster file.
        band: Its band (1-based).
        size: Its ``(width, height)``.
        block: Its ``(block width, block height)``.
        src: The rectangle read from it.
        dst: Where it goes in the VRT.
        nodata: A value drawn transparent (a ``ComplexSource``), or None (a ``SimpleSource``: every value drawn).
    """

    path: Path
    band: int
    size: tuple[int, int]
    block: tuple[int, int]
    src: Box
    dst: Box
    nodata: int | None = None


@dataclass(frozen=True)
class Band:
    """One band of the VRT: its sources in drawing order and what QGIS shows of it."""

    sources: Sequence[Source]
    description: str = ""
    nodata: int | None = None
    colormap: Mapping[int, Sequence[int]] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def vrt_text(
    folder: Path,
    *,
    width: int,
    height: int,
    wkt: str,
    transform: Affine,
    bands: Sequence[Band],
    metadata: Mapping[str, str] | None = None,
) -> str:
    """The XML of a byte VRT written in ``folder``, its sources named relative to that folder.

    Args:
        folder: Where the VRT will lie (source paths are made relative to it: ``relativeToVRT="1"``).
        width: Pixels per row.
        height: Rows.
        wkt: Its CRS as WKT.
        transform: Its north-up geotransform.
        bands: Its bands, in order.
        metadata: Dataset-level metadata (default domain), e.g. ``CLASS_NAMES``.
    """
    root = vrt_root(width, height, wkt, transform)
    _metadata(root, metadata or {})
    for number, band in enumerate(bands, start=1):
        node = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band=str(number))
        _metadata(node, band.metadata)
        if band.description:
            ET.SubElement(node, "Description").text = band.description
        if band.nodata is not None:
            ET.SubElement(node, "NoDataValue").text = str(band.nodata)
        if band.colormap:
            ET.SubElement(node, "ColorInterp").text = "Palette"
            table = ET.SubElement(node, "ColorTable")
            for value in range(max(band.colormap) + 1):
                rgba = [*band.colormap.get(value, (0, 0, 0, 0)), 255][:4]
                ET.SubElement(table, "Entry", {f"c{i}": str(int(v)) for i, v in enumerate(rgba, start=1)})
        for source in band.sources:
            _source(node, source, folder)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def vrt_root(width: int, height: int, wkt: str, transform: Affine) -> ET.Element:
    """A ``VRTDataset`` element of ``width`` × ``height`` pixels in CRS ``wkt`` on the north-up ``transform``."""
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = wkt
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in transform.to_gdal())
    return root


def _metadata(parent: ET.Element, items: Mapping[str, str]) -> None:
    if items:
        node = ET.SubElement(parent, "Metadata")
        for key, value in items.items():
            ET.SubElement(node, "MDI", key=key).text = value


def _source(parent: ET.Element, source: Source, folder: Path) -> None:
    node = ET.SubElement(parent, "SimpleSource" if source.nodata is None else "ComplexSource")
    relative = os.path.relpath(Path(source.path).absolute(), Path(folder).absolute())
    ET.SubElement(node, "SourceFilename", relativeToVRT="1").text = Path(relative).as_posix()
    ET.SubElement(node, "SourceBand").text = str(source.band)
    width, height = source.size
    ET.SubElement(
        node,
        "SourceProperties",
        RasterXSize=str(width),
        RasterYSize=str(height),
        DataType="Byte",
        BlockXSize=str(source.block[0]),
        BlockYSize=str(source.block[1]),
    )
    for tag, (x, y, w, h) in (("SrcRect", source.src), ("DstRect", source.dst)):
        ET.SubElement(node, tag, xOff=str(x), yOff=str(y), xSize=str(w), ySize=str(h))
    if source.nodata is not None:
        ET.SubElement(node, "NODATA").text = str(source.nodata)
