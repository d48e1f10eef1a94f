"""The prediction page: ``x.html`` beside ``x.gpkg``, the scene and its predicted classes on a map, offline.

The map is drawn in the scene's own CRS (no reprojection, so nothing shifts): ``static/rs_deeplab/map.js`` maps the
raster's top-left corner to pixel (0, 0) and one raster pixel to one screen pixel at the pyramid's full-resolution
level, and proj4 turns the cursor's scene coordinates into lon/lat. The scene composite and the class layer are
tile pyramids (:mod:`rs_deeplab.report.tiles`); the class layer is coloured in the browser, so the legend's
toggles and the opacity slider never rewrite a tile. Areas come from the GeoPackage's ``area_m2`` column.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.class_names import read_class_names
from rs_deeplab.report.page import PageOutput, esc, files_folder, html_page, js_global, write_page
from rs_deeplab.report.polygons import outline_levels
from rs_deeplab.report.tiles import reading, scene_format, write_label_pyramid, write_scene_pyramid

log = logging.getLogger(__name__)

INFERENCE_TAG = "RS_DEEPLAB_INFERENCE"
"""The label raster's tag with the run's JSON record (``rs_deeplab.inference.writing.writer.FINGERPRINT_TAG``)."""
EXTRA_ZOOM = 3
"""Levels the map zooms in beyond full resolution (one raster pixel = 8 screen pixels)."""


def class_colours(count: int, known: Mapping[int, Sequence[int]] | None) -> list[tuple[int, int, int]]:
    """One colour per class: ``known`` where it has one, else a generated hue far from its neighbours'."""
    colours = []
    for i in range(count):
        rgb = None if known is None else known.get(i)
        if rgb is not None and len(rgb) >= 3:
            colours.append((int(rgb[0]), int(rgb[1]), int(rgb[2])))
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
            colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


@dataclass
class Grid:
    """How the page places the raster: origin, pixel size, size, CRS (proj4 text) and what to tell the reader."""

    x0: float
    y0: float
    a: float
    e: float
    width: int
    height: int
    crs: str | None
    proj4: str | None
    geographic: bool
    notes: list[str] = field(default_factory=list)

    def bounds(self) -> list[float]:
        """``[left, bottom, right, top]`` in the map's coordinates."""
        xs = (self.x0, self.x0 + self.width * self.a)
        ys = (self.y0, self.y0 + self.height * self.e)
        return [min(xs), min(ys), max(xs), max(ys)]


def raster_grid(ds: Any) -> Grid:
    """The page's grid of an open raster; a raster without a CRS or with a rotated grid is shown in pixels."""
    t = ds.transform
    notes = []
    if ds.crs is None:
        notes.append("The raster has no CRS: the map shows pixel coordinates (column, row); no lon/lat.")
        return Grid(0.0, 0.0, 1.0, 1.0, ds.width, ds.height, None, None, False, notes)
    if t.b != 0 or t.d != 0:
        notes.append("The raster's grid is rotated: the map shows pixel coordinates (column, row).")
        return Grid(0.0, 0.0, 1.0, 1.0, ds.width, ds.height, None, None, False, notes)
    from pyproj import CRS

    crs = CRS.from_user_input(ds.crs.to_wkt())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "may lose important projection information": lon/lat is all we show
        proj4 = crs.to_proj4()
    name = crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"
    return Grid(t.c, t.f, t.a, t.e, ds.width, ds.height, name, proj4, bool(crs.is_geographic), notes)


def read_run_record(ds: Any) -> dict[str, Any]:
    """The JSON record inference wrote into the label raster's tags (empty when there is none)."""
    try:
        record = json.loads(ds.tags().get(INFERENCE_TAG, "{}"))
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def polygon_areas(polygons: Path, classes: int) -> tuple[list[float], int]:
    """Per class id, the summed ``area_m2`` of the GeoPackage's polygons, and their count."""
    import pyogrio

    try:
        table = pyogrio.read_dataframe(polygons, layer="labels", columns=["class_id", "area_m2"], read_geometry=False)
    except Exception as exc:  # pyogrio's errors: not a GeoPackage, no such layer
        raise InputError(f"{polygons}: cannot read the polygons' areas ({exc}); pass the .gpkg infer wrote") from None
    areas = [0.0] * classes
    for class_id, area in zip(table["class_id"], table["area_m2"], strict=True):
        if 0 <= int(class_id) < classes:
            areas[int(class_id)] += float(area)
    return areas, len(table)


