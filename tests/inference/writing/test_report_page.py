"""infer.py writes the prediction page beside its outputs (and not under --no-report); the page opens clean."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.windows
from PIL import Image
from rasterio.warp import Resampling, reproject

from pipelines.infer import main
from rs_deeplab.geo.mosaic import RegionGrid, write_region
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.writing.report_page import model_card
from rs_deeplab.report import prediction
from rs_deeplab.report.prediction import model_rows
from rs_deeplab.report.tiles import TILE
from tests.conftest import reprojected
from tests.report.conftest import Visit, browser, open_page  # noqa: F401  (the browser fixtures, shared)

pytestmark = pytest.mark.slow


def test_infer_writes_the_page(
    demo_run: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    open_browser: Callable[[Path], Visit] = request.getfixturevalue("open_page")
    out = tmp_path / "city.gpkg"
    args = [str(demo_run["scene"]), "--checkpoint", str(demo_run["checkpoint"]), "--runtime", "torch", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prediction page" in printed and str(tmp_path / "city.html") in printed and "MB in" in printed
    visit = open_browser(tmp_path / "city.html")
    visit.wait_for_tiles()
    assert visit.errors == [] and visit.outside() == []
    card = visit.page.locator("table.card").inner_text()
    assert "deeplabv3plus" in card and str(demo_run["checkpoint"]) in card and "TTA" in card
    table = pyogrio.read_dataframe(out, layer="labels", read_geometry=False)
    truth = table.groupby("class_id")["area_m2"].sum()
    for row in visit.page.locator("table.legend tbody tr").all():
        class_id = int(row.get_attribute("data-class") or -1)
        assert float(row.get_attribute("data-area") or "nan") == pytest.approx(truth.get(class_id, 0.0), rel=1e-3)

    quiet = tmp_path / "quiet"
    quiet.mkdir()
    assert main([*args, "--out", str(quiet / "q.gpkg"), "--no-report"]) == 0
    assert not (quiet / "q.html").exists() and not (quiet / "q_files").exists()


def _tiles_image(root: Path, zoom: int, width: int, height: int) -> np.ndarray:
    """The full-resolution level of a tile pyramid as one ``height × width × 4`` RGBA image."""
    side = TILE * math.ceil(max(width, height) / TILE)
    image = np.zeros((side, side, 4), np.uint8)
    for tile in (root / str(zoom)).glob("*/*.*"):
        x, y = int(tile.parent.name), int(tile.stem)
        image[y * TILE : (y + 1) * TILE, x * TILE : (x + 1) * TILE] = np.asarray(Image.open(tile).convert("RGBA"))
    return image[:height, :width]


def _cut(scene: Path, folder: Path, columns: tuple[tuple[int, int], ...]) -> list[Path]:
    """Tiles of ``scene`` (all rows, the given column ranges), each in a file of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(scene) as src:
        for i, (c0, c1) in enumerate(columns):
            window = rasterio.windows.Window(c0, 0, c1 - c0, src.height)
            out.append(
                write_geotiff(
                    folder / f"tile_{i}.tif",
                    src.read(window=window),
                    crs=src.crs,
                    transform=src.window_transform(window),
                )
            )
    return out


def _on_grid(scene: Path, grid: RegionGrid) -> tuple[np.ndarray, np.ndarray]:
    """Bands 1-3 of ``scene`` resampled (nearest) onto ``grid`` by rasterio.warp, and where it has pixels."""
    with rasterio.open(scene) as src:
        data = np.zeros((3, grid.height, grid.width), np.uint8)
        valid = np.zeros((grid.height, grid.width), np.uint8)
        kw = {
            "src_transform": src.transform,
            "src_crs": src.crs,
            "dst_transform": grid.transform,
            "dst_crs": grid.crs,
            "resampling": Resampling.nearest,
        }
        reproject(src.read([1, 2, 3]), data, **kw)
        reproject(np.ones((src.height, src.width), np.uint8), valid, dst_nodata=0, **kw)
    return data, valid > 0


