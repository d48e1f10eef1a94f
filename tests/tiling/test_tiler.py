"""Tiler in one process: georeferencing, padding, labels (colour, index, vector), filters and the index."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.grid import window_grid
from rs_deeplab.geo.raster import quiet_georeferencing
from rs_deeplab.labels.classes import IGNORE_INDEX, SCHEMES
from rs_deeplab.tiling.index import read_index
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
from tests.conftest import DEFAULT_TRANSFORM, RasterFactory

POTSDAM = SCHEMES["potsdam"]


def _classes(rng: np.random.Generator, height: int, width: int, n: int = 6) -> np.ndarray:
    cells = rng.integers(0, n, (height // 8 + 1, width // 8 + 1)).astype(np.uint8)
    return np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:height, :width]


def _check_crops(out: Path, scene: Path, label_ids: np.ndarray | None, size: int, stride: int) -> None:
    """Every crop: transform, CRS, dtype, bands, nodata, descriptions and pixels match the scene's window."""
    tiles, _ = read_index(out / "index.gpkg")
    with rasterio.open(scene) as src:
        data, fill = src.read(), 0 if src.nodata is None else src.nodata
        windows = window_grid(src.height, src.width, size, stride)
        assert len(tiles) == len(windows)
        for w, row in zip(windows, tiles.itertuples(), strict=True):
            assert (row.row_off, row.col_off, row.width, row.height) == (w.row_off, w.col_off, w.width, w.height)
            with rasterio.open(out / row.image) as crop:
                assert crop.transform == src.transform @ Affine.translation(w.col_off, w.row_off)
                assert crop.crs == src.crs
                assert (crop.count, crop.dtypes, crop.width, crop.height) == (src.count, src.dtypes, size, size)
                assert crop.nodata == src.nodata or (np.isnan(crop.nodata) and np.isnan(src.nodata))
                assert crop.descriptions == src.descriptions
                pixels = crop.read()
            expected = np.full((src.count, size, size), fill, dtype=data.dtype)
            expected[:, : w.height, : w.width] = data[
                :, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width
            ]
            np.testing.assert_array_equal(pixels, expected)
            if label_ids is None:
                assert row.label == ""
                continue
            with rasterio.open(out / row.label) as lab:
                assert lab.transform == crop.transform and lab.crs == src.crs and lab.dtypes == ("uint8",)
                got = lab.read(1)
            want = np.full((size, size), IGNORE_INDEX, np.uint8)
            want[: w.height, : w.width] = label_ids[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("bands", "dtype", "crs", "nodata", "shape", "descriptions"),
    [
        (4, "uint8", "EPSG:32633", None, (150, 233), ("red", "green", "blue", "nir")),
        (1, "uint16", "EPSG:4326", 0, (97, 61), None),
        (2, "float32", "EPSG:3857", float("nan"), (40, 30), ("a", "b")),
    ],
)
def test_crops_keep_georeferencing_and_pixels(
    make_raster: RasterFactory,
    rng: np.random.Generator,
    tmp_path: Path,
    bands: int,
    dtype: str,
    crs: str,
    nodata: float | None,
    shape: tuple[int, int],
    descriptions: tuple[str, ...] | None,
) -> None:
    data = (rng.random((bands, *shape)) * 1000).astype(dtype)
    transform = Affine(1e-5, 0, 13.4, 0, -1e-5, 52.5) if crs == "EPSG:4326" else DEFAULT_TRANSFORM
    scene = make_raster(data, crs=crs, transform=transform, nodata=nodata, descriptions=descriptions)
    ids = _classes(rng, *shape)
    label = make_raster(POTSDAM.encode_colours(ids), "label.tif", crs=crs, transform=transform)
    summary = tile_scenes([SceneSpec(scene, label)], tmp_path / "out", size=64, stride=48, scheme="potsdam", workers=1)
    assert summary.crops == summary.windows == len(window_grid(*shape, 64, 48))
    _check_crops(tmp_path / "out", scene, ids, 64, 48)


def test_scene_smaller_than_window_is_padded_and_counted(make_raster: RasterFactory, tmp_path: Path) -> None:
    scene = make_raster(np.full((3, 20, 30), 7, np.uint8), nodata=None)
    label = make_raster(np.ones((20, 30), np.uint8), "label.tif")
    summary = tile_scenes([SceneSpec(scene, label)], tmp_path / "out", size=64, workers=1)
    assert summary.crops == 1
    _check_crops(tmp_path / "out", scene, np.ones((20, 30), np.uint8), 64, 32)
    tiles, classes = read_index(tmp_path / "out" / "index.gpkg")
    assert tiles.loc[0, "valid_fraction"] == pytest.approx(600 / 64**2)
    assert (tiles.loc[0, "n_1"], tiles.loc[0, "n_ignore"]) == (600, 64**2 - 600)
    assert list(classes["name"]) == ["1", "ignore"]  # no scheme: the class values seen, plus ignore


