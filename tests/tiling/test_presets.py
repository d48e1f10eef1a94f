"""Dataset presets on small scenes written by ``rs_deeplab.sample`` in each dataset's real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipelines.tile import main
from rs_deeplab.geo.raster import quiet_georeferencing
from rs_deeplab.labels.classes import IGNORE_INDEX, SCHEMES
from rs_deeplab.sample import write_isaid, write_loveda, write_potsdam, write_vaihingen
from rs_deeplab.tiling.index import read_index
from rs_deeplab.tiling.presets import PRESETS, find_scenes


def _read(path: Path) -> np.ndarray:
    with quiet_georeferencing(), rasterio.open(path) as src:
        return src.read()


def _crop_labels(out: Path, row: object) -> np.ndarray:
    """The scene part of a label crop (padding cut off)."""
    data = _read(out / str(row.label))[0]  # type: ignore[attr-defined]
    return data[: row.height, : row.width]  # type: ignore[attr-defined]


def _window(array: np.ndarray, row: object) -> np.ndarray:
    r, c, h, w = row.row_off, row.col_off, row.height, row.width  # type: ignore[attr-defined]
    return array[..., r : r + h, c : c + w]


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("data") / "Potsdam"
    return root, write_potsdam(root, ids=((2, 10), (2, 13)), size=(150, 110), seed=3, gsd=0.2)


@pytest.mark.parametrize(("flags", "bands", "eroded"), [([], 4, False), (["--bands", "rgb", "--eroded"], 3, True)])
def test_potsdam_preset(potsdam: tuple[Path, list], tmp_path: Path, flags: list[str], bands: int, eroded: bool) -> None:
    root, files = potsdam
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "potsdam", "--out", str(out), "--workers", "1", *flags]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert list(classes["name"]) == [*SCHEMES["potsdam"].classes, "ignore"]
    suffix = "RGBIR" if bands == 4 else "RGB"
    assert dict(zip(tiles.scene, tiles.split, strict=True)) == {
        f"top_potsdam_2_10_{suffix}": "train",  # official training tile
        f"top_potsdam_2_13_{suffix}": "val",  # official validation tile
    }
    for row, tile in zip(tiles.itertuples(), files, strict=True):  # 150×110 scenes: one padded 512 crop each
        source = tile.label_noboundary if eroded else tile.label
        expected = SCHEMES["potsdam"].decode(_read(source))
        np.testing.assert_array_equal(_crop_labels(out, row), _window(expected, row))
        assert (expected == IGNORE_INDEX).any() == eroded  # black boundaries only in the eroded labels
        crop = _read(out / row.image)
        assert crop.shape == (bands, 512, 512)
        np.testing.assert_array_equal(crop[:, :150, :110], _read(tile.rgbir)[:bands])


def test_potsdam_size_override_sets_half_stride(potsdam: tuple[Path, list], tmp_path: Path) -> None:
    root, _ = potsdam
    assert main([str(root), "--preset", "potsdam", "--size", "64", "--out", str(tmp_path / "t"), "--workers", "1"]) == 0
    tiles, _ = read_index(tmp_path / "t" / "index.gpkg")
    assert sorted(set(tiles.row_off)) == [0, 32, 64, 86] and sorted(set(tiles.col_off)) == [0, 32, 46]


def test_vaihingen_preset(tmp_path: Path) -> None:
    root = tmp_path / "Vaihingen"
    files = write_vaihingen(root, areas=(1, 2, 9), size=(120, 90), seed=1)  # 1 train, 2 val, 9 in neither list
    scenes = {Path(s.image).stem: s for s in find_scenes("vaihingen", root)}
    assert {k: s.split for k, s in scenes.items()} == {
        "top_mosaic_09cm_area1": "train",
        "top_mosaic_09cm_area2": "val",
        "top_mosaic_09cm_area9": "test",
    }
    assert [Path(str(s.label)) for s in scenes.values()] == [f.label for f in files]
    assert [Path(str(s.label)) for s in find_scenes("vaihingen", root, eroded=True)] == [
        f.label_noboundary for f in files
    ]
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "vaihingen", "--out", str(out), "--workers", "1"]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert len(tiles) == 3 and set(classes["scheme"]) == {"vaihingen"} and tiles.crs == "EPSG:32632"
    row = next(tiles[tiles.split == "val"].itertuples())
    expected = SCHEMES["vaihingen"].decode(_read(files[1].label))
    np.testing.assert_array_equal(_crop_labels(out, row), _window(expected, row))
    assert _read(out / row.image).shape[0] == 3  # IRRG


def test_loveda_preset_maps_nodata_to_ignore(tmp_path: Path) -> None:
    root = tmp_path / "LoveDA"
    files = write_loveda(root, per_folder=1, size=160, seed=2)  # one image per folder, each with a no-data edge
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "loveda", "--out", str(out), "--workers", "1"]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    keys = {f"{f.split}_{f.domain}_{f.id}".lower(): f for f in files}
    assert dict(zip(tiles.scene, tiles.split, strict=True)) == {k: f.split.lower() for k, f in keys.items()}
    assert list(classes["name"]) == [*SCHEMES["loveda"].classes, "ignore"]
    for row in tiles.itertuples():
        mask = _read(keys[row.scene].mask)[0]
        assert (mask == 0).any()
        expected = np.where(mask == 0, IGNORE_INDEX, mask.astype(int) - 1)
        np.testing.assert_array_equal(_crop_labels(out, row), expected)
        assert row.n_ignore == (mask == 0).sum() + 512 * 512 - 160 * 160


def test_isaid_preset_uses_896_stride_512_and_colour_masks(tmp_path: Path) -> None:
    root = tmp_path / "iSAID"
    files = write_isaid(root, per_split=1, size=(950, 140), seed=4)
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "isaid", "--out", str(out), "--workers", "1"]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert (PRESETS["isaid"].size, PRESETS["isaid"].stride) == (896, 512) and len(classes) == 17
    assert sorted(zip(tiles.scene, tiles.row_off, tiles.split, strict=True)) == [
        ("P0000", 0, "train"),
        ("P0000", 54, "train"),
        ("P1000", 0, "val"),
        ("P1000", 54, "val"),
    ]
    masks = {f.id: SCHEMES["isaid"].decode(_read(f.mask)) for f in files}
    for row in tiles.itertuples():
        np.testing.assert_array_equal(_crop_labels(out, row), _window(masks[row.scene], row))
        assert _read(out / row.image).shape == (3, 896, 896)
