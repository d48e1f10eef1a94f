"""The tiler's unit of work on real GeoTIFFs: one strip of window rows read once, its crops written georeferenced."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rs_deeplab.geo.grid import window_grid
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.tiling import crops
from rs_deeplab.tiling.crops import CropSettings, SceneJob, load_part, remove_stale_temporaries
from rs_deeplab.tiling.labels import LabelSource

TRANSFORM = Affine(0.25, 0, 368_010.5, 0, -0.25, 5_808_003.25)
CRS = "EPSG:32633"
BANDS = ("red", "green", "nir")
SIZE, STRIDE = 64, 40


def out_folder(tmp_path: Path) -> Path:
    out = tmp_path / "tiles"
    for sub in (crops.IMAGES, crops.LABELS):
        (out / sub).mkdir(parents=True)
    return out


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile | {"descriptions": ds.descriptions}


def test_a_strip_of_window_rows_writes_crops_georeferenced_like_their_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    height, width = 150, 110
    image = rng.integers(1, 60_000, (3, height, width)).astype(np.uint16)
    image[:, 100:, :30] = 0  # nodata
    labels = rng.integers(0, 3, (height, width)).astype(np.uint8)
    labels[:, :7] = 255
    scene = write_geotiff(tmp_path / "scene.tif", image, crs=CRS, transform=TRANSFORM, nodata=0, descriptions=BANDS)
    label = write_geotiff(tmp_path / "label.tif", labels, crs=CRS, transform=TRANSFORM)
    out = out_folder(tmp_path)
    job = SceneJob("scene", str(scene), LabelSource(str(label)), "train", height, width, pixel_bytes=6)
    settings = CropSettings(str(out), SIZE, STRIDE, 0.0, None, None, ("a", "b", "c"))
    grid = window_grid(height, width, SIZE, STRIDE)
    row_offs = sorted({w.row_off for w in grid})
    strip = row_offs[-2:]  # the last two rows of windows (the last shifted inward), not the first
    assert len(strip) == 2 and strip[-1] == height - SIZE

    records = crops.tile_rows(job, strip, settings)
    expected = sorted((w.row_off, w.col_off) for w in grid if w.row_off in strip)
    assert sorted((r["row_off"], r["col_off"]) for r in records) == expected
    assert len(os.listdir(out / crops.IMAGES)) == len(expected) == len(os.listdir(out / crops.LABELS))
    for rec in records:
        window = Window(rec["col_off"], rec["row_off"], SIZE, SIZE)
        crop, profile = read(out / rec["image"])
        assert profile["transform"] == window_transform(window, TRANSFORM)  # rasterio's own window transform
        assert profile["transform"] == TRANSFORM @ Affine.translation(rec["col_off"], rec["row_off"])
        assert profile["crs"] == CRS and profile["dtype"] == "uint16" and profile["nodata"] == 0
        assert profile["descriptions"] == BANDS
        rows, cols = window.toslices()
        np.testing.assert_array_equal(crop, image[:, rows, cols])
        crop_label, label_profile = read(out / rec["label"])
        assert label_profile["transform"] == profile["transform"] and label_profile["crs"] == CRS
        assert label_profile["dtype"] == "uint8" and label_profile["nodata"] == 255
        np.testing.assert_array_equal(crop_label[0], labels[rows, cols])
        valid = (crop != 0).any(axis=0)
        assert rec["valid_fraction"] == pytest.approx(valid.mean())
        values, numbers = np.unique(crop_label[0], return_counts=True)  # the crop's label histogram, 255 too
        histogram = {str(v): int(n) for v, n in zip(values, numbers, strict=True)}
        assert {k: v for k, v in rec["counts"].items() if v} == histogram
    # each row of windows is saved once its crops exist: a rerun finds them and rewrites nothing
    saved = [rec for r in strip for rec in (load_part(str(out), job, r) or [])]
    key = lambda rec: (rec["row_off"], rec["col_off"])  # noqa: E731
    assert sorted(saved, key=key) == sorted(records, key=key)
    assert load_part(str(out), job, row_offs[0]) is None
    stamps = {p: p.stat().st_mtime_ns for p in (out / crops.IMAGES).iterdir()}
    assert crops.tile_rows(job, strip, settings) == records
    assert {p: p.stat().st_mtime_ns for p in (out / crops.IMAGES).iterdir()} == stamps
    assert remove_stale_temporaries(out) == 0  # every file was renamed into place


def test_a_scene_shorter_than_a_crop_is_padded_and_polygons_land_on_the_crop_grid(tmp_path: Path) -> None:
    height, width = 50, 100
    image = np.full((3, height, width), 7, np.uint8)
    scene = write_geotiff(tmp_path / "scene.tif", image, crs=CRS, transform=TRANSFORM, nodata=0)
    x0, y0 = TRANSFORM @ (0, 0)
    house = shapely.box(x0 + 3.1, y0 - 9.7, x0 + 11.4, y0 - 2.2)
    lake = shapely.Point(x0 + 18.0, y0 - 6.0).buffer(4.5)
    gpd.GeoDataFrame({"kind": ["house", "lake"]}, geometry=[house, lake], crs=CRS).to_file(tmp_path / "drawn.gpkg")
    source = LabelSource(str(tmp_path / "drawn.gpkg"), "vector", "kind", (("house", 1), ("lake", 2)), 0)
    out = out_folder(tmp_path)
    job = SceneJob("scene", str(scene), source, "val", height, width)
    settings = CropSettings(str(out), SIZE, STRIDE, 0.0, None, None, ("ground", "house", "lake"))
    records = crops.tile_rows(job, [0], settings)
    assert [(r["row_off"], r["col_off"], r["height"]) for r in records] == [(0, 0, height), (0, width - SIZE, height)]
    for rec in records:
        crop, profile = read(out / rec["image"])
        crop_label, _ = read(out / rec["label"])
        transform = window_transform(Window(rec["col_off"], 0, SIZE, SIZE), TRANSFORM)
        assert profile["transform"] == transform and rec["split"] == "val"
        assert (crop[:, :height] == 7).all() and (crop[:, height:] == 0).all()  # padded with nodata
        assert (crop_label[0, height:] == 255).all()  # and labels with ignore
        burnt = rasterize([(house, 1), (lake, 2)], out_shape=(SIZE, SIZE), transform=transform, fill=0, dtype="uint8")
        np.testing.assert_array_equal(crop_label[0, :height], burnt[:height])
        assert rec["valid_fraction"] == pytest.approx(height / SIZE)
    assert {1, 2} <= set(np.unique(read(out / records[0]["label"])[0]))