@pytest.mark.parametrize("crs", ["one CRS", "two CRSs"])
def test_region_page_draws_the_composite_of_all_scenes_on_the_mosaic_grid(
    demo_run: dict[str, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    crs: str,
) -> None:
    """Two overlapping tiles of one scene (the second in UTM zone 32 for ``two CRSs``) predicted into one mosaic:
    the page's composite tiles are the scenes' pixels on the mosaic's grid, each pixel from the scene owning it, and
    transparent exactly where the mosaic has no scene.
    """
    open_browser: Callable[[Path], Visit] = request.getfixturevalue("open_page")
    west, east = _cut(demo_run["scene"], tmp_path / "scenes", ((0, 150), (110, 256)))
    if crs == "two CRSs":
        east = reprojected(east, "EPSG:32632")
    out = tmp_path / "region.gpkg"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the page's composite is staged
    monkeypatch.setattr(prediction, "scene_format", lambda: "png")  # lossless tiles: pixels compare exactly
    (tmp_path / "tmp").mkdir()
    assert main([str(west), str(east), "--checkpoint", str(demo_run["onnx"]), "--out", str(out), "-q"]) == 0
    assert list((tmp_path / "tmp").iterdir()) == []  # the composite's VRTs are gone, and never beside the scenes
    assert sorted(p.name for p in (tmp_path / "scenes").iterdir()) == sorted({west.name, east.name, "tile_1.tif"})
    # the mosaic's grid and each scene's share, as the label mosaic has them
    (tmp_path / "check").mkdir()
    again = write_region([tmp_path / f"region_{p.stem}.tif" for p in (west, east)], tmp_path / "check" / "m.vrt")
    with rasterio.open(tmp_path / "region.vrt") as vrt:
        labels = vrt.read(1)
        assert (vrt.crs, vrt.transform, vrt.shape) == (again.grid.crs, again.grid.transform, labels.shape)
    meta = json.loads((tmp_path / "region_files" / "page.js").read_text().split("=", 1)[1].strip().rstrip(";"))
    assert meta["scene"] == "png" and (meta["grid"]["width"], meta["grid"]["height"]) == labels.shape[::-1]
    image = _tiles_image(
        tmp_path / "region_files" / "tiles" / "scene", meta["maxNativeZoom"], labels.shape[1], labels.shape[0]
    )
    np.testing.assert_array_equal(image[..., 3] > 0, labels != 255)  # drawn exactly where the mosaic has scenes
    for i, scene in enumerate((west, east)):
        expected, valid = _on_grid(scene, again.grid)
        mine = np.zeros(labels.shape, bool)
        for r0, r1, c0, c1 in again.owned[i]:
            mine[r0:r1, c0:c1] = True
        mine &= valid
        assert mine.sum() > 50 * labels.shape[0], (i, mine.sum())
        rgb, truth = image[..., :3], expected.transpose(1, 2, 0)
        same = (rgb == truth).all(axis=-1)
        # nearest-neighbour warps by GDAL (the page) and rasterio.warp (here) may pick another pixel along an edge
        assert same[mine].mean() > (0.999 if crs == "one CRS" else 0.99), (i, same[mine].mean())
        assert (rgb[:, 1:] == truth[:, :-1]).all(axis=-1)[mine[:, 1:]].mean() < 0.5  # one column off: not the same
    visit = open_browser(tmp_path / "region.html")
    visit.wait_for_tiles()
    assert visit.errors == [] and visit.outside() == []
    assert any("/tiles/scene/" in u for u in visit.requests)
    panel = visit.page.locator("#panel").inner_text()
    assert "composite of all 2 scenes" in panel and "single scene" not in panel


def test_an_exported_models_page_shows_its_card(
    demo_run: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The card an ONNX or TorchScript export carries is the page's model card, as its checkpoint's would be."""
    open_browser: Callable[[Path], Visit] = request.getfixturevalue("open_page")
    checkpoint = model_card(demo_run["checkpoint"])
    assert checkpoint is not None
    rows = dict(model_rows(checkpoint, {}))
    assert rows["architecture"].startswith("deeplabv3plus") and rows["classes"]
    for fmt in ("onnx", "torchscript"):  # read without running the model: onnx metadata, the archive's extra file
        exported = model_card(demo_run[fmt])
        assert exported is not None, fmt
        assert {k: v for k, v in model_rows(exported, {}) if k in ("architecture", "classes", "bands")} == {
            k: rows[k] for k in ("architecture", "classes", "bands")
        }, fmt
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    (tmp_path / "broken.ts").write_bytes(b"not a model")
    assert model_card(tmp_path / "broken.onnx") is None and model_card(tmp_path / "broken.ts") is None

    out = tmp_path / "exported.gpkg"
    assert main([str(demo_run["scene"]), "--checkpoint", str(demo_run["onnx"]), "--out", str(out), "-q"]) == 0
    visit = open_browser(tmp_path / "exported.html")
    visit.wait_for_tiles()
    assert visit.errors == [] and visit.outside() == []
    shown = {
        row.locator("th").inner_text(): row.locator("td").inner_text()
        for row in visit.page.locator("table.card tr").all()
    }
    assert shown["architecture"] == rows["architecture"] and shown["classes"] == rows["classes"]
    assert shown["checkpoint"] == str(demo_run["onnx"])


def test_separate_scenes_page_draws_the_first_scenes_composite(
    demo_run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--separate``: the page shows the first scene, its composite under its classes, pixel for pixel."""
    west, east = _cut(demo_run["scene"], tmp_path / "scenes", ((0, 150), (110, 256)))
    monkeypatch.setattr(prediction, "scene_format", lambda: "png")
    args = [str(west), str(east), "--checkpoint", str(demo_run["onnx"]), "--separate", "-q"]
    assert main([*args, "--out", str(tmp_path / "apart.gpkg")]) == 0
    meta = json.loads((tmp_path / "apart_files" / "page.js").read_text().split("=", 1)[1].strip().rstrip(";"))
    assert meta["scene"] == "png" and (meta["grid"]["width"], meta["grid"]["height"]) == (150, 256)
    image = _tiles_image(tmp_path / "apart_files" / "tiles" / "scene", meta["maxNativeZoom"], 150, 256)
    with rasterio.open(west) as src:
        np.testing.assert_array_equal(image[..., :3], src.read([1, 2, 3]).transpose(1, 2, 0))
    assert (image[..., 3] == 255).all()
    assert "separate scenes: the map shows the first" in (tmp_path / "apart.html").read_text()
