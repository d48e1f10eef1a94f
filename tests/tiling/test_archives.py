"""Dataset presets on the official download archives, read in place, extracted beside them, or nested deeper."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from pipelines.tile import main, run
from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import quiet_georeferencing, write_geotiff
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.sample import write_isaid, write_loveda, write_potsdam, write_vaihingen
from rs_deeplab.tiling.index import read_index
from rs_deeplab.tiling.presets import VAIHINGEN_GT, find_scenes, tile_preset

AREAS = (1, 2, 3)  # 1 and 3 official training areas, 2 a validation area
SPLITS = {1: "train", 2: "val", 3: "train"}
MAIN = "ISPRS_semantic_labeling_Vaihingen.zip"
ERODED = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip"


def _read(path: str | Path) -> np.ndarray:
    with quiet_georeferencing(), rasterio.open(path) as src:
        return src.read()


def _zip(path: Path, members: dict[str, Path], *, zip64: bool = False) -> Path:
    """A zip archive of ``members`` (name inside → file); ``zip64`` writes Zip64 records, as archives over 4 GiB
    (Potsdam's orthophoto archives) have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, source in members.items():
            if zip64:
                with zf.open(name, "w", force_zip64=True) as member:
                    member.write(Path(source).read_bytes())
            else:
                zf.write(source, name)
    return path


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, object], Path]:
    """Sample areas, a decoy participants' label for area 1 (other content), and the three official archives."""
    base = tmp_path_factory.mktemp("vaihingen")
    files = {f.area: f for f in write_vaihingen(base / "src", areas=AREAS, size=(96, 80), seed=5)}
    decoy = write_vaihingen(base / "decoy", areas=(1,), size=(96, 80), seed=99)[0].label
    archives = base / "archives"
    stem = "top_mosaic_09cm_area{}"
    _zip(
        archives / MAIN,
        {
            **{f"top/{stem.format(n)}.tif": f.image for n, f in files.items()},
            f"gts_for_participants/{stem.format(1)}.tif": decoy,
        },
    )
    _zip(archives / VAIHINGEN_GT, {f"{stem.format(n)}.tif": f.label for n, f in files.items()})
    _zip(archives / ERODED, {f"{stem.format(n)}_noBoundary.tif": f.label_noboundary for n, f in files.items()})
    return archives, files, decoy


def _layout(vaihingen: tuple[Path, dict, Path], root: Path, layout: str) -> Path:
    """Build ``layout`` under ``root``: archives alone, nested deeper, extracted beside them (in folders or loose)."""
    archives, _, _ = vaihingen
    target = root / "download" if layout == "nested" else root
    shutil.copytree(archives, target)
    for archive in sorted(target.glob("*.zip")) if layout.startswith("extracted") else []:
        into = target / archive.stem if layout == "extracted" and archive.name != MAIN else target
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into)
    return root


@pytest.mark.parametrize("layout", ["archives", "nested", "extracted", "extracted_loose"])
@pytest.mark.parametrize("eroded", [False, True])
def test_vaihingen_layouts_give_official_splits_and_complete_labels(
    vaihingen: tuple[Path, dict, Path], tmp_path: Path, layout: str, eroded: bool
) -> None:
    _, files, _ = vaihingen
    root = _layout(vaihingen, tmp_path / "data", layout)
    scenes = {
        int(Path(s.image).stem.removeprefix("top_mosaic_09cm_area")): s
        for s in find_scenes("vaihingen", root, eroded=eroded)
    }
    assert {n: s.split for n, s in scenes.items()} == SPLITS
    for n, scene in scenes.items():
        assert str(scene.image).startswith("/vsizip/") == (layout in ("archives", "nested"))
        source = files[n].label_noboundary if eroded else files[n].label
        np.testing.assert_array_equal(_read(str(scene.label)), _read(source))  # COMPLETE, not the decoy
        np.testing.assert_array_equal(_read(str(scene.image)), _read(files[n].image))