def test_png_scene_keeps_pixel_coordinates_without_warnings(tmp_path: Path, rng: np.random.Generator) -> None:
    png, mask = tmp_path / "scene.png", tmp_path / "mask.png"
    data = rng.integers(0, 255, (3, 70, 90), dtype=np.uint8)
    ids = _classes(rng, 70, 90, 8)
    with quiet_georeferencing():
        for path, array in ((png, data), (mask, ids[np.newaxis])):
            with rasterio.open(path, "w", driver="PNG", width=90, height=70, count=len(array), dtype="uint8") as dst:
                dst.write(array)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tile_scenes([SceneSpec(png, mask)], tmp_path / "out", size=32, stride=32, scheme="loveda", workers=1)
    tiles, _ = read_index(tmp_path / "out" / "index.gpkg")
    assert tiles.crs is None
    loveda = SCHEMES["loveda"].decode(ids)
    for row in tiles.itertuples():
        with rasterio.open(tmp_path / "out" / row.image) as crop, rasterio.open(tmp_path / "out" / row.label) as lab:
            assert crop.crs is None and crop.transform == Affine.translation(row.col_off, row.row_off)
            window = np.s_[row.row_off : row.row_off + 32, row.col_off : row.col_off + 32]
            np.testing.assert_array_equal(crop.read(), data[(slice(None), *window)])
            np.testing.assert_array_equal(lab.read(1), loveda[window])
        assert row.geometry.bounds == (row.col_off, row.row_off, row.col_off + 32, row.row_off + 32)


def test_index_rows_footprints_counts_and_classes(
    make_raster: RasterFactory, tmp_path: Path, rng: np.random.Generator
) -> None:
    ids = _classes(rng, 100, 140)
    ids[:5] = 200  # an unknown colour decodes to ignore
    colours = POTSDAM.encode_colours(ids)
    scene = make_raster(rng.integers(0, 255, (4, 100, 140), dtype=np.uint8))
    label = make_raster(colours, "label.tif")
    tile_scenes([SceneSpec(scene, label, "val")], tmp_path / "out", size=64, stride=32, scheme="potsdam", workers=1)
    tiles, classes = read_index(tmp_path / "out" / "index.gpkg")
    assert tiles.crs == "EPSG:32633"
    assert list(classes["name"]) == [*POTSDAM.classes, "ignore"] and set(classes["scheme"]) == {"potsdam"}
    published = ["scene", "split", "row_off", "col_off", "width", "height", "valid_fraction", "image", "label"]
    assert list(tiles.columns[:10]) == [*published, "scene_path"]  # the index's columns, in order
    assert list(zip(tiles.row_off, tiles.col_off, strict=True)) == sorted(
        zip(tiles.row_off, tiles.col_off, strict=True)
    )
    assert set(tiles.split) == {"val"} and set(tiles.scene) == {"scene"} and (tiles.valid_fraction == 1.0).all()
    decoded = np.where(ids == 200, IGNORE_INDEX, ids)
    for row in tiles.itertuples():
        x0, y0 = DEFAULT_TRANSFORM @ (row.col_off, row.row_off)
        assert row.geometry.hausdorff_distance(shapely.box(x0, y0 - 6.4, x0 + 6.4, y0)) < 1e-6
        crop = decoded[row.row_off : row.row_off + 64, row.col_off : row.col_off + 64]
        counts = [getattr(row, col) for col in classes["column"]]
        assert counts == [int((crop == cid).sum()) for cid in classes["class_id"]]


def test_min_valid_skips_crops_and_counts_them(make_raster: RasterFactory, tmp_path: Path) -> None:
    data = np.full((2, 128, 128), 9, np.uint16)
    data[:, :, :80] = 0  # nodata on the left
    data[1, 10, 10] = 5  # one band valid is a valid pixel
    scene = make_raster(data, nodata=0)
    summary = tile_scenes([scene], tmp_path / "out", size=64, stride=32, min_valid=0.5, workers=1)
    valid = np.any(data != 0, axis=0)
    fractions = {(w.row_off, w.col_off): valid[w.window.toslices()].mean() for w in window_grid(128, 128, 64, 32)}
    kept = {k for k, v in fractions.items() if v >= 0.5}
    assert (summary.windows, summary.crops, summary.skipped) == (9, len(kept), 9 - len(kept))
    tiles, _ = read_index(tmp_path / "out" / "index.gpkg")
    assert set(zip(tiles.row_off, tiles.col_off, strict=True)) == kept
    assert len(list((tmp_path / "out" / "images").iterdir())) == len(kept)
    for row in tiles.itertuples():
        assert row.valid_fraction == pytest.approx(fractions[(row.row_off, row.col_off)])


