"""Tile pyramids, outline levels and the vendored files, without a browser."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

from rs_deeplab.class_names import class_names_tag
from rs_deeplab.raster import write_geotiff
from rs_deeplab.report import polygons
from rs_deeplab.report.assets import LIBRARIES, STATIC
from rs_deeplab.report.prediction import PredictionInputs, write_prediction_page
from rs_deeplab.report.tiles import TILE, max_zoom, tiles, write_label_pyramid
from rs_deeplab.vectorize import vectorize

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("width", "height"), [(1, 1), (256, 256), (257, 100), (600, 400), (5000, 300)])
def test_full_level_covers_every_pixel_once(width: int, height: int) -> None:
    zmax = max_zoom(width, height)
    covered = np.zeros((height, width), np.int32)
    for spec in tiles(width, height):
        w = spec.window
        if spec.z == zmax:
            covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
            assert (spec.out_width, spec.out_height) == (w.width, w.height)
        assert spec.out_width <= TILE and spec.out_height <= TILE
        if spec.z == 0:
            assert (spec.x, spec.y) == (0, 0)
    assert (covered == 1).all()


def test_label_tiles_hold_class_ids_and_counts(tmp_path: Path) -> None:
    labels = np.arange(300 * 520, dtype=np.int64).reshape(300, 520) % 5
    labels[:10] = 255
    path = write_geotiff(tmp_path / "l.tif", labels.astype(np.uint8)[None], crs="EPSG:32633", nodata=255,
                         transform=from_origin(0, 300, 1, 1))  # fmt: skip
    stats = write_label_pyramid(path, tmp_path / "t", classes=4)  # class 4 is beyond the names: not drawn
    assert stats.max_zoom == 2 and stats.counts is not None
    assert stats.counts[:4].tolist() == [int((labels == k).sum()) for k in range(4)]
    tile = np.asarray(Image.open(tmp_path / "t" / "2" / "1" / "0.png"))
    expected = labels[:256, 256:512].copy()
    expected[expected == 4] = 255
    assert tile.shape == (TILE, TILE) and (tile == expected).all()
    corner = np.asarray(Image.open(tmp_path / "t" / "2" / "2" / "1.png"))
    assert (corner[44:, :] == 255).all() and (corner[:, 8:] == 255).all()  # padding past the raster's edge


def test_outlines_capped_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = ((np.indices((64, 64)) // 4).sum(axis=0) % 2).astype(np.uint8)  # 256 squares of 4×4 pixels
    path = write_geotiff(tmp_path / "c.tif", labels[None], crs="EPSG:32633", transform=from_origin(0, 64, 1, 1),
                         tags=class_names_tag(["a", "b"]))  # fmt: skip
    vectorize(path, tmp_path / "c.gpkg")
    monkeypatch.setattr(polygons, "MAX_VERTICES", 50 * 5)  # 50 squares of 4 vertices (+ closing point)
    page = tmp_path / "c.html"
    write_prediction_page(page, PredictionInputs(labels=path, polygons=tmp_path / "c.gpkg"))
    assert "Outlines of the 50 largest of" in page.read_text()
    text = (tmp_path / "c_files" / "polygons.js").read_text()
    levels = json.loads(text.split("=", 1)[1].rstrip().rstrip(";"))
    assert len(levels[0]["polygons"]) == 50
    assert levels[-1]["minZoom"] < 0


def test_vendored_files_are_package_data() -> None:
    """Every file under static/ is matched by pyproject's package-data, so a wheel ships it; licences present."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["rs_deeplab.report"]
    files = [PurePosixPath(p.relative_to(STATIC.parent).as_posix()) for p in STATIC.rglob("*") if p.is_file()]
    assert files and all(any(f.match(pat) and len(f.parts) == len(PurePosixPath(pat).parts) for pat in patterns)
                         for f in files), [f for f in files if not any(f.match(p) for p in patterns)]  # fmt: skip
    for name, needed in LIBRARIES.items():
        assert all((STATIC / name / entry).exists() for entry in needed), name
    versions = (STATIC / "VERSIONS.md").read_text()
    assert "| leaflet | 1.9.4 |" in versions and "| proj4 | 2.22.0 |" in versions
