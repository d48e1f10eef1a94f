from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, MaskFlags

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.raster import atomic_output, open_raster, write_geotiff
from tests.conftest import DEFAULT_TRANSFORM, RasterFactory


def test_write_and_read_back(make_raster: RasterFactory, rng: np.random.Generator) -> None:
    data = rng.integers(0, 65535, size=(2, 300, 270), dtype=np.uint16)
    path = make_raster(data, nodata=0, descriptions=["pan", "dsm"], tags={"CLASS_NAMES": "[]"})
    with open_raster(path) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == DEFAULT_TRANSFORM
        assert src.descriptions == ("pan", "dsm")
        assert src.nodata == 0
        assert src.profile["tiled"] is True
        assert src.tags()["CLASS_NAMES"] == "[]"
        assert np.array_equal(src.read(), data)


def test_colormap_written(make_raster: RasterFactory) -> None:
    path = make_raster(np.zeros((4, 4), dtype=np.uint8), colormap={0: (255, 0, 0), 1: (0, 255, 0)})
    with rasterio.open(path) as src:
        assert src.colormap(1)[0] == (255, 0, 0, 255)


def test_four_band_uint8_has_no_alpha_band(make_raster: RasterFactory, rng: np.random.Generator) -> None:
    """An RGB+NIR scene's NIR is data: no alpha tag, so QGIS and GDAL masks keep dark-NIR pixels."""
    data = rng.integers(0, 256, size=(4, 300, 270), dtype=np.uint8)
    data[3, :10] = 0
    path = make_raster(data, descriptions=["red", "green", "blue", "nir"])
    with rasterio.open(path) as src:
        assert ColorInterp.alpha not in src.colorinterp
        assert src.colorinterp[:3] == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)
        assert src.read_masks(1)[:10].all()
        assert np.array_equal(src.read(), data)


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(RasterError, match="file not found"):
        open_raster(tmp_path / "nope.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RasterError, match="not a raster GDAL can read"):
        open_raster(tmp_path / "notes.txt")
    with pytest.raises(RasterError, match="is a directory"):
        open_raster(tmp_path)


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out.tif"
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_replaces_existing(tmp_path: Path) -> None:
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_output(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"
    assert final.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_output_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist; create it first"), atomic_output(tmp_path / "a" / "b.tif"):
        pass


def test_write_geotiff_rejects_bad_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a"):
        write_geotiff(tmp_path / "x.tif", np.zeros((1, 2, 3, 4), dtype=np.uint8))


def test_the_block_cache_of_a_run_is_64_mib_unless_the_user_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from rasterio.env import get_gdal_config

    from rs_deeplab.geo.raster import small_block_cache

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with small_block_cache():
        assert int(get_gdal_config("GDAL_CACHEMAX")) == 64 * 2**20  # bytes: not a 64-byte cache
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    with small_block_cache():
        assert get_gdal_config("GDAL_CACHEMAX") != 64 * 2**20
