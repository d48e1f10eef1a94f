"""vectorize(): attributes, areas in metres, class selection, cleaning, outputs, memory bound and real data."""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import subprocess
import tracemalloc

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.vectorize import class_names_tag, read_class_names, vectorize
from tests.conftest import REAL_DATA

REAL = REAL_DATA
needs_real = pytest.mark.real_data  # fails (never skips) where ../shared/data/real is missing: see conftest
PIXEL_AREA = 0.01  # conftest rasters: EPSG:32633, 10 cm pixels


def blocks_of_classes(seed: int = 0, shape: tuple[int, int] = (40, 60)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 4, (shape[0] // 5, shape[1] // 5))
    return np.kron(low, np.ones((5, 5), dtype=np.int64)).astype(np.uint8)


def test_attributes_areas_and_nodata(make_raster, tmp_path):
    array = np.zeros((20, 30), dtype=np.uint8)
    array[2:7, 3:7] = 1  # 5 rows x 4 columns
    array[:, 25:] = 255
    path = make_raster(array, nodata=255, tags=class_names_tag(["ground", "roof"]))
    summary = vectorize(path, tmp_path / "out.gpkg")
    df = gpd.read_file(tmp_path / "out.gpkg", layer="labels")
    assert list(df.columns) == ["class_id", "class_name", "area_m2", "perimeter_m", "geometry"]
    assert df.crs.to_epsg() == 32633 and summary.crs == "EPSG:32633"
    roof = df[df.class_id == 1].iloc[0]
    assert roof.class_name == "roof"
    assert roof.area_m2 == pytest.approx(20 * PIXEL_AREA)
    assert roof.perimeter_m == pytest.approx(2 * (0.5 + 0.4))
    assert df.area_m2.sum() == pytest.approx((array != 255).sum() * PIXEL_AREA)
    assert shapely.union_all(df.geometry.values).area == pytest.approx((array != 255).sum() * PIXEL_AREA)
    assert summary.polygons == 2 and summary.counts == {"ground": 1, "roof": 1}


def test_class_names_tag_round_trip_and_fallbacks(make_raster, tmp_path):
    path = make_raster(np.zeros((4, 4), dtype=np.uint8), tags=class_names_tag(["a", "b"]))
    with rasterio.open(path) as src:
        assert read_class_names(src) == ["a", "b"]
    bad = make_raster(np.zeros((4, 4), dtype=np.uint8), name="bad.tif", tags={"CLASS_NAMES": "not json"})
    with rasterio.open(bad) as src:
        assert read_class_names(src) is None
    array = np.array([[0, 3], [3, 3]], dtype=np.uint8)
    plain = make_raster(array, name="plain.tif")
    assert set(vectorize(plain, tmp_path / "a.gpkg").counts) == {"class_0", "class_3"}
    assert set(vectorize(plain, tmp_path / "b.gpkg", class_names=list("wxyz")).counts) == {"w", "z"}
    with pytest.raises(InputError, match="unique"):
        class_names_tag(["a", "a"])


def test_raster_nodata_value_is_never_polygonized(make_raster, tmp_path):
    array = np.array([[0, 0, 1], [0, 2, 1]], dtype=np.uint8)
    summary = vectorize(make_raster(array, nodata=0), tmp_path / "out.gpkg")
    assert summary.counts == {"class_1": 1, "class_2": 1}


def test_classes_and_exclude_select_by_name(make_raster, tmp_path):
    path = make_raster(blocks_of_classes(), tags=class_names_tag(["ground", "roof", "tree", "clutter"]))
    only = vectorize(path, tmp_path / "only.gpkg", classes=["roof", "tree"])
    assert set(only.counts) == {"roof", "tree"}
    without = vectorize(path, tmp_path / "without.gpkg", exclude=["clutter"])
    assert set(without.counts) == {"ground", "roof", "tree"}
    by_id = vectorize(path, tmp_path / "id.gpkg", classes=[1])
    assert set(by_id.counts) == {"roof"}
    with pytest.raises(InputError, match=r"unknown class 'house' in classes; valid names: ground, roof, tree, clutter"):
        vectorize(path, tmp_path / "bad.gpkg", classes=["house"])


def geodesic(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    geod = pyproj.Geod(ellps="WGS84")
    pairs = [geod.geometry_area_perimeter(g) for g in geoms]
    return np.abs([a for a, _ in pairs]), np.array([p for _, p in pairs])


def test_geographic_raster_gets_true_square_metres(make_raster, tmp_path):
    transform = Affine(1e-4, 0.0, 10.0, 0.0, -1e-4, 60.0)  # ~5.6 m x 11 m pixels at 60°N
    path = make_raster(blocks_of_classes(1), crs="EPSG:4326", transform=transform)
    summary = vectorize(path, tmp_path / "out.gpkg", block_size=16)
    assert summary.area_method == "equal-area"
    df = gpd.read_file(tmp_path / "out.gpkg")
    area, perimeter = geodesic(df.geometry.values)
    np.testing.assert_allclose(df.area_m2, area, rtol=1e-3)
    np.testing.assert_allclose(df.perimeter_m, perimeter, rtol=5e-3)
    assert df.area_m2.sum() == pytest.approx(area.sum(), rel=1e-4)


def test_web_mercator_areas_are_corrected(make_raster, tmp_path):
    transform = Affine(10.0, 0.0, 1_000_000.0, 0.0, -10.0, 8_400_000.0)  # ~60°N: Mercator inflates areas ~4x
    path = make_raster(blocks_of_classes(2), crs="EPSG:3857", transform=transform)
    summary = vectorize(path, tmp_path / "out.gpkg", to_crs="EPSG:4326")
    assert summary.area_method == "equal-area" and summary.crs == "EPSG:4326"
    df = gpd.read_file(tmp_path / "out.gpkg")
    assert df.crs.to_epsg() == 4326
    np.testing.assert_allclose(df.area_m2, geodesic(df.geometry.values)[0], rtol=2e-3)


def test_to_crs_moves_geometries_but_not_areas(make_raster, tmp_path):
    path = make_raster(blocks_of_classes(3))
    native = vectorize(path, tmp_path / "native.gpkg")
    moved = vectorize(path, tmp_path / "moved.gpkg", to_crs="EPSG:4326")
    a, b = gpd.read_file(tmp_path / "native.gpkg"), gpd.read_file(tmp_path / "moved.gpkg")
    assert b.crs.to_epsg() == 4326 and b.total_bounds[0] > 10 and b.total_bounds[3] < 60
    assert b.is_valid.all() and len(a) == len(b) == native.polygons == moved.polygons
    np.testing.assert_allclose(np.sort(a.area_m2), np.sort(b.area_m2))
    assert b.to_crs(32633).area.sum() == pytest.approx(a.area.sum(), rel=1e-6)
    with pytest.raises(InputError, match="cannot understand CRS"):
        vectorize(path, tmp_path / "bad.gpkg", to_crs="EPSG:nope")


def test_geopackage_has_one_indexed_layer(make_raster, tmp_path):
    out = tmp_path / "labels.gpkg"
    summary = vectorize(make_raster(blocks_of_classes(4)), out, block_size=16)
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall() == [("labels", "features")]
        column, kind = db.execute("SELECT column_name, geometry_type_name FROM gpkg_geometry_columns").fetchone()
        assert kind == "POLYGON"
        assert db.execute(f"SELECT count(*) FROM rtree_labels_{column}").fetchone()[0] == summary.polygons
        assert db.execute("SELECT count(*) FROM gpkg_extensions WHERE extension_name = 'gpkg_rtree_index'").fetchone()
    info = pyogrio.read_info(out, layer="labels")
    assert info["features"] == summary.polygons and info["geometry_type"] == "Polygon"
    if shutil.which("ogrinfo"):  # GDAL's CLI is optional on developer machines
        listing = subprocess.run(["ogrinfo", "-so", str(out), "labels"], capture_output=True, text=True, check=True)
        assert f"Feature Count: {summary.polygons}" in listing.stdout


def test_geojson_and_geoparquet_by_extension(make_raster, tmp_path):
    path = make_raster(blocks_of_classes(5))
    summary = vectorize(path, tmp_path / "out.geojson")
    df = gpd.read_file(tmp_path / "out.geojson")
    assert len(df) == summary.polygons and df.crs.to_epsg() == 32633
    assert pyogrio.list_layers(tmp_path / "out.geojson")[0][0] == "labels"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.geojson", "scene.tif"]
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(InputError, match="GeoParquet needs the pyarrow package"):
            vectorize(path, tmp_path / "out.parquet")
        assert not (tmp_path / "out.parquet").exists()
    else:
        vectorize(path, tmp_path / "out.parquet")
        assert len(gpd.read_parquet(tmp_path / "out.parquet")) == summary.polygons


def test_empty_result_writes_an_empty_layer_with_the_schema(make_raster, tmp_path):
    path = make_raster(np.full((10, 10), 255, dtype=np.uint8), nodata=255)
    summary = vectorize(path, tmp_path / "empty.gpkg", extra_columns={"scene": "s1"})
    info = pyogrio.read_info(tmp_path / "empty.gpkg", layer="labels")
    assert summary.polygons == 0 and info["features"] == 0
    assert list(info["fields"]) == ["class_id", "class_name", "area_m2", "perimeter_m", "scene"]
    assert info["geometry_type"] == "Polygon" and info["crs"] == "EPSG:32633"
    assert gpd.read_file(tmp_path / "empty.gpkg").empty


def test_append_scenes_into_one_geopackage(make_raster, tmp_path):
    out = tmp_path / "all.gpkg"
    first = vectorize(make_raster(blocks_of_classes(6), name="a.tif"), out, extra_columns={"scene": "a"}, mode="a")
    second = vectorize(make_raster(blocks_of_classes(7), name="b.tif"), out, extra_columns={"scene": "b"}, mode="a")
    df = gpd.read_file(out)
    assert len(df) == first.polygons + second.polygons
    assert df.scene.value_counts().to_dict() == {"a": first.polygons, "b": second.polygons}
    with pytest.raises(InputError, match="has no column"):
        vectorize(make_raster(blocks_of_classes(8), name="c.tif"), out, extra_columns={"tile": "c"}, mode="a")
    with pytest.raises(InputError, match="only supported for GeoPackage"):
        vectorize(make_raster(blocks_of_classes(8), name="c.tif"), tmp_path / "x.geojson", mode="a")
    assert len(gpd.read_file(out)) == len(df)
    (tmp_path / "notes.gpkg").write_text("not a GeoPackage")
    with pytest.raises(InputError, match="cannot append, not a GeoPackage"):
        vectorize(make_raster(blocks_of_classes(8), name="c.tif"), tmp_path / "notes.gpkg", mode="a")


def test_computed_columns_get_a_value_per_polygon(make_raster, tmp_path):
    path = make_raster(blocks_of_classes(3))
    with rasterio.open(path) as src:
        mid_x = (src.bounds.left + src.bounds.right) / 2

    def side(geoms: np.ndarray) -> np.ndarray:  # which half of the raster a polygon's centroid lies in
        x = shapely.get_x(shapely.centroid(geoms))
        return np.where(x < mid_x, "west", "east")

    summary = vectorize(
        path,
        tmp_path / "out.gpkg",
        extra_columns={"scene": "s"},
        computed_columns={"half": side},
        block_size=16,
        to_crs="EPSG:4326",
    )
    df = gpd.read_file(tmp_path / "out.gpkg")
    assert list(df.columns[:6]) == ["class_id", "class_name", "area_m2", "perimeter_m", "scene", "half"]
    west = df.to_crs(32633).geometry.centroid.x < mid_x  # computed in the raster's CRS, before reprojection
    assert len(df) == summary.polygons and set(df.half) == {"west", "east"}
    assert (df.half == np.where(west, "west", "east")).all()
    empty = make_raster(np.full((10, 10), 255, dtype=np.uint8), nodata=255, name="empty.tif")
    vectorize(empty, tmp_path / "empty.gpkg", computed_columns={"half": side})
    assert list(pyogrio.read_info(tmp_path / "empty.gpkg", layer="labels")["fields"])[-1] == "half"
    with pytest.raises(InputError, match="given twice"):
        vectorize(path, tmp_path / "x.gpkg", extra_columns={"half": "a"}, computed_columns={"half": side})


def test_failed_run_leaves_previous_output_untouched(make_raster, tmp_path):
    out = tmp_path / "out.gpkg"
    vectorize(make_raster(blocks_of_classes(9), name="good.tif"), out)
    before = out.read_bytes()
    array = np.zeros((40, 40), dtype=np.uint32)
    array[-1, -1] = 2**32 - 1  # only the last block is unreadable as 32-bit signed labels
    with pytest.raises(RasterError, match="label values outside"):
        vectorize(make_raster(array, name="bad.tif"), out, block_size=8)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", "good.tif", "out.gpkg"]


@pytest.mark.parametrize("block_size", [7, 64])
def test_fill_holes_absorbs_enclaves_and_min_area_drops_specks(make_raster, tmp_path, block_size):
    array = np.zeros((30, 30), dtype=np.uint8)
    array[4:26, 4:26] = 1
    array[6:8, 6:8] = 2  # 4-pixel enclave: its hole gets filled
    array[12:20, 12:20] = 3  # 64-pixel enclave: stays
    array[14, 14:16] = 2  # a 2-pixel speck inside the big enclave: its hole gets filled too
    array[0, 29] = 2  # a speck on the background
    path = make_raster(array)
    summary = vectorize(path, tmp_path / "out.gpkg", fill_holes=0.1, min_area=0.015, block_size=block_size)
    df = gpd.read_file(tmp_path / "out.gpkg")
    assert summary.holes_filled == 2 and summary.absorbed == 2  # the 2x2 enclave and the speck in class 3
    assert summary.dropped_small == 1  # the speck on the background
    roof = df[df.class_id == 1].geometry.iloc[0]
    assert len(roof.interiors) == 1 and roof.area == pytest.approx((22 * 22 - 64) * PIXEL_AREA)
    assert sorted(df.class_id) == [0, 1, 3]
    assert shapely.union_all(df.geometry.values).area == pytest.approx((30 * 30 - 1) * PIXEL_AREA)
    assert df.area.sum() == pytest.approx((30 * 30 - 1) * PIXEL_AREA)  # no overlaps


def test_simplify_keeps_a_clean_coverage_through_the_file(make_raster, tmp_path):
    array = blocks_of_classes(10, (60, 80))
    array[np.random.default_rng(0).random(array.shape) < 0.05] = 2
    exact = vectorize(make_raster(array), tmp_path / "exact.gpkg", block_size=16)
    simple = vectorize(make_raster(array, name="s.tif"), tmp_path / "simple.gpkg", simplify=1.0, block_size=16)
    df = gpd.read_file(tmp_path / "simple.gpkg")
    assert simple.polygons == exact.polygons and df.is_valid.all()
    n_exact = shapely.get_num_coordinates(gpd.read_file(tmp_path / "exact.gpkg").geometry.values).sum()
    assert shapely.get_num_coordinates(df.geometry.values).sum() < 0.9 * n_exact
    assert df.area.sum() == pytest.approx(array.size * PIXEL_AREA)
    assert shapely.union_all(df.geometry.values).area == pytest.approx(array.size * PIXEL_AREA)


@pytest.mark.slow
def test_memory_stays_bounded_by_the_block_not_the_raster(make_raster, tmp_path):
    side = 2000
    yy, xx = np.mgrid[0:side, 0:side]
    array = (((yy // 37) + (xx // 53)) % 4).astype(np.uint8)  # ~2,000 rectangles, many cut by seams
    array[:, :40] = 255
    path = make_raster(array, nodata=255)
    budget = 1_500_000  # bytes of Python/NumPy memory; the raster alone is 4,000,000
    assert array.nbytes > 2 * budget
    del array, yy, xx

    def peak(block_size: int) -> int:
        tracemalloc.start()
        summary = vectorize(path, tmp_path / f"out_{block_size}.gpkg", block_size=block_size)
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert summary.polygons > 1000
        return peak_bytes

    assert peak(256) < budget
    assert peak(side) > budget  # the same run as one block does not fit: the bound above is the blocks' doing


@needs_real
def test_real_polygons_round_trip(tmp_path):
    truth = gpd.read_file(REAL / "new_brunswick" / "BakerLake_2017_clipped.gpkg")
    truth = truth.iloc[np.argsort(-truth.area.values)]  # small polygons burn last, on top
    code = {"1": 0, "2": 1, "3": 2, "4": 3, "255": 255}
    ids = truth.Quatreclasses.map(code).to_numpy()
    with rasterio.open(REAL / "new_brunswick" / "23322E759967N_clipped_1m_1of2.tif") as scene:
        profile, bounds = scene.profile, scene.bounds
    labels = rasterize(
        zip(truth.geometry, ids, strict=True),
        out_shape=(profile["height"], profile["width"]),
        transform=profile["transform"],
        fill=255,
        dtype="uint8",
    )
    raster = tmp_path / "labels.tif"
    write_geotiff(
        raster,
        labels,
        crs=profile["crs"],
        transform=profile["transform"],
        nodata=255,
        tags=class_names_tag(["vegetation", "water", "road", "building"]),
    )
    vectorize(raster, tmp_path / "labels.gpkg", block_size=64)
    ours = gpd.read_file(tmp_path / "labels.gpkg")
    clipped = shapely.intersection(truth.geometry.values, shapely.box(*bounds))
    visible = [shapely.difference(g, shapely.union_all(clipped[k + 1 :])) for k, g in enumerate(clipped)]
    inter = union = 0.0
    for cid in range(4):
        original = shapely.union_all(np.array(visible, dtype=object)[ids == cid])
        mine = shapely.union_all(ours.geometry[ours.class_id == cid].values)
        assert mine.area == pytest.approx(original.area, rel=0.02)
        assert ours.area_m2[ours.class_id == cid].sum() == pytest.approx(original.area, rel=0.02)
        assert shapely.intersection(original, mine).area / shapely.union(original, mine).area >= 0.9
        inter += shapely.intersection(original, mine).area
        union += shapely.union(original, mine).area
    assert inter / union >= 0.95


@needs_real
def test_real_landsat_nodata_stays_out(tmp_path):
    window = Window(0, 0, 330, 300)  # the scene's top-left corner: collar of nodata (0) and land
    with rasterio.open(REAL / "RGB.byte.tif") as src:
        band, crs, transform = src.read(1, window=window), src.crs, src.window_transform(window)
    labels = np.where(band == 0, 255, np.digitize(band, [40, 70, 100])).astype(np.uint8)
    assert 0.1 < (labels == 255).mean() < 0.9
    raster = write_geotiff(tmp_path / "classes.tif", labels, crs=crs, transform=transform, nodata=255)
    summary = vectorize(raster, tmp_path / "classes.gpkg", block_size=64)
    df = gpd.read_file(tmp_path / "classes.gpkg")
    pixel = abs(transform.a * transform.e)
    assert summary.merged > 0 and df.is_valid.all()
    assert df.area_m2.sum() == pytest.approx((labels != 255).sum() * pixel, rel=1e-9)
    burnt = rasterize(
        zip(df.geometry, df.class_id, strict=True), out_shape=labels.shape, transform=transform, fill=255, dtype="uint8"
    )
    assert np.array_equal(burnt, labels)  # every polygon where its class is, none over nodata