def test_vaihingen_archives_tile_in_place(vaihingen: tuple[Path, dict, Path], tmp_path: Path) -> None:
    _, files, _ = vaihingen
    root = _layout(vaihingen, tmp_path / "data", "archives")
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "vaihingen", "--size", "64", "--out", str(out), "--workers", "1"]) == 0
    tiles, _ = read_index(out / "index.gpkg")
    assert {s: sp for s, sp in zip(tiles.scene, tiles.split, strict=True)} == {
        f"top_mosaic_09cm_area{n}": sp for n, sp in SPLITS.items()
    }
    assert not list(root.rglob("*.tif"))  # nothing extracted
    for row in tiles.itertuples():
        n = int(row.scene.removeprefix("top_mosaic_09cm_area"))
        assert str(row.scene_path).startswith("/vsizip/")
        np.testing.assert_array_equal(_read(row.scene_path), _read(files[n].image))  # the index reopens the source
        r, c, h, w = row.row_off, row.col_off, row.height, row.width
        expected = SCHEMES["vaihingen"].decode(_read(files[n].label))[r : r + h, c : c + w]
        np.testing.assert_array_equal(_read(out / row.label)[0][:h, :w], expected)


def test_zip64_archives_read_in_place(vaihingen: tuple[Path, dict, Path], tmp_path: Path) -> None:
    archives, files, _ = vaihingen
    root = tmp_path / "data"
    for archive in archives.glob("*.zip"):
        with zipfile.ZipFile(archive) as zf:
            extracted = tmp_path / "members" / archive.stem
            zf.extractall(extracted)
            members = {name: extracted / name for name in zf.namelist()}
        _zip(root / archive.name, members, zip64=True)
        with zipfile.ZipFile(root / archive.name) as zf:
            assert all(info.extract_version >= zipfile.ZIP64_VERSION for info in zf.infolist())
    scenes = find_scenes("vaihingen", root)
    assert [s.split for s in scenes] == [SPLITS[n] for n in AREAS]
    for scene, n in zip(scenes, AREAS, strict=True):
        assert str(scene.image).startswith("/vsizip/")
        np.testing.assert_array_equal(_read(str(scene.image)), _read(files[n].image))
        np.testing.assert_array_equal(_read(str(scene.label)), _read(files[n].label))


