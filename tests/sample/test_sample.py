"""Tests of the synthetic sample generator and its dataset writers (small sizes, real files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.classes import IGNORE_INDEX, SCHEMES, voc_palette
from rs_deeplab.sample import (
    Scene,
    boundary_mask,
    generate_scene,
    preview_png,
    write_cityscapes,
    write_isaid,
    write_loveda,
    write_potsdam,
    write_vaihingen,
    write_voc,
)
from rs_deeplab.sample.cli import main
from rs_deeplab.sample.output import sub_seed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def city() -> Scene:
    """A moderate urban scene: 1024 px at 0.3 m (307 m, like one Potsdam tile)."""
    return generate_scene(1024, seed=0, gsd=0.3)


def test_same_seed_gives_identical_arrays_other_seed_differs() -> None:
    a = generate_scene(96, 160, seed=7, gsd=0.1)
    b = generate_scene(96, 160, seed=7, gsd=0.1)
    c = generate_scene(96, 160, seed=8, gsd=0.1)
    assert a.image.shape == (4, 96, 160) and a.image.dtype == np.uint8
    assert a.classes.shape == (96, 160) and a.classes.dtype == np.uint8 and a.classes.max() <= 5
    assert a.image.tobytes() == b.image.tobytes() and a.classes.tobytes() == b.classes.tobytes()
    assert a.image.tobytes() != c.image.tobytes()
    assert a.transform.a == pytest.approx(0.1) and a.transform.e == pytest.approx(-0.1) and a.crs == "EPSG:32633"


def test_moderate_scene_has_every_class_in_sensible_fractions(city: Scene) -> None:
    frac = np.bincount(city.classes.ravel(), minlength=6) / city.classes.size
    low = (0.15, 0.10, 0.10, 0.05, 0.003, 0.002)
    high = (0.50, 0.35, 0.45, 0.30, 0.05, 0.08)
    for name, f, lo, hi in zip(SCHEMES["potsdam"].classes, frac, low, high, strict=True):
        assert lo <= f <= hi, f"{name}: {f:.3f} outside [{lo}, {hi}]"


def test_vegetation_is_bright_in_nir_and_asphalt_dark(city: Scene) -> None:
    image, classes = city.image, city.classes
    ndvi = (image[3].astype(float) - image[0]) / (image[3].astype(float) + image[0] + 1)
    assert np.median(ndvi[classes == 2]) > 0.2 and np.median(ndvi[classes == 3]) > 0.2
    assert np.median(ndvi[classes == 0]) < 0.05


def _qda_miou(x: np.ndarray, y: np.ndarray, k: int = 6) -> float:
    """Fit a Gaussian (quadratic discriminant) classifier per class on pixel values and score it on the same pixels."""
    scores = []
    for c in range(k):
        xc = x[y == c]
        cov = np.cov(xc.T) + np.eye(x.shape[1]) * 1e-3
        d = x - xc.mean(0)
        maha = np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)
        scores.append(-0.5 * maha - 0.5 * np.linalg.slogdet(cov)[1] + np.log(len(xc) / len(x)))
    pred = np.argmax(scores, axis=0)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    return float(iou.mean())


def test_classes_are_not_separable_by_one_pixels_colour() -> None:
    scene = generate_scene(768, seed=0, gsd=0.15)
    x = scene.image.reshape(4, -1).T.astype(np.float64)
    y = scene.classes.ravel().astype(np.int64)
    # even fitted and scored on the very same pixels, the best per-pixel Gaussian classifier stays far from
    # what context gives: every class overlaps another one in colour (shadows, grey roofs vs asphalt, ...)
    assert _qda_miou(x, y) < 0.6


def test_bad_generator_arguments_raise_input_error() -> None:
    for kwargs in ({"height": 0}, {"height": 8, "width": -1}, {"height": 8, "gsd": 0.0}, {"height": 8, "seed": -1}):
        with pytest.raises(InputError):
            generate_scene(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="style"):
        generate_scene(8, style="lunar")


def test_boundary_mask_marks_a_band_of_radius_pixels_on_both_sides() -> None:
    classes = np.zeros((20, 20), dtype=np.uint8)
    classes[:, 10:] = 3
    mask = boundary_mask(classes, 3)
    assert mask[:, 7:13].all() and not mask[:, :7].any() and not mask[:, 13:].any()
    assert not boundary_mask(classes, 0).any()


def test_write_potsdam_layout_georeferencing_and_labels(tmp_path: Path) -> None:
    files = write_potsdam(tmp_path, ids=[(2, 13), (3, 14)], size=(64, 96), seed=5, gsd=0.1)
    assert [f.tile for f in files] == ["2_13", "3_14"]
    first = files[0]
    assert first.rgbir == tmp_path / "4_Ortho_RGBIR" / "top_potsdam_2_13_RGBIR.tif"
    assert first.rgb == tmp_path / "2_Ortho_RGB" / "top_potsdam_2_13_RGB.tif"
    assert first.label == tmp_path / "5_Labels_all" / "top_potsdam_2_13_label.tif"
    assert first.label_noboundary == tmp_path / "5_Labels_all_noBoundary" / "top_potsdam_2_13_label_noBoundary.tif"
    with rasterio.open(first.rgbir) as src:
        assert (src.count, src.dtypes[0], src.width, src.height) == (4, "uint8", 96, 64)
        assert src.crs.to_epsg() == 32633 and src.res == pytest.approx((0.1, 0.1))
        assert src.descriptions == ("red", "green", "blue", "nir")
        rgbir, origin = src.read(), (src.transform.c, src.transform.f)
    with rasterio.open(files[1].rgbir) as src:
        assert (src.transform.c, src.transform.f) == pytest.approx((origin[0] + 9.6, origin[1] - 6.4))
    with rasterio.open(first.rgb) as src:
        assert src.count == 3 and src.descriptions == ("red", "green", "blue")
        assert (src.read() == rgbir[:3]).all()
    expected = generate_scene(64, 96, seed=sub_seed(5, 2, 13), gsd=0.1)
    assert (rgbir == expected.image).all()
    with rasterio.open(first.label) as src:
        assert src.count == 3 and src.crs.to_epsg() == 32633
        assert (SCHEMES["potsdam"].decode(src.read()) == expected.classes).all()
    with rasterio.open(first.label_noboundary) as src:
        eroded = SCHEMES["potsdam"].decode(src.read())
    edge = boundary_mask(expected.classes, 3)
    assert edge.any() and (eroded[edge] == IGNORE_INDEX).all() and (eroded[~edge] == expected.classes[~edge]).all()


def test_write_vaihingen_irrg_layout(tmp_path: Path) -> None:
    files = write_vaihingen(tmp_path, areas=(1, 3), size=48, seed=2)
    assert files[1].image == tmp_path / "top" / "top_mosaic_09cm_area3.tif"
    assert files[1].label == tmp_path / "gts_for_participants" / "top_mosaic_09cm_area3.tif"
    eroded_name = "gts_eroded_for_participants/top_mosaic_09cm_area3_noBoundary.tif"
    assert files[1].label_noboundary == tmp_path / eroded_name
    expected = generate_scene(48, seed=sub_seed(2, "vaihingen", 1), gsd=0.09)
    with rasterio.open(files[0].image) as src:
        assert src.count == 3 and src.res == pytest.approx((0.09, 0.09)) and src.crs.to_epsg() == 32632
        assert src.descriptions == ("nir", "red", "green")
        assert (src.read() == expected.image[[3, 0, 1]]).all()
    with rasterio.open(files[0].label) as src:
        assert (SCHEMES["vaihingen"].decode(src.read()) == expected.classes).all()


def test_write_loveda_layout_values_and_nodata(tmp_path: Path) -> None:
    files = write_loveda(tmp_path, per_folder=2, size=160, seed=1)
    assert {(f.split, f.domain) for f in files} == {(s, d) for s in ("Train", "Val") for d in ("Urban", "Rural")}
    seen = set()
    for f in files:
        assert f.image == tmp_path / f.split / f.domain / "images_png" / f"{f.id}.png"
        assert f.mask == tmp_path / f.split / f.domain / "masks_png" / f"{f.id}.png"
        image, mask = np.array(Image.open(f.image)), np.array(Image.open(f.mask))
        assert image.shape == (160, 160, 3) and mask.shape == (160, 160) and mask.max() <= 7
        decoded = SCHEMES["loveda"].decode(mask)
        assert ((decoded < 7) | (decoded == IGNORE_INDEX)).all()
        seen |= set(np.unique(mask).tolist())
        if f.id % 2 == 1:  # every other image has a black no-data region
            assert (mask == 0).any() and (image[mask == 0] == 0).all()
    assert {0, 1, 2, 3} <= seen  # no-data, background, building, road


def test_write_isaid_layout_and_palette(tmp_path: Path) -> None:
    files = write_isaid(tmp_path, per_split=1, size=(320, 400), seed=4)
    assert [(f.split, f.id) for f in files] == [("train", "P0000"), ("val", "P1000")]
    found = set()
    for f in files:
        assert f.mask == tmp_path / f.split / "Semantic_masks" / "images" / f"{f.id}_instance_color_RGB.png"
        image, colours = np.array(Image.open(f.image)), np.array(Image.open(f.mask))
        assert image.shape == colours.shape == (320, 400, 3)
        classes = SCHEMES["isaid"].decode(np.moveaxis(colours, -1, 0))
        assert (classes != IGNORE_INDEX).all()
        found |= set(np.unique(classes).tolist())
    assert 0 in found and len(found - {0, 9}) >= 1  # background, small vehicles and some stamped object


def test_write_voc_layout_palette_boundaries_and_lists(tmp_path: Path) -> None:
    base = write_voc(tmp_path, n_train=3, n_val=2, seed=0)
    assert base == tmp_path / "VOCdevkit" / "VOC2012"
    lists = {n: (base / "ImageSets" / "Segmentation" / f"{n}.txt").read_text().split() for n in ("train", "val")}
    lists |= {
        n: (base / "ImageSets" / "Segmentation" / f"{n}.txt").read_text().split() for n in ("trainval", "train_aug")
    }
    assert len(lists["train"]) == 3 and len(lists["val"]) == 2 and lists["trainval"] == lists["train"] + lists["val"]
    aug_only = [i for i in lists["train_aug"] if i not in lists["train"]]
    assert aug_only and not set(aug_only) & set(lists["val"])
    for sid in lists["trainval"]:
        seg = Image.open(base / "SegmentationClass" / f"{sid}.png")
        assert seg.mode == "P" and seg.getpalette()[:63] == [c for rgb in voc_palette(21) for c in rgb]
        values = set(np.unique(np.array(seg)).tolist())
        assert 255 in values and values - {255} <= set(range(21))
        assert Image.open(base / "JPEGImages" / f"{sid}.jpg").size[0] in range(300, 501)
    for sid in aug_only:
        assert not (base / "SegmentationClass" / f"{sid}.png").exists()
        aug = Image.open(base / "SegmentationClassAug" / f"{sid}.png")
        assert aug.mode == "L" and np.array(aug).max() <= 20


def test_write_cityscapes_layout_and_label_ids(tmp_path: Path) -> None:
    root = write_cityscapes(tmp_path, per_split=2, size=(64, 128), seed=0)
    images = sorted((root / "leftImg8bit").rglob("*_leftImg8bit.png"))
    assert [p.relative_to(root).as_posix() for p in images][:1] == [
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    ]
    assert len(images) == 4
    ids: set[int] = set()
    for image in images:
        label = Path(str(image).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit", "_gtFine_labelIds"))
        values = np.array(Image.open(label))
        assert values.shape == (64, 128) and np.array(Image.open(image)).shape == (64, 128, 3)
        ids |= set(np.unique(values).tolist())
        assert (SCHEMES["cityscapes"].decode(values) != IGNORE_INDEX).any()
    assert {0, 1, 7, 8, 11, 23, 26} <= ids


def test_preview_is_side_by_side_and_downscales(tmp_path: Path) -> None:
    scene = generate_scene(40, 60, seed=0, gsd=0.2)
    full = Image.open(preview_png(tmp_path / "p.png", scene.image, scene.classes))
    assert full.size == (2 * 60 + 8, 40)
    small = Image.open(preview_png(tmp_path / "s.png", scene.image, scene.classes, max_width=64))
    assert small.size[0] <= 64
    with pytest.raises(InputError, match="does not match"):
        preview_png(tmp_path / "x.png", scene.image[:, :10], scene.classes)


def test_cli_writes_files_and_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, preview = tmp_path / "potsdam", tmp_path / "preview.png"
    argv = ["potsdam", str(out), "--size", "48", "64", "--gsd", "0.1", "--ids", "2_13", "--preview", str(preview)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "4_Ortho_RGBIR" / "top_potsdam_2_13_RGBIR.tif") in printed and str(preview) in printed
    assert Image.open(preview).size == (2 * 64 + 8, 48)


def test_cli_writes_labels_as_polygons_of_every_scene(tmp_path: Path) -> None:
    import geopandas as gpd
    from rasterio.features import rasterize

    out, gpkg = tmp_path / "potsdam", tmp_path / "labels" / "labels.gpkg"
    argv = ["potsdam", str(out), "--size", "48", "64", "--gsd", "0.1", "--ids", "2_10", "2_13", "--polygons", str(gpkg)]
    assert main(argv) == 0
    polygons = gpd.read_file(gpkg, layer="labels")
    assert set(polygons.scene) == {"top_potsdam_2_10_RGBIR", "top_potsdam_2_13_RGBIR"}
    assert set(polygons.class_name) <= set(SCHEMES["potsdam"].classes) and polygons.class_name.nunique() >= 2
    for tile in ("2_10", "2_13"):  # burning the polygons back gives the label raster, pixel for pixel
        with rasterio.open(out / "5_Labels_all" / f"top_potsdam_{tile}_label.tif") as src:
            truth, shape, transform = SCHEMES["potsdam"].decode(src.read()), src.shape, src.transform
        mine = polygons[polygons.scene == f"top_potsdam_{tile}_RGBIR"]
        burnt = rasterize(
            zip(mine.geometry, mine.class_id, strict=True),
            out_shape=shape,
            transform=transform,
            fill=255,
            dtype="uint8",
        )
        np.testing.assert_array_equal(burnt, truth)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mars", "OUT"], "invalid choice"),
        (["potsdam", "OUT", "--size", "0"], "--size"),
        (["potsdam", "OUT", "--size", "1", "2", "3"], "--size"),
        (["voc", "OUT", "--size", "64"], "--size does not apply"),
        (["loveda", "OUT", "--gsd", "0.1"], "--gsd"),
        (["potsdam", "OUT", "--ids", "2-13"], "bad --ids"),
        (["isaid", "OUT", "--count", "0"], "--count"),
        (["loveda", "OUT", "--polygons", "x.gpkg"], "--polygons"),
        (["potsdam", "OUT", "--polygons", "x.shp"], "--polygons"),
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_input_errors_return_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["potsdam", str(tmp_path), "--size", "16", "--ids", "2_13", "2_13"]) == 2
    assert "listed twice" in capsys.readouterr().err
    missing = tmp_path / "no" / "p.png"
    assert main(["cityscapes", str(tmp_path), "--size", "32", "64", "--count", "1", "--preview", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, "-m", "rs_deeplab.sample", "cityscapes", str(tmp_path), "--size", "32", "64", "--count", "1"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.split()) == 4  # one image and one label in each of train and val
    bad = subprocess.run(
        [sys.executable, "-m", "rs_deeplab.sample", "potsdam", str(tmp_path), "--size", "-5"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--size" in bad.stderr