@dataclass
class PredictionInputs:
    """What the prediction page shows.

    Attributes:
        labels: The label raster (one scene's, or the mosaic VRT).
        scene: The scene it was predicted from, for the composite (None: class layer only); for a mosaic, a VRT
            of its scenes on its grid (:func:`rs_deeplab.report.composite.write_composite`).
        polygons: The GeoPackage (layer ``labels`` with ``class_id`` and ``area_m2``), or None.
        model: The model card and run details as (label, value) rows, in order.
        class_names: Names when the raster records none.
        colours: Class colours by id when the raster has no colour table.
        bands: 1-based scene bands of the composite (default: red, green, blue).
        title: The page's title.
        notes: Lines the page shows above the map's controls.
    """

    labels: Path
    scene: str | Path | None = None
    polygons: Path | None = None
    model: Sequence[tuple[str, str]] = ()
    class_names: Sequence[str] | None = None
    colours: Mapping[int, Sequence[int]] | None = None
    bands: Sequence[int] | None = None
    title: str | None = None
    notes: Sequence[str] = ()


def _classes(ds: Any, inputs: PredictionInputs) -> tuple[list[str], list[tuple[int, int, int]]]:
    names = read_class_names(ds) or list(inputs.class_names or [])
    try:
        colormap: Mapping[int, Sequence[int]] | None = ds.colormap(1)
    except ValueError:  # no colour table
        colormap = None
    if not names:
        top = int(ds.statistics(1, approx=True).max) if ds.count else 0
        names = [f"class_{i}" for i in range(min(255, top + 1))]
    known = dict(inputs.colours or {})
    if colormap:  # a GeoTIFF pads its colour table with black: black entries after the last colour are padding
        used = [i for i, c in colormap.items() if i < len(names) and any(c[:3])]
        known.update({i: colormap[i] for i in range(max(used) + 1)} if used else {})
    return names, class_colours(len(names), known)


