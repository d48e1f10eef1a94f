"""The prediction page in headless chromium from file://: offline, placed exactly, areas, toggles, bad input."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from PIL import Image
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import array_bounds, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.mosaic import RegionGrid
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.class_names import class_names_tag
from rs_deeplab.remote.scenes import reads_remote
from rs_deeplab.report.composite import write_composite
from rs_deeplab.report.page import check_page_path, files_folder, write_page
from rs_deeplab.report.prediction import PredictionInputs, class_colours, write_prediction_page
from rs_deeplab.report.tiles import max_zoom, reading
from rs_deeplab.vectorize import vectorize
from tests.bench.scripts import load_script
from tests.report.conftest import Visit

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, PIXEL = 600, 400, 0.5
ORIGIN = (366_000.0, 5_811_000.0)
COLOURS = {0: (230, 120, 20), 1: (0, 0, 255), 2: (0, 200, 0)}  # class 3 has none: the page makes one
NAMES = ["ground", "building", "tree", "water"]


def _labels() -> np.ndarray:
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[50:150, 100:300] = 1
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    labels[(rows - 280) ** 2 + (cols - 200) ** 2 < 60**2] = 2
    labels[:, 560:] = 3
    return labels


def _write(folder: Path, crs: Any = "EPSG:32633", polygons: bool = True, name: str = "city") -> PredictionInputs:
    folder.mkdir(parents=True, exist_ok=True)
    transform = from_origin(*ORIGIN, PIXEL, PIXEL) if crs else from_origin(0, 0, 1, -1)
    labels = folder / f"{name}.tif"
    write_geotiff(
        labels,
        _labels()[None],
        crs=crs,
        transform=transform,
        nodata=255,
        tags=class_names_tag(NAMES),
        colormap={i: (*c, 255) for i, c in COLOURS.items()},
    )
    rng = np.random.default_rng(0)
    scene = folder / f"{name}_scene.tif"
    write_geotiff(scene, (rng.integers(800, 1200, (3, HEIGHT, WIDTH))).astype(np.uint16), crs=crs, transform=transform)
    gpkg = None
    if polygons:
        gpkg = folder / f"{name}.gpkg"
        vectorize(labels, gpkg, class_names=NAMES)
    return PredictionInputs(labels=labels, scene=scene, polygons=gpkg, model=[("architecture", "deeplabv3plus")])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PredictionInputs]:
    folder = tmp_path_factory.mktemp("page")
    inputs = _write(folder)
    page = folder / "city.html"
    write_prediction_page(page, inputs)
    return page, inputs


@pytest.fixture(scope="module")
def visit(written: tuple[Path, PredictionInputs], open_page: Callable[[Path], Visit]) -> Visit:
    result = open_page(written[0])
    result.wait_for_tiles()
    return result


def _only_classes(visit: Visit, zoom: int | None = None, latlng: tuple[float, float] | None = None) -> None:
    """Class layer alone at full opacity (no scene, no outlines), optionally centred on ``latlng`` at ``zoom``."""
    page = visit.page
    for box, on in (("#scene", False), ("#outlines", False)):
        if page.locator(box).is_checked() != on:
            page.locator(box).click()
    page.locator("#opacity").fill("100")
    if zoom is not None and latlng is not None:
        page.evaluate("([lat, lng, z]) => RS.map.setView([lat, lng], z, {animate: false})", [*latlng, zoom])
    visit.wait_for_tiles()


def _class_pixels(image: np.ndarray, colour: tuple[int, int, int], tol: int = 3) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - colour) <= tol, axis=-1)


def test_opens_offline_without_errors(visit: Visit) -> None:
    assert visit.errors == []
    assert visit.outside() == []
    assert any("/tiles/classes/" in u for u in visit.requests) and any("/tiles/scene/" in u for u in visit.requests)
    folder = files_folder(visit.path)
    assert (folder / "lib" / "leaflet" / "LICENSE").is_file() and (folder / "lib" / "proj4" / "LICENSE.md").is_file()
    text = visit.path.read_text()
    assert "http://" not in text and "https://" not in text


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_overlay_corners_are_the_raster_bounds(visit: Visit, corner: str) -> None:
    """At full zoom (+2: one raster pixel is 4 screen pixels) the class pixels start where the map puts the corner."""
    x = ORIGIN[0] + (0 if corner == "top-left" else WIDTH * PIXEL)
    y = ORIGIN[1] - (0 if corner == "top-left" else HEIGHT * PIXEL)
    zoom = max_zoom(WIDTH, HEIGHT) + 2
    _only_classes(visit, zoom, (y, x))
    point = visit.page.evaluate(
        "([lat, lng]) => { const p = RS.map.latLngToContainerPoint([lat, lng]); return [p.x, p.y]; }", [y, x]
    )
    image = visit.screenshot()
    px, py = round(point[0]), round(point[1])
    near = image[py - 60 : py + 60, px - 60 : px + 60]
    painted = ~_class_pixels(near, (221, 221, 221), tol=2)  # the map's background is #ddd
    cols, rows = np.flatnonzero(painted.any(axis=0)), np.flatnonzero(painted.any(axis=1))
    if corner == "top-left":
        edge_x, edge_y = px - 60 + cols.min(), py - 60 + rows.min()
    else:
        edge_x, edge_y = px - 60 + cols.max() + 1, py - 60 + rows.max() + 1
    assert abs(edge_x - point[0]) <= 1 and abs(edge_y - point[1]) <= 1, (edge_x, edge_y, point)
    # the pixel inside the corner has the corner's class colour (class 0 top-left, class 3 bottom-right)
    inside = image[py + 2, px + 2] if corner == "top-left" else image[py - 3, px - 3]
    expected = COLOURS[0] if corner == "top-left" else class_colours(4, COLOURS)[3]
    assert np.abs(inside.astype(int) - expected).max() <= 3, (inside, expected)


def test_legend_areas_are_the_geopackage_areas(visit: Visit, written: tuple[Path, PredictionInputs]) -> None:
    assert written[1].polygons is not None
    table = pyogrio.read_dataframe(written[1].polygons, layer="labels", read_geometry=False)
    truth = table.groupby("class_id")["area_m2"].sum()
    rows = visit.page.locator("table.legend tbody tr")
    assert rows.count() == len(NAMES)
    for i in range(len(NAMES)):
        row = rows.nth(i)
        shown = float(re.sub(r"[^\d.]", "", row.locator("td.area").inner_text().split("m²")[0]))
        assert shown == pytest.approx(truth[i], rel=1e-3)
        assert float(row.get_attribute("data-area") or "nan") == pytest.approx(truth[i], rel=1e-3)
        assert NAMES[i] in row.inner_text()
    # class pixels × pixel area is the same thing, independently counted
    assert truth[1] == pytest.approx(100 * 200 * PIXEL**2, rel=1e-3)


def test_class_toggle_hides_its_pixels(visit: Visit) -> None:
    _only_classes(visit)
    visit.page.evaluate("RS.map.fitBounds(RS.rasterBounds(RS_PAGE.grid, 0), {animate: false})")
    visit.wait_for_tiles()
    before = visit.screenshot()
    building = _class_pixels(before, COLOURS[1]).sum()
    tree = _class_pixels(before, COLOURS[2]).sum()
    assert building > 500 and tree > 500
    box = visit.page.locator('input.toggle[data-class="1"]')
    box.uncheck()
    visit.page.wait_for_timeout(200)
    after = visit.screenshot()
    assert _class_pixels(after, COLOURS[1]).sum() == 0
    assert _class_pixels(after, COLOURS[2]).sum() == pytest.approx(tree, rel=0.02)
    box.check()
    visit.page.wait_for_timeout(200)
    assert _class_pixels(visit.screenshot(), COLOURS[1]).sum() == pytest.approx(building, rel=0.02)


def test_cursor_shows_scene_crs_and_lon_lat(visit: Visit) -> None:
    x, y = ORIGIN[0] + 100.25, ORIGIN[1] - 50.25
    visit.page.evaluate("([lat, lng]) => RS.map.setView([lat, lng], RS_PAGE.maxNativeZoom, {animate: false})", [y, x])
    box = visit.page.locator("#map").bounding_box()
    point = visit.page.evaluate(
        "([lat, lng]) => { const p = RS.map.latLngToContainerPoint([lat, lng]); return [p.x, p.y]; }", [y, x]
    )
    visit.page.mouse.move(box["x"] + point[0], box["y"] + point[1])
    shown = [float(v) for v in visit.page.locator("#cursor-crs").inner_text().split(",")]
    assert shown == pytest.approx([x, y], abs=PIXEL)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(*shown)
    text = visit.page.locator("#cursor-lonlat").inner_text()
    assert [float(v) for v in re.findall(r"-?\d+\.\d+", text)] == pytest.approx([lon, lat], abs=1e-6)


def test_model_card_and_outlines(visit: Visit) -> None:
    assert "deeplabv3plus" in visit.page.locator("table.card").inner_text()
    visit.page.locator("#outlines").check()
    assert visit.page.evaluate("RS.map.getPane('overlayPane').querySelectorAll('canvas').length") >= 1
    assert visit.errors == []


def test_no_crs_and_no_polygons(tmp_path: Path, open_page: Callable[[Path], Visit]) -> None:
    """A raster without a CRS is shown in pixel coordinates and says so; zero polygons give zero areas."""
    inputs = _write(tmp_path, crs=None, polygons=True, name="plain")
    empty = tmp_path / "empty.gpkg"
    frame = pyogrio.read_dataframe(inputs.polygons, layer="labels")
    pyogrio.write_dataframe(frame.iloc[:0], empty, layer="labels")
    inputs.polygons = empty
    page = tmp_path / "plain.html"
    write_prediction_page(page, inputs)
    visit = open_page(page)
    visit.wait_for_tiles()
    panel = visit.page.locator("#panel").inner_text()
    assert "no CRS" in panel and "no polygons" in panel
    assert all(
        float(r.get_attribute("data-area") or "nan") == 0 for r in visit.page.locator("table.legend tbody tr").all()
    )
    visit.page.mouse.move(300, 300)
    assert visit.page.locator("#cursor-crs").inner_text().startswith("column, row")
    assert visit.errors == [] and visit.outside() == []


def test_generated_colours_are_distinct() -> None:
    colours = class_colours(12, {0: (0, 0, 0)})
    assert colours[0] == (0, 0, 0) and len(set(colours)) == 12


def test_page_path_checked_and_written_atomically(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        check_page_path(tmp_path / "missing" / "x.html")
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(InputError, match="a folder has that name"):
        check_page_path(tmp_path / "dir.html")
    page = tmp_path / "x.html"
    write_page(page, lambda folder: "<p>old</p>")

    def broken(folder: Path) -> str:
        (folder / "half.js").write_text("x")
        raise RuntimeError("stopped mid-way")

    with pytest.raises(RuntimeError):
        write_page(page, broken)
    assert page.read_text() == "<p>old</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.html", "x.html", "x_files"]
    assert not (files_folder(page) / "half.js").exists()


def test_infer_checks_the_page_path_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unwritable page stops infer in one line, exit 2, before the checkpoint is even looked at."""
    from pipelines.infer import main

    (tmp_path / "city.html").mkdir()
    scene = write_geotiff(
        tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), crs="EPSG:32633", transform=from_origin(0, 8, 1, 1)
    )
    code = main([str(scene), "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "city.gpkg"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "city.html" in err[0] and "--no-report" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city.html", "s.tif"]


def test_report_loads_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, rs_deeplab.report.prediction; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_geographic_scene(tmp_path: Path, open_page: Callable[[Path], Visit]) -> None:
    """An EPSG:4326 raster: the map is in degrees, lon/lat under the cursor are its own coordinates."""
    labels = write_geotiff(
        tmp_path / "geo.tif",
        _labels()[None],
        crs="EPSG:4326",
        nodata=255,
        transform=from_origin(13.4, 52.52, 1e-5, 1e-5),
        tags=class_names_tag(NAMES),
    )
    page = tmp_path / "geo.html"
    write_prediction_page(page, PredictionInputs(labels=labels))
    visit = open_page(page)
    visit.wait_for_tiles()
    x, y = 13.4 + 250.5e-5, 52.52 - 100.5e-5
    visit.page.evaluate("([lat, lng]) => RS.map.setView([lat, lng], RS_PAGE.maxNativeZoom, {animate: false})", [y, x])
    box = visit.page.locator("#map").bounding_box()
    point = visit.page.evaluate(
        "([lat, lng]) => { const p = RS.map.latLngToContainerPoint([lat, lng]); return [p.x, p.y]; }", [y, x]
    )
    visit.page.mouse.move(box["x"] + point[0], box["y"] + point[1])
    text = visit.page.locator("#cursor-lonlat").inner_text()
    assert [float(v) for v in re.findall(r"-?\d+\.\d+", text)] == pytest.approx([x, y], abs=1e-5)
    assert "pixels" in visit.page.locator("table.legend").inner_text()  # no polygons: pixel counts, not degrees²
    assert visit.errors == [] and visit.outside() == []


def _composite_scenes(folder: Path) -> tuple[RegionGrid, Path, Path, np.ndarray, np.ndarray]:
    """A region grid (EPSG:32633, 120 × 80 px) and two uint16 scenes with nodata 0: the west one on the grid
    (columns 0-70, value 1000 + column, a hole at rows 10-20, columns 52-58), the east one (3000) covering columns
    50-120 (a hole at rows 30-40, columns 62-68) but delivered in EPSG:32632. Also where each is valid on the grid.
    """
    folder.mkdir()
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    grid = RegionGrid(CRS.from_epsg(32633), transform, 120, 80)
    west = np.broadcast_to(1000 + np.arange(70, dtype=np.uint16), (3, 80, 70)).copy()
    west[:, 10:20, 52:58] = 0
    west_path = write_geotiff(folder / "west.tif", west, crs="EPSG:32633", transform=transform, nodata=0)
    east_transform = transform @ Affine.translation(50, 0)
    bounds = array_bounds(80, 70, east_transform)
    t, w, h = calculate_default_transform("EPSG:32633", "EPSG:32632", 70, 80, *bounds)
    east = np.zeros((3, h, w), np.uint16)
    source = np.full((3, 80, 70), 3000, np.uint16)
    source[:, 30:40, 12:18] = 0  # a hole at rows 30-40, columns 62-68 of the grid
    reproject(
        source,
        east,
        src_transform=east_transform,
        src_crs="EPSG:32633",
        src_nodata=0,
        dst_transform=t,
        dst_crs="EPSG:32632",
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    east_path = write_geotiff(folder / "east32.tif", east, crs="EPSG:32632", transform=t, nodata=0)
    east_valid = np.zeros((80, 120), np.uint8)
    reproject(
        (east[0] > 0).astype(np.uint8),
        east_valid,
        src_transform=t,
        src_crs="EPSG:32632",
        dst_nodata=0,
        dst_transform=transform,
        dst_crs="EPSG:32633",
        resampling=Resampling.nearest,
    )
    west_valid = np.zeros((80, 120), bool)
    west_valid[:, :70] = west[0] > 0
    return grid, west_path, east_path, west_valid, east_valid > 0


def test_region_composite_draws_each_pixel_from_its_owner_on_the_grid(tmp_path: Path) -> None:
    """The composite VRT is the mosaic's grid; a pixel is its owner's, or (nodata there) the scene below it; what no
    scene covers is masked; a scene in another CRS is warped onto the grid; nothing is written beside the scenes.
    """
    grid, west, east, west_valid, east_valid = _composite_scenes(tmp_path / "scenes")
    owned = [[(0, 80, 0, 60)], [(0, 80, 60, 120)]]  # rows, then columns
    staging = tmp_path / "staging"
    staging.mkdir()
    vrt = write_composite([west, east], grid, owned, staging)
    assert sorted(p.name for p in (tmp_path / "scenes").iterdir()) == ["east32.tif", "west.tif"]
    with rasterio.open(vrt) as ds:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (grid.crs, grid.transform, grid.width, grid.height)
        assert ds.count == 3 and ds.dtypes[0] == "uint16"
        data, mask = ds.read(1), ds.dataset_mask() > 0
    np.testing.assert_array_equal(mask, west_valid | east_valid)
    cols = np.broadcast_to(1000 + np.arange(120), (80, 120))
    expected = np.where(east_valid, 3000, 0)  # the east scene is drawn last: where it has data, unless owned
    expected[:, :60] = np.where(west_valid, cols, expected)[:, :60]  # the west's share, its hole showing the east
    expected[:, 60:] = np.where(east_valid, 3000, np.where(west_valid, cols, 0))[:, 60:]
    np.testing.assert_array_equal(np.where(mask, data, 0), expected)
    assert (data[10:20, 52:58] == 3000).all() and east_valid[10:20, 52:58].all()  # the hole shows the east scene
    assert (data[30:40, 62:68] == cols[30:40, 62:68]).mean() > 0.8  # the east's hole in its share shows the west

    with pytest.raises(InputError, match="band"):
        three = write_geotiff(
            tmp_path / "one_band.tif", np.ones((1, 80, 70), np.uint16), crs="EPSG:32633", transform=grid.transform
        )
        write_composite([west, three], grid, owned, staging)


def test_region_composite_of_remote_scenes(tmp_path: Path, open_page: Callable[[Path], Visit]) -> None:
    """Scenes served over http: the composite names them by their GDAL paths, reads as remote (the project's
    remote settings), equals the composite of the same files on disk, and is the page's scene layer.
    """
    from tests.servers import http_server

    grid, west, east, _, _ = _composite_scenes(tmp_path / "scenes")
    owned = [[(0, 80, 0, 60)], [(0, 80, 60, 120)]]
    (tmp_path / "local").mkdir()
    (tmp_path / "remote").mkdir()
    local = write_composite([west, east], grid, owned, tmp_path / "local")
    with http_server(tmp_path / "scenes") as server:
        urls = [f"{server.url}/west.tif", f"{server.url}/east32.tif"]
        remote = write_composite(urls, grid, owned, tmp_path / "remote")
        assert reads_remote(remote) and f"/vsicurl/{server.url}/west.tif" in remote.read_text()
        with reading(local) as a, reading(remote) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            np.testing.assert_array_equal(a.dataset_mask(), b.dataset_mask())
        labels = write_geotiff(
            tmp_path / "labels.tif",
            np.zeros((1, 80, 120), np.uint8),
            crs="EPSG:32633",
            transform=grid.transform,
            nodata=255,
            tags=class_names_tag(NAMES),
        )
        page = tmp_path / "remote.html"
        write_prediction_page(page, PredictionInputs(labels=labels, scene=remote))
    visit = open_page(page)
    visit.wait_for_tiles()
    assert visit.errors == [] and visit.outside() == []
    assert any("/tiles/scene/" in u for u in visit.requests)


def test_the_docs_screenshot_script_draws_the_page(
    written: tuple[Path, PredictionInputs], browser: Any, tmp_path: Path
) -> None:
    """``docs/page_screenshots.py`` (the pictures of the demo's pages) saves a page as drawn, classes included."""
    script = load_script(ROOT / "docs" / "page_screenshots.py")
    out = tmp_path / "shot.png"
    script.shoot(browser, written[0], out)
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[:2] == (script.VIEWPORT["height"], script.VIEWPORT["width"])
    rgb = image.astype(int)
    blue = (rgb[..., 2] > rgb[..., 0] + 60) & (rgb[..., 2] > rgb[..., 1] + 60)  # class 1's colour, over the scene
    assert blue.mean() > 0.01  # the class tiles drawn (the legend's swatch alone is 0.02 %)
    with pytest.raises(SystemExit, match="no such page"):
        script.shoot(browser, tmp_path / "missing.html", out)