def test_vaihingen_images_without_labels_name_the_ground_truth_archive(
    vaihingen: tuple[Path, dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, files, _ = vaihingen
    root = tmp_path / "data"
    _zip(root / MAIN, {f"top/{files[n].image.name}": files[n].image for n in AREAS})
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "vaihingen", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert VAIHINGEN_GT in err and str(root) in err and len(err.splitlines()) == 1
    with pytest.raises(InputError, match=ERODED):
        tile_preset("vaihingen", root, tmp_path / "t2", eroded=True)
    assert not out.exists()


@pytest.mark.parametrize("bad", ["truncated", "other_dataset"])
def test_bad_archives_are_one_line_exit_2(
    vaihingen: tuple[Path, dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    archives, files, _ = vaihingen
    root = tmp_path / "data"
    if bad == "truncated":
        root.mkdir()
        data = (archives / MAIN).read_bytes()
        (root / MAIN).write_bytes(data[: len(data) // 2])
    else:
        _zip(root / "5_Labels_all.zip", {"top_potsdam_2_10_label.tif": files[1].label})
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "vaihingen", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ((MAIN in err) if bad == "truncated" else "Vaihingen" in err)
    assert not out.exists()


POTSDAM_IDS = {(2, 10): "train", (2, 13): "val"}
BAND_ORDER = {"rgbir": [0, 1, 2, 3], "rgb": [0, 1, 2], "irrg": [3, 0, 1]}


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[int, int], object]]:
    """Two sample tiles and the five official Potsdam archives (IRRG written from the RGBIR bands)."""
    base = tmp_path_factory.mktemp("potsdam")
    written = write_potsdam(base / "src", ids=tuple(POTSDAM_IDS), size=(80, 64), seed=7)
    files = dict(zip(POTSDAM_IDS, written, strict=True))
    archives = base / "archives"
    (base / "irrg").mkdir()
    members: dict[str, dict[str, Path]] = {name: {} for name in ("2_Ortho_RGB", "3_Ortho_IRRG", "4_Ortho_RGBIR")}
    labels: dict[str, dict[str, Path]] = {"5_Labels_all": {}, "5_Labels_all_noBoundary": {}}
    for (i, j), f in files.items():
        stem = f"top_potsdam_{i}_{j}"
        with quiet_georeferencing(), rasterio.open(f.rgbir) as src:
            irrg = write_geotiff(
                base / "irrg" / f"{stem}_IRRG.tif", src.read()[[3, 0, 1]], crs=src.crs, transform=src.transform
            )
        members["2_Ortho_RGB"][f"2_Ortho_RGB/{stem}_RGB.tif"] = f.rgb
        members["3_Ortho_IRRG"][f"3_Ortho_IRRG/{stem}_IRRG.tif"] = irrg
        members["4_Ortho_RGBIR"][f"4_Ortho_RGBIR/{stem}_RGBIR.tif"] = f.rgbir
        labels["5_Labels_all"][f"{stem}_label.tif"] = f.label
        labels["5_Labels_all_noBoundary"][f"{stem}_label_noBoundary.tif"] = f.label_noboundary
    for name, content in {**members, **labels}.items():
        _zip(archives / f"{name}.zip", content)
    return archives, files


def _potsdam_layout(archives: Path, root: Path, layout: str) -> Path:
    target = root / "download" if layout == "nested" else root
    shutil.copytree(archives, target)
    for archive in sorted(target.glob("*.zip")) if layout == "extracted" else []:
        with zipfile.ZipFile(archive) as zf:  # image archives hold their folder; label files land in one
            zf.extractall(target / archive.stem if archive.name.startswith("5_") else target)
    return root


@pytest.mark.parametrize("layout", ["archives", "nested", "extracted"])
@pytest.mark.parametrize(("bands", "eroded"), [("rgbir", False), ("rgb", True), ("irrg", False)])
def test_potsdam_layouts_and_bands(
    potsdam: tuple[Path, dict], tmp_path: Path, layout: str, bands: str, eroded: bool
) -> None:
    archives, files = potsdam
    root = _potsdam_layout(archives, tmp_path / "data", layout)
    scenes = find_scenes("potsdam", root, bands=bands, eroded=eroded)  # type: ignore[arg-type]
    assert [Path(s.image).name for s in scenes] == [f"top_potsdam_{i}_{j}_{bands.upper()}.tif" for i, j in POTSDAM_IDS]
    assert [s.split for s in scenes] == list(POTSDAM_IDS.values())
    for scene, ij in zip(scenes, POTSDAM_IDS, strict=True):
        assert str(scene.image).startswith("/vsizip/") == (layout != "extracted")
        source = files[ij].label_noboundary if eroded else files[ij].label
        np.testing.assert_array_equal(_read(str(scene.label)), _read(source))
        np.testing.assert_array_equal(_read(str(scene.image)), _read(files[ij].rgbir)[BAND_ORDER[bands]])


def test_potsdam_irrg_archives_tile_in_place(potsdam: tuple[Path, dict], tmp_path: Path) -> None:
    archives, files = potsdam
    root = _potsdam_layout(archives, tmp_path / "data", "archives")
    out = tmp_path / "tiles"
    flags = ["--preset", "potsdam", "--bands", "irrg", "--size", "64", "--workers", "1"]
    assert main([str(root), *flags, "--out", str(out)]) == 0
    tiles, _ = read_index(out / "index.gpkg")
    assert {s: sp for s, sp in zip(tiles.scene, tiles.split, strict=True)} == {
        f"top_potsdam_{i}_{j}_IRRG": sp for (i, j), sp in POTSDAM_IDS.items()
    }
    for row in tiles.itertuples():
        ij = (2, int(row.scene.split("_")[3]))
        r, c, h, w = row.row_off, row.col_off, row.height, row.width
        expected = SCHEMES["potsdam"].decode(_read(files[ij].label))[r : r + h, c : c + w]
        np.testing.assert_array_equal(_read(out / row.label)[0][:h, :w], expected)
        np.testing.assert_array_equal(
            _read(out / row.image)[:, :h, :w], _read(files[ij].rgbir)[[3, 0, 1], r : r + h, c : c + w]
        )
        assert _read(row.scene_path).shape == (3, 80, 64)


def test_recipe_tile_command_on_archives_with_dask_worker_processes(potsdam: tuple[Path, dict], tmp_path: Path) -> None:
    """configs/potsdam_r50.yaml's tile command (RGB, eroded, 512 every 512) on the archives, scaled: two Dask worker
    processes each open the scenes through /vsizip/ and write the same crops and index as this process alone."""
    archives, files = potsdam
    root = _potsdam_layout(archives, tmp_path / "data", "archives")
    flags = ["--preset", "potsdam", "--bands", "rgb", "--eroded", "--size", "32", "--stride", "32"]
    assert main([str(root), *flags, "--workers", "1", "--out", str(tmp_path / "serial")]) == 0
    summary = run([str(root), *flags, "--workers", "2", "--out", str(tmp_path / "dask")])
    assert summary.cluster == "Dask local cluster (2 processes)"
    serial, _ = read_index(tmp_path / "serial" / "index.gpkg")
    parallel, _ = read_index(tmp_path / "dask" / "index.gpkg")
    key = ["scene", "row_off", "col_off"]
    serial, parallel = serial.sort_values(key).reset_index(drop=True), parallel.sort_values(key).reset_index(drop=True)
    assert len(serial) == len(parallel) == len(POTSDAM_IDS) * (80 // 32 + 1) * (64 // 32)
    assert list(serial.scene_path) == list(parallel.scene_path) and serial.scene_path[0].startswith("/vsizip/")
    assert not list(root.rglob("*.tif"))  # nothing extracted
    for a, b in zip(serial.itertuples(), parallel.itertuples(), strict=True):
        np.testing.assert_array_equal(_read(tmp_path / "serial" / a.image), _read(tmp_path / "dask" / b.image))
        np.testing.assert_array_equal(_read(tmp_path / "serial" / a.label), _read(tmp_path / "dask" / b.label))
    row = parallel.iloc[-1]
    ij = (2, int(row.scene.split("_")[3]))
    r, c, h, w = row.row_off, row.col_off, row.height, row.width
    eroded = SCHEMES["potsdam"].decode(_read(files[ij].label_noboundary))[r : r + h, c : c + w]
    np.testing.assert_array_equal(_read(tmp_path / "dask" / row.label)[0][:h, :w], eroded)
    np.testing.assert_array_equal(
        _read(tmp_path / "dask" / row.image)[:, :h, :w], _read(files[ij].rgb)[:, r : r + h, c : c + w]
    )


@pytest.mark.parametrize(
    ("present", "flags", "named"),
    [
        (["4_Ortho_RGBIR"], [], "5_Labels_all.zip"),
        (["2_Ortho_RGB", "5_Labels_all"], ["--bands", "irrg"], "3_Ortho_IRRG.zip"),
        (["4_Ortho_RGBIR", "5_Labels_all"], ["--eroded"], "5_Labels_all_noBoundary.zip"),
    ],
)
def test_potsdam_missing_archive_is_named(
    potsdam: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    present: list,
    flags: list,
    named: str,
) -> None:
    archives, _ = potsdam
    root = tmp_path / "data"
    root.mkdir()
    for name in present:
        shutil.copy(archives / f"{name}.zip", root)
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "potsdam", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and str(root) in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def loveda(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """Sample Train/Val scenes in ``Train.zip``/``Val.zip`` and one unlabelled image in ``Test.zip``."""
    base = tmp_path_factory.mktemp("loveda")
    src = base / "src"
    files = {f"{f.split}_{f.domain}_{f.id}".lower(): f for f in write_loveda(src, per_folder=1, size=64, seed=3)}
    archives = base / "archives"
    for split in ("Train", "Val"):
        _zip(
            archives / f"{split}.zip", {p.relative_to(src).as_posix(): p for p in sorted((src / split).rglob("*.png"))}
        )
    first = next(iter(files.values()))
    _zip(archives / "Test.zip", {"Test/Rural/images_png/9999.png": first.image})
    return archives, files


@pytest.mark.parametrize("layout", ["archives", "nested", "extracted"])
def test_loveda_layouts(loveda: tuple[Path, dict], tmp_path: Path, layout: str) -> None:
    archives, files = loveda
    root = _potsdam_layout(archives, tmp_path / "data", layout)  # zips hold their split folder, like Potsdam's images
    scenes = {s.key: s for s in find_scenes("loveda", root)}
    assert {k: s.split for k, s in scenes.items()} == {
        **{k: f.split.lower() for k, f in files.items()},
        "test_rural_9999": "test",
    }
    assert scenes.pop("test_rural_9999").label is None
    same_pixels(scenes, files, in_archives=layout != "extracted")


def same_pixels(scenes: dict[str, Any], files: dict[str, Any], *, in_archives: bool) -> None:
    """Each found scene's image and label read (through ``/vsizip/`` when ``in_archives``) as the sample's files."""
    for key, scene in scenes.items():
        assert str(scene.image).startswith("/vsizip/") == in_archives
        np.testing.assert_array_equal(_read(str(scene.label)), _read(files[key].mask))
        np.testing.assert_array_equal(_read(str(scene.image)), _read(files[key].image))


def test_loveda_test_archive_alone_names_train_and_val(
    loveda: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archives, _ = loveda
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archives / "Test.zip", root)
    assert main([str(root), "--preset", "loveda", "--out", str(tmp_path / "tiles")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Train.zip" in err and str(root) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "tiles").exists()


@pytest.fixture(scope="module")
def isaid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """Sample scenes in ``{split}/images/part1.zip`` and ``{split}/Semantic_masks/images.zip`` (plus a test part)."""
    base = tmp_path_factory.mktemp("isaid")
    files = {f.id: f for f in write_isaid(base / "src", per_split=1, size=64, seed=4)}
    archives = base / "archives"
    for f in files.values():
        _zip(archives / f.split / "images" / "part1.zip", {f"images/{f.id}.png": f.image})
        _zip(
            archives / f.split / "Semantic_masks" / "images.zip",
            {
                f"images/{f.id}_instance_color_RGB.png": f.mask,
                f"images/{f.id}_instance_id_RGB.png": f.image,
            },
        )
    _zip(archives / "test" / "images" / "part1.zip", {"images/P9999.png": next(iter(files.values())).image})
    return archives, files


@pytest.mark.parametrize("layout", ["archives", "nested", "extracted"])
def test_isaid_layouts(isaid: tuple[Path, dict], tmp_path: Path, layout: str) -> None:
    archives, files = isaid
    root = tmp_path / "data"
    target = root / "download" if layout == "nested" else root
    shutil.copytree(archives, target)
    for archive in sorted(target.rglob("*.zip")) if layout == "extracted" else []:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(archive.parent)
    scenes = {Path(s.image).stem: s for s in find_scenes("isaid", root)}
    assert {k: s.split for k, s in scenes.items()} == {**{k: f.split for k, f in files.items()}, "P9999": "test"}
    assert scenes.pop("P9999").label is None
    same_pixels(scenes, files, in_archives=layout != "extracted")


def test_isaid_images_without_masks_name_the_masks_archive(
    isaid: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archives, _ = isaid
    root = tmp_path / "data"
    shutil.copytree(archives, root, ignore=shutil.ignore_patterns("Semantic_masks"))
    assert main([str(root), "--preset", "isaid", "--out", str(tmp_path / "tiles")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Semantic_masks/images.zip" in err and str(root) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "tiles").exists()
