"""Tiling own data through the real CLI: shared labels, per-scene splits, held-out blocks, --append, class names.

Most tests use two real orthomosaic clips of New Brunswick (EPSG:2953, 1 m, RGB uint8, overlapping on the ground)
and a GeoPackage of polygons drawn in QGIS (string attribute ``Quatreclasses`` "1".."4" and "255", ``Niveau_2``
names).
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject

from pipelines.tile import main
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.tiling.index import read_index
from tests.conftest import REAL_DATA, RasterFactory

DATA = REAL_DATA / "new_brunswick"
SCENES = [str(DATA / f"23322E759967N_clipped_1m_{i}of2.tif") for i in (1, 2)]
GPKG = str(DATA / "BakerLake_2017_clipped.gpkg")
NAMES = ["Building", "Hydro", "Road", "Train", "Vegetation"]  # Niveau_2 values, sorted
needs_data = pytest.mark.real_data  # fails (never skips) where ../shared/data/real is missing: see conftest
FAST = ["--size", "64", "--stride", "64", "--workers", "1", "-q"]


def _tile(*args: str | Path, out: Path) -> int:
    return main([str(a) for a in args] + ["--out", str(out)])


def _one_error(capsys: pytest.CaptureFixture[str], message: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err[0]


def _label(out: Path, rel: str) -> np.ndarray:
    with rasterio.open(out / rel) as lab:
        return lab.read(1)


def _expected_vector(row: object, field: str, ids: dict[str, int], scene: str) -> np.ndarray:
    """The labels of one crop, rasterized independently from the GeoPackage."""
    frame = gpd.read_file(GPKG)
    with rasterio.open(scene) as src:
        transform = src.transform @ Affine.translation(row.col_off, row.row_off)  # type: ignore[attr-defined]
    shapes = [(g, ids[v]) for g, v in zip(frame.geometry, frame[field], strict=True)]
    return rasterize(shapes, out_shape=(64, 64), transform=transform, fill=255, dtype=np.uint8)


@needs_data
def test_one_geopackage_for_all_scenes_with_numeric_string_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiles"
    assert _tile(*SCENES, "--labels", GPKG, "--label-field", "Quatreclasses", *FAST, out=out) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert set(tiles.scene) == {Path(s).stem for s in SCENES}
    # "1".."4" keep their ids (0 is named so ids and class count agree for training), "255" stays ignore
    assert list(zip(classes.class_id, classes.name, strict=True)) == [
        (0, "0"),
        (1, "1"),
        (2, "2"),
        (3, "3"),
        (4, "4"),
        (255, "ignore"),
    ]
    assert list(classes["values"]) == ["", "1", "2", "3", "4", "255"]  # the attribute values of each class
    assert tiles[["n_1", "n_4"]].to_numpy().sum(axis=0).min() > 0
    ids = {str(i): i for i in (1, 2, 3, 4, 255)}
    for row in tiles.itertuples():
        scene = SCENES[0] if row.scene.endswith("1of2") else SCENES[1]
        expected = _expected_vector(row, "Quatreclasses", ids, scene)[: row.height, : row.width]
        got = _label(out, row.label)[: row.height, : row.width]
        assert (got != expected).mean() < 0.01, row.label


@needs_data
def test_string_attribute_names_the_classes_and_class_lists_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "named"
    assert _tile(*SCENES, "--labels", GPKG, "--label-field", "Niveau_2", *FAST, out=out) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert list(classes.name) == [*NAMES, "ignore"] and list(classes.class_id) == [0, 1, 2, 3, 4, 255]
    assert list(classes["values"]) == [*NAMES, ""]
    assert {"n_Building", "n_Vegetation", "n_ignore"} <= set(tiles.columns)
    row = tiles.sort_values("n_Building").iloc[-1]
    scene = SCENES[0] if row.scene.endswith("1of2") else SCENES[1]
    expected = _expected_vector(row, "Niveau_2", {n: i for i, n in enumerate(NAMES)}, scene)
    assert (_label(out, row.label) != expected).mean() < 0.01

    # the same names given by --classes in another order decide the ids
    order = "Vegetation,Building,Road,Hydro,Train"
    named = ["--labels", GPKG, "--label-field", "Niveau_2", "--classes", order]
    assert _tile(*SCENES, *named, *FAST, out=tmp_path / "o") == 0
    assert list(read_index(tmp_path / "o" / "index.gpkg")[1].name)[:5] == order.split(",")

    bad = [
        (["--label-field", "Quatreclasses", "--classes", "a,b,c"], "have class ids beyond the 3 names of --classes"),
        (["--label-field", "Niveau_2", "--classes", "Building,Road"], "values ['Hydro', 'Train', 'Vegetation']"),
        (["--label-field", "Niveau_2", "--classes", "a,,b"], "needs distinct, non-empty names"),
        (["--label-field", "Niveau_2", "--classes", "Building", "--scheme", "potsdam"], "give one of them"),
    ]
    for args, message in bad:
        assert _tile(*SCENES, "--labels", GPKG, *args, *FAST, out=tmp_path / "bad") == 2
        _one_error(capsys, message)
        assert not (tmp_path / "bad").exists()


def test_shared_label_raster_on_another_grid_is_warped_with_nearest_neighbour(
    make_raster: RasterFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    a = make_raster(rng.integers(0, 255, (3, 100, 130), dtype=np.uint8), "a.tif")
    b = make_raster(  # a second scene east of the first, on a grid shifted by a third of a pixel
        rng.integers(0, 255, (3, 90, 80), dtype=np.uint8),
        "b.tif",
        transform=Affine(0.1, 0, 368_012.033, 0, -0.1, 5_807_996.0),
    )
    # class ids on a coarser (0.3 m) grid in another CRS, covering most but not all of both scenes
    utm = Affine(0.3, 0, 368_001.0, 0, -0.3, 5_808_001.0)
    ids = rng.integers(0, 6, (40, 70), dtype=np.uint8)
    write_geotiff(tmp_path / "utm_labels.tif", ids, crs="EPSG:32633", transform=utm)
    with rasterio.open(tmp_path / "utm_labels.tif") as src, rasterio.vrt.WarpedVRT(src, crs="EPSG:3857") as vrt:
        merc = vrt.read(1)
        write_geotiff(tmp_path / "labels.tif", merc, crs="EPSG:3857", transform=vrt.transform, nodata=255)
    out = tmp_path / "out"
    assert _tile(a, b, "--labels", tmp_path / "labels.tif", *FAST, out=out) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert len(set(tiles.scene)) == 2 and set(classes.class_id) <= {*range(6), 255}
    for row in tiles.itertuples():
        with rasterio.open(out / row.image) as crop:
            expected = np.full((64, 64), 255, np.uint8)
            reproject(
                merc,
                expected,
                src_transform=vrt.transform,
                src_crs="EPSG:3857",
                src_nodata=255,
                dst_transform=crop.transform,
                dst_crs=crop.crs,
                dst_nodata=255,
                resampling=Resampling.nearest,
            )
        got = _label(out, row.label)
        h, w = row.height, row.width
        assert (got[:h, :w] != expected[:h, :w]).mean() < 0.002, row.label
        assert (got[:h, :w] == 255).any() == (expected[:h, :w] == 255).any()
    assert tiles.n_ignore.sum() > 0 and tiles[[f"n_{i}" for i in range(6)]].to_numpy().min() >= 0

    # the label raster of a single scene must still lie on its grid (a wrong file is caught, not resampled)
    assert _tile(a, "--labels", tmp_path / "labels.tif", *FAST, out=tmp_path / "x") == 2
    assert "labels must cover the scene pixel for pixel" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@needs_data
def test_split_takes_one_value_per_scene_or_one_for_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*SCENES, "--labels", GPKG, "--label-field", "Quatreclasses", *FAST]
    assert _tile(*args, "--split", "train", "val", out=tmp_path / "two") == 0
    tiles, _ = read_index(tmp_path / "two" / "index.gpkg")
    assert dict(tiles.groupby("scene").split.unique().map(list)) == {
        Path(SCENES[0]).stem: ["train"],
        Path(SCENES[1]).stem: ["val"],
    }
    assert _tile(*args, "--split", "test", out=tmp_path / "one") == 0
    assert set(read_index(tmp_path / "one" / "index.gpkg")[0].split) == {"test"}
    assert _tile(*args, "--split", "a", "b", "c", out=tmp_path / "bad") == 2
    _one_error(capsys, "got 2 scenes but 3 --split values; give one per scene or one for all")
    assert _tile(*SCENES, "--labels", GPKG, GPKG, GPKG, *FAST, out=tmp_path / "bad") == 2
    _one_error(capsys, "got 2 scenes but 3 --labels; give one label file per scene or one for all")
    assert not (tmp_path / "bad").exists()


def _splits(out: Path) -> tuple[gpd.GeoDataFrame, dict[tuple[str, int, int], str]]:
    tiles, _ = read_index(out / "index.gpkg")
    return tiles, {(r.scene, r.row_off, r.col_off): r.split for r in tiles.itertuples()}


@needs_data
@pytest.mark.parametrize("block", [96, 160])
def test_val_fraction_holds_out_blocks_and_no_pixel_is_in_both_splits(tmp_path: Path, block: int) -> None:
    args = [*SCENES, "--labels", GPKG, "--label-field", "Quatreclasses", "--size", "64", "--stride", "32"]
    args += ["--workers", "1", "-q", "--val-fraction", "0.3", "--block", str(block), "--seed", "7"]
    assert _tile(*args, out=tmp_path / "a") == 0
    tiles, splits = _splits(tmp_path / "a")
    assert set(tiles.split) == {"train", "val"}
    train = shapely.union_all(tiles[tiles.split == "train"].geometry.values)
    val = shapely.union_all(tiles[tiles.split == "val"].geometry.values)
    # the scenes overlap on the ground, and blocks are shared: footprints may touch but never share area
    assert shapely.intersection(train, val).area < 1e-6
    assert 0.1 < val.area / (val.area + train.area) < 0.6
    with rasterio.open(SCENES[0]) as a, rasterio.open(SCENES[1]) as b:
        assert shapely.box(*a.bounds).intersects(shapely.box(*b.bounds))  # the overlap this test relies on
    # every window was considered, and the ones straddling a border are missing from the index
    assert _tile(*args, out=tmp_path / "b") == 0 and _splits(tmp_path / "b")[1] == splits  # deterministic
    assert _tile(*args[:-1], "8", out=tmp_path / "c") == 0 and _splits(tmp_path / "c")[1] != splits  # seeded


@needs_data
def test_val_fraction_bad_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*SCENES, "--labels", GPKG, "--label-field", "Quatreclasses", *FAST]
    bad = [
        (["--val-fraction", "0"], "--val-fraction must be a fraction strictly between 0 and 1, got 0.0"),
        (["--val-fraction", "1"], "strictly between 0 and 1, got 1.0"),
        (["--val-fraction", "-0.2"], "strictly between 0 and 1"),
        (["--val-fraction", "0.2", "--block", "2000"], "scenes fit in one block of 2000 pixels; give a smaller"),
        (["--val-fraction", "0.2", "--block", "32"], "--block 32 is smaller than the crop size 64"),
        (["--val-fraction", "0.5", "--split", "val"], "--split and --val-fraction both set the split"),
        (["--block", "128"], "--block and --seed apply with --val-fraction only"),
    ]
    for extra, message in bad:
        assert _tile(*args, *extra, out=tmp_path / "out") == 2
        _one_error(capsys, message)
        assert not (tmp_path / "out").exists()
    # 341 x 280 pixels in 256-pixel blocks: no 256-pixel crop fits inside one split; a split left empty is refused
    one = [SCENES[0], "--labels", GPKG, "--label-field", "Quatreclasses", "--size", "256", "--stride", "128"]
    assert _tile(*one, "--workers", "1", "--val-fraction", "0.5", "--block", "256", out=tmp_path / "out") == 2
    _one_error(capsys, "--val-fraction 0.5 with --block 256 leaves no")
    assert not (tmp_path / "out").exists()


def _listing(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime for p in out.rglob("*") if p.is_file()}


@needs_data
def test_append_adds_scenes_and_refuses_a_mismatch_without_writing(
    make_raster: RasterFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiles"
    labels = ["--labels", GPKG, "--label-field", "Niveau_2"]
    assert _tile(SCENES[0], *labels, *FAST, out=out) == 0
    first, _ = read_index(out / "index.gpkg")
    crops = {p: t for p, t in _listing(out).items() if p.startswith("images/")}

    # without --append another run's scenes are refused as before
    assert _tile(SCENES[1], *labels, *FAST, out=out) == 2
    _one_error(capsys, "holds crops of a different tiling run (scenes differ)")

    assert _tile(SCENES[1], *labels, "--split", "val", "--append", *FAST, out=out) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert len(tiles) > len(first) and set(tiles.split) == {"train", "val"}
    assert (
        tiles[tiles.scene == first.scene.iloc[0]]
        .drop(columns="geometry")
        .reset_index(drop=True)
        .equals(first.drop(columns="geometry"))
    )
    assert list(classes.name) == [*NAMES, "ignore"]  # the first run's names map the new polygons
    assert list(classes["values"]) == [*NAMES, ""]
    assert all(_listing(out)[p] == t for p, t in crops.items())  # earlier crops untouched
    assert not [p for p in _listing(out) if ".tmp-" in p]  # the index was renamed into place
    # the same append again resumes: nothing new, same index
    assert _tile(SCENES[1], *labels, "--split", "val", "--append", *FAST, out=out) == 0
    assert read_index(out / "index.gpkg")[0].drop(columns="geometry").equals(tiles.drop(columns="geometry"))

    before = _listing(out)
    with rasterio.open(SCENES[1]) as src:
        grey = make_raster(src.read(1), "grey.tif", crs=src.crs, transform=src.transform)
        wide = make_raster(src.read().astype(np.uint16), "wide.tif", crs=src.crs, transform=src.transform)
    bad = [
        ([grey, *labels], "its crops have 3 uint8 bands, scene grey has 1 uint8"),
        ([wide, *labels], "scene wide has 3 uint16"),
        ([SCENES[1], *labels, "--classes", "Building,Hydro,Road,Train,Vegetation,Water"], "classes"),
        ([SCENES[1], *labels, "--split", "train"], "already holds a scene 23322E759967N_clipped_1m_2of2"),
        ([SCENES[1]], "differ in having labels"),
    ]
    for args, message in bad:
        assert _tile(*args, "--append", *FAST, out=out) == 2
        _one_error(capsys, message)
        assert _listing(out) == before
    assert _tile(grey, *labels, "--append", "--size", "32", "--workers", "1", out=out) == 2
    _one_error(capsys, "cannot append to")


def test_labels_that_come_out_all_ignore_stop_before_any_crop(
    make_raster: RasterFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = make_raster(np.zeros((3, 100, 90), np.uint8))
    far = gpd.GeoDataFrame({"kind": ["1"]}, geometry=[shapely.box(370_000, 5_800_000, 370_010, 5_800_010)], crs=32633)
    far.to_file(tmp_path / "far.gpkg")
    near = gpd.GeoDataFrame(
        {"kind": ["1", None]}, geometry=[shapely.box(368_001, 5_807_991, 368_004, 5_807_999)] * 2, crs=32633
    )
    near.to_file(tmp_path / "holes.gpkg")
    sparse = np.full((100, 90), 255, np.uint8)
    sparse[37, 41] = 2  # one labelled pixel: a decimated check alone would miss it, the scan does not
    bad = [
        (["--labels", tmp_path / "far.gpkg", "--label-field", "kind"], "they do not overlap the scene"),
        (["--labels", tmp_path / "holes.gpkg", "--label-field", "kind"], "1 of 2 features have no 'kind' value"),
        (
            ["--labels", make_raster(np.full((100, 90), 7, np.uint8), "l7.tif"), "--scheme", "potsdam"],
            "no pixel holds a class of the scheme",
        ),
        (["--labels", make_raster(np.full((100, 90), 0.3, np.float32), "f.tif")], "they hold float32 values"),
        (["--labels", make_raster(np.full((100, 90), 255, np.uint8), "i.tif")], "are all 255 (ignore)"),
        (
            ["--labels", make_raster(np.full((100, 90), 5, np.uint8), "c5.tif"), "--classes", "a,b"],
            "label values [5] have no name in --classes",
        ),
    ]
    for args, message in bad:
        assert _tile(scene, *args, *FAST, out=tmp_path / "out") == 2
        _one_error(capsys, message)
        assert not (tmp_path / "out").exists()
    label = make_raster(sparse, "sparse.tif")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rs_deeplab.tiling.labels.CHECK_PIXELS", 16)
        assert _tile(scene, "--labels", label, *FAST, out=tmp_path / "ok") == 0

    # --classes names the ids of a class raster; a colour raster shared by scenes on another grid is refused
    ids = make_raster(np.arange(100 * 90).reshape(100, 90) % 3, "ids.tif")
    assert _tile(scene, "--labels", ids, "--classes", "soil,crop,road", *FAST, out=tmp_path / "named") == 0
    assert list(read_index(tmp_path / "named" / "index.gpkg")[1].name) == ["soil", "crop", "road", "ignore"]
    other = make_raster(
        np.zeros((3, 100, 90), np.uint8), "b.tif", transform=Affine(0.1, 0, 368_020, 0, -0.1, 5_808_000)
    )
    colour = make_raster(
        np.zeros((3, 50, 60), np.uint8), "colour.tif", transform=Affine(0.2, 0, 368_000, 0, -0.2, 5_808_000)
    )
    assert _tile(scene, other, "--labels", colour, "--scheme", "potsdam", *FAST, out=tmp_path / "out") == 2
    _one_error(capsys, "shared labels on another grid must be one band of class ids, got 3 bands")
    assert not (tmp_path / "out").exists()


@needs_data
def test_dask_workers_write_the_same_crops_and_splits(tmp_path: Path) -> None:
    args = [*SCENES, "--labels", GPKG, "--label-field", "Niveau_2", "--size", "64", "--stride", "32", "-q"]
    args += ["--val-fraction", "0.25", "--block", "128"]
    assert _tile(*args, "--workers", "1", out=tmp_path / "one") == 0
    assert _tile(*args, "--workers", "2", out=tmp_path / "two") == 0
    one, two = (read_index(tmp_path / d / "index.gpkg")[0].drop(columns="geometry") for d in ("one", "two"))
    assert one.drop(columns="scene_path").equals(two.drop(columns="scene_path"))
    for rel in one.label:
        assert np.array_equal(_label(tmp_path / "one", rel), _label(tmp_path / "two", rel))
    assert os.listdir(tmp_path / "two" / "images")


@pytest.mark.parametrize("fraction", [0.15, 0.3, 0.6])
def test_val_fraction_is_a_fraction_of_the_area(make_raster: RasterFactory, tmp_path: Path, fraction: float) -> None:
    scene = make_raster(np.ones((1, 600, 500), np.uint8))  # 10 x 8 blocks of 64 pixels, the last ones partial
    args = [scene, "--size", "32", "--stride", "32", "--workers", "1", "-q", "--block", "64"]
    assert _tile(*args, "--val-fraction", str(fraction), "--seed", "3", out=tmp_path / "out") == 0
    tiles, _ = read_index(tmp_path / "out" / "index.gpkg")
    area = tiles.geometry.area.groupby(tiles.split).sum()
    assert abs(area["val"] / area.sum() - fraction) < 0.04
    assert area.sum() / (60 * 50) > 0.9  # blocks on the crop grid: only edge crops straddle a border


@needs_data
def test_default_block_shrinks_to_fit_a_small_scene(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """341 x 280 pixels fit in one default block (4 x 96 = 384): a smaller block holds out val instead of stopping."""
    one = [SCENES[0], "--labels", GPKG, "--label-field", "Quatreclasses", "--workers", "1"]
    assert _tile(*one, "--size", "96", "--stride", "48", "--val-fraction", "0.3", out=tmp_path / "a") == 0
    assert "held-out blocks are 192 pixels (--block 192)" in capsys.readouterr().err
    tiles, splits = _splits(tmp_path / "a")
    assert set(tiles.split) == {"train", "val"}
    # the same as asking for that block explicitly
    assert (
        _tile(
            *one, "--size", "96", "--stride", "48", "--val-fraction", "0.3", "--block", "192", "-q", out=tmp_path / "b"
        )
        == 0
    )
    assert _splits(tmp_path / "b")[1] == splits
    # no block down to the crop size leaves both splits crops: the error names the sides tried
    assert _tile(*one, "--size", "256", "--stride", "128", "--val-fraction", "0.5", out=tmp_path / "c") == 2
    _one_error(capsys, "no block side from 1024 down to 256 pixels (the crop size) leaves crops in both splits")
    assert not (tmp_path / "c").exists()
