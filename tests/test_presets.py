"""Dataset presets on tiny folders in each dataset's official layout: files, splits, sizes and label decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipelines.tile import main
from rs_deeplab.classes import IGNORE_INDEX, SCHEMES
from rs_deeplab.presets import PRESETS, find_scenes
from rs_deeplab.raster import quiet_georeferencing, write_geotiff
from rs_deeplab.tileindex import read_index
from tests.conftest import DEFAULT_TRANSFORM, UTM33


def _ids(seed: int, height: int, width: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, n, (height // 10 + 1, width // 10 + 1)).astype(np.uint8)
    return np.repeat(np.repeat(cells, 10, axis=0), 10, axis=1)[:height, :width]


def _tif(path: Path, array: np.ndarray, georef: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_georeferencing():
        return write_geotiff(
            path, array, crs=UTM33 if georef else None, transform=DEFAULT_TRANSFORM if georef else None
        )


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array[np.newaxis] if array.ndim == 2 else array
    with quiet_georeferencing(), rasterio.open(path, "w", driver="PNG", width=data.shape[2], height=data.shape[1],
                                               count=data.shape[0], dtype="uint8") as dst:  # fmt: skip
        dst.write(data)
    return path


def _labels(out: Path, row: object) -> np.ndarray:
    with rasterio.open(out / str(row.label)) as src:  # type: ignore[attr-defined]
        return src.read(1)


@pytest.fixture
def potsdam(tmp_path: Path) -> tuple[Path, dict[tuple[int, int], np.ndarray]]:
    """Tiles 2_10 (train) and 2_13 (val) in the official folders; the eroded labels have black boundaries."""
    root, ids = tmp_path / "Potsdam", {}
    scheme = SCHEMES["potsdam"]
    for seed, (i, j) in enumerate(((2, 10), (2, 13))):
        ids[(i, j)] = classes = _ids(seed, 90, 70, 6)
        rgbir = np.random.default_rng(seed).integers(0, 255, (4, 90, 70), dtype=np.uint8)
        _tif(root / "2_Ortho_RGB" / f"top_potsdam_{i}_{j}_RGB.tif", rgbir[:3])
        _tif(root / "4_Ortho_RGBIR" / f"top_potsdam_{i}_{j}_RGBIR.tif", rgbir)
        _tif(root / "5_Labels_all" / f"top_potsdam_{i}_{j}_label.tif", scheme.encode_colours(classes))
        eroded = scheme.encode_colours(classes)
        eroded[:, :, ::10] = 0  # boundary pixels (every tenth column) are black
        _tif(root / "5_Labels_all_noBoundary" / f"top_potsdam_{i}_{j}_label_noBoundary.tif", eroded)
    return root, ids


@pytest.mark.parametrize(("flags", "bands", "eroded"), [([], 4, False), (["--bands", "rgb", "--eroded"], 3, True)])
def test_potsdam_preset(potsdam: tuple[Path, dict], tmp_path: Path, flags: list[str], bands: int, eroded: bool) -> None:
    root, ids = potsdam
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "potsdam", "--out", str(out), "--workers", "1", *flags]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert list(classes["name"]) == [*SCHEMES["potsdam"].classes, "ignore"]
    assert dict(zip(tiles.scene, tiles.split, strict=True)) == {
        f"top_potsdam_2_10_{'RGBIR' if bands == 4 else 'RGB'}": "train",
        f"top_potsdam_2_13_{'RGBIR' if bands == 4 else 'RGB'}": "val",
    }
    for row in tiles.itertuples():  # 90×70 scenes: one padded 512 crop each
        ij = (2, 10) if "_2_10_" in row.scene else (2, 13)
        with rasterio.open(out / row.image) as crop:
            assert (crop.count, crop.width, crop.height) == (bands, 512, 512)
        expected = ids[ij].copy()
        if eroded:
            expected[:, ::10] = IGNORE_INDEX
        np.testing.assert_array_equal(_labels(out, row)[:90, :70], expected)


def test_potsdam_size_override_sets_half_stride(potsdam: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = potsdam
    assert main([str(root), "--preset", "potsdam", "--size", "32", "--out", str(tmp_path / "t"), "--workers", "1"]) == 0
    tiles, _ = read_index(tmp_path / "t" / "index.gpkg")
    assert sorted(set(tiles.row_off)) == [0, 16, 32, 48, 58] and sorted(set(tiles.col_off)) == [0, 16, 32, 38]


def test_vaihingen_preset(tmp_path: Path) -> None:
    root = tmp_path / "Vaihingen"
    for area in (1, 2, 9):  # 1 train, 2 val, 9 neither (and unlabelled): test
        irrg = np.full((3, 60, 50), area, np.uint8)
        _tif(root / "top" / f"top_mosaic_09cm_area{area}.tif", irrg)
        if area != 9:
            colours = SCHEMES["vaihingen"].encode_colours(_ids(area, 60, 50, 6))
            _tif(root / "gts_for_participants" / f"top_mosaic_09cm_area{area}.tif", colours, georef=False)
            _tif(root / "gts_eroded_for_participants" / f"top_mosaic_09cm_area{area}_noBoundary.tif", colours)
    scenes = {Path(s.image).stem: s for s in find_scenes("vaihingen", root)}
    assert {k: s.split for k, s in scenes.items()} == {
        "top_mosaic_09cm_area1": "train", "top_mosaic_09cm_area2": "val", "top_mosaic_09cm_area9": "test",
    }  # fmt: skip
    assert Path(scenes["top_mosaic_09cm_area1"].label).parent.name == "gts_for_participants"  # type: ignore[arg-type]
    eroded = find_scenes("vaihingen", root, eroded=True)
    assert Path(eroded[0].label).name == "top_mosaic_09cm_area1_noBoundary.tif"  # type: ignore[arg-type]
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "vaihingen", "--out", str(out), "--workers", "1"]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert len(tiles) == 3 and set(classes["scheme"]) == {"vaihingen"}
    row = next(tiles[tiles.split == "val"].itertuples())
    np.testing.assert_array_equal(_labels(out, row)[:60, :50], _ids(2, 60, 50, 6))


def test_loveda_preset_maps_nodata_to_ignore(tmp_path: Path) -> None:
    root = tmp_path / "LoveDA"
    masks = {}
    for split, domain, name in (("Train", "Urban", "1366"), ("Val", "Rural", "2522")):
        masks[split] = mask = _ids(int(name), 100, 120, 8)  # 0 no-data, 1..7 classes
        _png(root / split / domain / "images_png" / f"{name}.png", np.zeros((3, 100, 120), np.uint8) + 50)
        _png(root / split / domain / "masks_png" / f"{name}.png", mask)
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "loveda", "--out", str(out), "--workers", "1"]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert dict(zip(tiles.scene, tiles.split, strict=True)) == {"train_urban_1366": "train", "val_rural_2522": "val"}
    assert list(classes["name"]) == [*SCHEMES["loveda"].classes, "ignore"]
    for row in tiles.itertuples():
        mask = masks["Train" if row.split == "train" else "Val"]
        expected = np.where(mask == 0, IGNORE_INDEX, mask.astype(int) - 1)
        np.testing.assert_array_equal(_labels(out, row)[:100, :120], expected)
        assert row.n_ignore == (mask == 0).sum() + 512 * 512 - 100 * 120


def test_isaid_preset_uses_896_stride_512_and_colour_masks(tmp_path: Path) -> None:
    root = tmp_path / "iSAID"
    scheme = SCHEMES["isaid"]
    ids = _ids(5, 950, 120, 16)
    for split, name in (("train", "P0001"), ("val", "P0002")):
        _png(root / split / "images" / f"{name}.png", np.zeros((3, 950, 120), np.uint8))
        _png(root / split / "Semantic_masks" / "images" / f"{name}_instance_color_RGB.png", scheme.encode_colours(ids))
    out = tmp_path / "tiles"
    assert main([str(root), "--preset", "isaid", "--out", str(out), "--workers", "1"]) == 0
    tiles, classes = read_index(out / "index.gpkg")
    assert PRESETS["isaid"].size == 896 and len(classes) == 17
    assert sorted(zip(tiles.scene, tiles.row_off, tiles.split, strict=True)) == [
        ("P0001", 0, "train"), ("P0001", 54, "train"), ("P0002", 0, "val"), ("P0002", 54, "val"),
    ]  # fmt: skip
    row = next(tiles.itertuples())
    np.testing.assert_array_equal(_labels(out, row)[:896, :120], ids[:896])