def test_vector_labels_are_reprojected_and_rasterized(make_raster: RasterFactory, tmp_path: Path) -> None:
    scene = make_raster(np.zeros((3, 90, 120), np.uint8))
    polys_utm = [
        shapely.box(368_001, 5_807_993, 368_006, 5_807_999),
        shapely.box(368_005, 5_807_995, 368_011, 5_807_998),
    ]
    frame = gpd.GeoDataFrame({"kind": ["building", "tree"]}, geometry=polys_utm, crs="EPSG:32633")
    frame.to_crs("EPSG:4326").to_file(tmp_path / "polys.gpkg")
    summary = tile_scenes(
        [SceneSpec(scene, tmp_path / "polys.gpkg")],
        tmp_path / "out",
        size=64,
        stride=32,
        scheme="potsdam",
        label_field="kind",
        label_fill=0,
        workers=1,
    )
    assert summary.crops == 6
    expected = rasterize(
        [(g, c) for g, c in zip(frame.geometry, [1, 3], strict=True)],
        out_shape=(90, 120),
        transform=DEFAULT_TRANSFORM,
        fill=0,
        dtype=np.uint8,
    )
    assert {1, 3} <= set(np.unique(expected))
    tiles, _ = read_index(tmp_path / "out" / "index.gpkg")
    for row in tiles.itertuples():
        with rasterio.open(tmp_path / "out" / row.label) as lab:
            got = lab.read(1)[: row.height, : row.width]
        crop = expected[row.row_off : row.row_off + row.height, row.col_off : row.col_off + row.width]
        assert (got != crop).mean() < 0.01  # reprojection round trip may move an edge pixel


def test_vector_label_map_and_field_errors(make_raster: RasterFactory, tmp_path: Path) -> None:
    scene = make_raster(np.zeros((1, 40, 40), np.uint8))
    gpd.GeoDataFrame(
        {"code": ["house", "road"]}, geometry=[shapely.box(368_000, 5_807_998, 368_002, 5_808_000)] * 2, crs=32633
    ).to_file(tmp_path / "p.geojson")
    spec = [SceneSpec(scene, tmp_path / "p.geojson")]
    with pytest.raises(InputError, match="no attribute 'cls'"):
        tile_scenes(spec, tmp_path / "a", size=32, label_field="cls", workers=1)
    with pytest.raises(InputError, match=r"values \['road'\] .* --label-map road=ID"):  # a fixed list of classes
        tile_scenes(spec, tmp_path / "b", size=32, label_field="code", classes=["house"], workers=1)
    summary = tile_scenes(
        spec, tmp_path / "c", size=32, label_field="code", label_map={"house": 1, "road": 2}, workers=1
    )
    assert summary.crops == 4
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"array": np.zeros((3, 50, 41), np.uint8)}, "41×50 pixels vs 40×50"),
        ({"crs": "EPSG:32632"}, "CRS EPSG:32632"),
        ({"transform": Affine(0.2, 0, 368_000, 0, -0.2, 5_808_000)}, "geotransform"),
    ],
)
def test_label_raster_off_the_scene_grid_is_refused(
    make_raster: RasterFactory, tmp_path: Path, change: dict, message: str
) -> None:
    scene = make_raster(np.zeros((3, 50, 40), np.uint8))
    label = make_raster(**{"array": np.zeros((3, 50, 40), np.uint8), "name": "label.tif", **change})
    with pytest.raises(RasterError, match=message):
        tile_scenes([SceneSpec(scene, label)], tmp_path / "out", size=32, scheme="potsdam", workers=1)
    assert not (tmp_path / "out").exists()


def test_colour_labels_without_scheme_and_duplicate_names_are_refused(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    scene = make_raster(np.zeros((3, 50, 40), np.uint8))
    label = make_raster(np.zeros((3, 50, 40), np.uint8), "label.tif")
    with pytest.raises(InputError, match="--scheme"):
        tile_scenes([SceneSpec(scene, label)], tmp_path / "out", size=32, workers=1)
    with pytest.raises(InputError, match="different file names"):
        tile_scenes([scene, scene], tmp_path / "out", size=32, workers=1)
    assert not (tmp_path / "out").exists()


def test_scenes_in_different_crs_share_one_index_layer(make_raster: RasterFactory, tmp_path: Path) -> None:
    from rasterio.warp import transform_geom

    a = make_raster(np.zeros((1, 40, 40), np.uint8), "a.tif")
    b = make_raster(
        np.zeros((1, 40, 40), np.uint8),
        "b.tif",
        crs="EPSG:32632",
        transform=Affine(0.1, 0, 800_000, 0, -0.1, 5_810_000),
    )
    tile_scenes([a, b], tmp_path / "out", size=40, workers=1)
    tiles, _ = read_index(tmp_path / "out" / "index.gpkg")
    assert tiles.crs == "EPSG:32633" and list(tiles.scene_crs) == ["EPSG:32633", "EPSG:32632"]
    own = shapely.box(800_000, 5_809_996, 800_004, 5_810_000)
    expected = shapely.geometry.shape(transform_geom("EPSG:32632", "EPSG:32633", shapely.geometry.mapping(own)))
    assert tiles.geometry[1].hausdorff_distance(expected) < 1e-3


def test_georeferenced_and_pixel_scenes_do_not_mix(make_raster: RasterFactory, tmp_path: Path) -> None:
    a = make_raster(np.zeros((1, 40, 40), np.uint8), "a.tif")
    with quiet_georeferencing():
        b = make_raster(np.zeros((1, 40, 40), np.uint8), "b.tif", crs=None, transform=Affine.identity())
    with pytest.raises(InputError, match="some scenes are georeferenced and some are not"):
        tile_scenes([a, b], tmp_path / "out", size=40, workers=1)
