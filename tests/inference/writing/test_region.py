"""A region of tiles as one map, with an oracle model: the mosaic and its polygons equal the whole scene's."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

from rs_deeplab.geo.mosaic import write_region
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.predicting.scene import SceneTask, predict_scene, predict_scenes
from rs_deeplab.inference.writing.region import vectorize_region
from rs_deeplab.vectorize import vectorize
from tests.inference.predicting.test_scene_runs import SlowOracle
from tests.trainkit import blob_scene

TRANSFORM = Affine(0.5, 0, 368_000, 0, -0.5, 5_808_000)
KW = {"size": 48, "stride": 32, "batch_size": 4, "mean": [100.0, 100.0], "std": [50.0, 50.0]}
NAMES = ["a", "b", "c"]
H, W = 150, 170

LAYOUTS = {
    # (row0, row1, col0, col1) windows of the whole scene, one tile each
    "overlap": [(0, 86, 0, 96), (0, 86, 70, 170), (60, 150, 0, 96), (60, 150, 70, 170)],
    "touch": [(0, 75, 0, 85), (0, 75, 85, 170), (75, 150, 0, 85), (75, 150, 85, 170)],
    "holes": [(0, 60, 0, 80), (0, 60, 100, 170), (80, 150, 0, 170)],
    "mixed": [(0, 150, 0, 90), (20, 110, 60, 170), (100, 150, 80, 130)],
}


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-band scene whose classes (band 1 against band 2) form blobs, and the oracle's prediction of it alone."""
    folder = tmp_path_factory.mktemp("whole")
    _, classes = blob_scene(3, 192)
    classes = classes[:H, :W]
    bands = np.stack([np.where(classes % 2 == 0, 200, 20), classes % 3 * 60 + 40]).astype(np.uint8)
    scene = write_geotiff(folder / "whole.tif", bands, crs="EPSG:32633", transform=TRANSFORM)
    predict_scene(SlowOracle(), scene, folder / "whole_labels.tif", class_names=NAMES, **KW)  # type: ignore[arg-type]
    return scene, folder / "whole_labels.tif"


def cut(scene: Path, windows: list[tuple[int, int, int, int]], folder: Path) -> list[Path]:
    with rasterio.open(scene) as src:
        data = src.read()
    out = []
    for i, (r0, r1, c0, c1) in enumerate(windows):
        t = TRANSFORM @ Affine.translation(c0, r0)
        out.append(write_geotiff(folder / f"tile_{i}.tif", data[:, r0:r1, c0:c1], crs="EPSG:32633", transform=t))
    return out


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_mosaic_of_tiles_equals_the_whole_scene(layout: str, whole: tuple[Path, Path], tmp_path: Path) -> None:
    scene, truth_path = whole
    windows = LAYOUTS[layout]
    tiles = cut(scene, windows, tmp_path)
    tasks = [SceneTask(t, tmp_path / f"pred_{t.stem}.tif") for t in tiles]
    results = predict_scenes(SlowOracle(), tasks, class_names=NAMES, **KW)  # type: ignore[arg-type]
    region = write_region([r.labels for r in results], tmp_path / "region.vrt")
    truth = read(truth_path)
    mosaic = read(region.vrt)
    with rasterio.open(region.vrt) as ds:
        assert ds.transform == TRANSFORM and ds.nodata == 255
    covered = np.zeros((H, W), bool)
    for r0, r1, c0, c1 in windows:
        covered[r0:r1, c0:c1] = True
    assert mosaic.shape == (H, W)
    np.testing.assert_array_equal(mosaic[covered], truth[covered])  # no seam: the whole scene's labels, exactly
    assert (mosaic[~covered] == 255).all() and (~covered).any() == (layout in ("holes", "mixed"))
    # polygons: objects cut by tile edges are whole again, as in the scene vectorized alone
    names = [t.stem for t in tiles]
    count = vectorize_region(
        region, names, tmp_path / "region.gpkg", class_names=NAMES, min_area=0, simplify=0, quiet=True
    )
    polygons = gpd.read_file(tmp_path / "region.gpkg")
    if layout in ("overlap", "touch"):
        vectorize(truth_path, tmp_path / "whole.gpkg")
        alone = gpd.read_file(tmp_path / "whole.gpkg")
        assert count == len(polygons) == len(alone)
        key = ["class_id", "area_m2"]
        mine, theirs = polygons.sort_values(key)[key].to_numpy(), alone.sort_values(key)[key].to_numpy()
        np.testing.assert_allclose(mine.astype(float), theirs.astype(float))
    across = polygons[polygons.scene.str.contains(",")]
    assert (len(across) > 0) == (layout != "holes") and set(polygons.scene.str.split(",").explode()) <= set(names)
    assert (polygons.scene != "").all()