def _legend(names: Sequence[str], colours: Sequence[tuple[int, int, int]], areas: Sequence[float], unit: str) -> str:
    total = sum(areas) or 1.0
    rows = []
    for i, (name, rgb) in enumerate(zip(names, colours, strict=True)):
        area = areas[i]
        if unit == "m²":
            size = f"{area:,.1f} m²<br><small>{area / 1e4:,.4f} ha</small>"
        else:
            size = f"{area:,.6g} {esc(unit)}"
        rows.append(
            f'<tr data-class="{i}" data-area="{area!r}"><td><input type="checkbox" checked class="toggle" '
            f'data-class="{i}" aria-label="show {esc(name)}"></td><td><span class="swatch" '
            f'style="background:rgb{rgb}"></span></td><td>{esc(name)}</td><td class="area">{size}</td>'
            f'<td class="share">{100 * area / total:.1f} %</td></tr>'
        )
    return (
        '<table class="legend"><thead><tr><th></th><th></th><th>class</th><th>area</th><th>share</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _card(rows: Sequence[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="card">{cells}</table>'


def _body(inputs: PredictionInputs, grid: Grid, legend: str, notes: Sequence[str]) -> str:
    title = inputs.title or inputs.labels.stem
    crs = esc(grid.crs or "pixel coordinates")
    note = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    return f"""<div id="map"></div>
<aside id="panel">
<h1>{esc(title)}</h1>
{note}
<label>class layer opacity <input id="opacity" type="range" min="0" max="100" value="70"></label>
<label><input id="outlines" type="checkbox" checked> polygon outlines</label>
<label><input id="scene" type="checkbox" checked> scene</label>
{legend}
<h2>cursor</h2>
<p id="cursor"><span id="cursor-crs">–</span> <small>({crs})</small><br><span id="cursor-lonlat">–</span></p>
<h2>model</h2>
{_card(inputs.model)}
</aside>"""


def _scene_tiles(inputs: PredictionInputs, grid: Grid, root: Path, notes: list[str]) -> str | None:
    """Write the scene composite's pyramid when the scene is on the label raster's grid; its tiles' format."""
    if inputs.scene is None:
        return None
    with reading(inputs.scene) as scene:  # a remote scene with the project's GDAL settings (rs_deeplab.remote.scenes)
        same = (scene.width, scene.height) == (grid.width, grid.height)
    if not same:
        notes.append("The scene is not on the label raster's grid: only the classes are shown.")
        return None
    suffix = scene_format()
    write_scene_pyramid(inputs.scene, root, inputs.bands, suffix)
    return suffix


def _areas_and_outlines(
    polygons: Path | None, grid: Grid, pixels: np.ndarray, zoom: int, notes: list[str]
) -> tuple[list[float], str, int, list[dict[str, Any]]]:
    """Per class area, its unit, the polygon count and the outlines' levels of detail.

    Areas are the GeoPackage's ``area_m2`` sums; without polygons, pixel counts times the pixel's area (in a
    projected CRS) or plain pixel counts.
    """
    metric = grid.crs is not None and not grid.geographic
    if polygons is None:
        areas = list(pixels * abs(grid.a * grid.e)) if metric else list(pixels)
        return areas, "m²" if metric else "pixels", 0, []
    areas, count = polygon_areas(polygons, len(pixels))
    if count == 0:
        notes.append("The prediction has no polygons: every area is 0.")
    outlines = outline_levels(polygons, grid, zoom)
    if outlines.note:
        notes.append(outlines.note)
    return areas, "m²" if grid.crs else "units²", count, outlines.levels


def write_prediction_page(page: Path, inputs: PredictionInputs) -> PageOutput:
    """Write the prediction page ``page`` and its folder (see the module's description).

    Raises:
        InputError: The page cannot be written, or the label raster or polygons cannot be read; one line.
    """
    try:
        ds = rasterio.open(inputs.labels)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{inputs.labels}: cannot read the label raster for the page ({exc})") from None
    with ds:
        grid = raster_grid(ds)
        names, colours = _classes(ds, inputs)
        record = read_run_record(ds)
    notes = [*inputs.notes, *grid.notes]

    def build(folder: Path) -> str:
        labels = write_label_pyramid(inputs.labels, folder / "tiles" / "classes", len(names))
        assert labels.counts is not None
        scene_tiles = _scene_tiles(inputs, grid, folder / "tiles" / "scene", notes)
        pixels = labels.counts[: len(names)].astype(float)
        areas, unit, count, levels = _areas_and_outlines(inputs.polygons, grid, pixels, labels.max_zoom, notes)
        (folder / "polygons.js").write_text(js_global("RS_POLYGONS", levels), encoding="utf-8")
        meta = {
            "grid": {
                **{k: getattr(grid, k) for k in ("x0", "y0", "a", "e", "width", "height", "crs", "proj4")},
                "geographic": grid.geographic,
                "bounds": grid.bounds(),
            },
            "folder": files_folder(page).name,
            "maxNativeZoom": labels.max_zoom,
            "maxZoom": labels.max_zoom + EXTRA_ZOOM,
            "scene": scene_tiles,
            "classes": [
                {"id": i, "name": n, "colour": list(c), "pixels": int(pixels[i]), "area": areas[i]}
                for i, (n, c) in enumerate(zip(names, colours, strict=True))
            ],
            "polygons": count,
            "areaUnit": unit,
            "run": record,
        }
        (folder / "page.js").write_text(js_global("RS_PAGE", meta), encoding="utf-8")
        body = _body(inputs, grid, _legend(names, colours, areas, unit), notes)
        return html_page(
            inputs.title or inputs.labels.stem,
            files_folder(page).name,
            body,
            styles=("lib/leaflet/leaflet.css", "lib/rs_deeplab/report.css"),
            scripts=(
                "lib/leaflet/leaflet.js",
                "lib/proj4/proj4.js",
                "page.js",
                "polygons.js",
                "lib/rs_deeplab/map.js",
                "lib/rs_deeplab/prediction.js",
            ),
        )

    output = write_page(page, build)
    log.info("prediction page %s: %s", page, output.size_text())
    return output


def model_rows(card: Mapping[str, Any] | None, details: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The model card panel's rows, empty values left out.

    First from a card as :func:`rs_deeplab.config.modelcard.card_to_metadata` writes it, then ``details`` (checkpoint,
    runtime, TTA, CRF, ...) as given.
    """
    rows: list[tuple[str, str]] = []
    if card:
        arch = card.get("model") or card.get("architecture") or {}
        name = " ".join(str(v) for v in (arch.get("name"), arch.get("backbone")) if v)
        if arch.get("output_stride"):
            name += f", output stride {arch['output_stride']}"
        rows.append(("architecture", name))
        rows.append(("classes", ", ".join(card.get("class_names") or ())))
        bands = card.get("band_names") or card.get("bands")
        if bands:
            rows.append(("bands", ", ".join(str(b) for b in bands)))
        if card.get("gsd"):
            rows.append(("training GSD", f"{float(card['gsd']):g} m"))
        window = card.get("infer") or card.get("window") or {}
        if window.get("size"):
            rows.append(("window", f"{window['size']} px, stride {window.get('stride')}"))
    for key, value in details.items():
        if value not in (None, "", ()):
            rows.append((key, value if isinstance(value, str) else _text(value)))
    return rows


def card_colours(card: Mapping[str, Any] | None) -> dict[int, tuple[int, ...]] | None:
    """Class colours by id from a card's ``class_colours`` rows (``[id, r, g, b, a]``), or None."""
    rows = (card or {}).get("class_colours") or ()
    colours = {int(r[0]): tuple(int(v) for v in r[1:4]) for r in rows if len(r) >= 4 and int(r[0]) < 255}
    return colours or None


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, np.generic):
        return _text(value.item())
    return str(value)
