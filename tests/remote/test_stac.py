"""STAC Items as scenes: single-band COG assets on a loopback HTTP server stacked into a VRT, through the CLIs."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.shutil

from pipelines.infer import main as infer_main
from pipelines.tile import main as tile_main
from rs_deeplab.geo.raster import open_raster, write_geotiff
from rs_deeplab.remote.stac import item_vrt
from tests.remote.test_scenes import BANDS, TRANSFORM, checkpoint, one_line_error, read, served, web  # noqa: F401
from tests.servers import HttpServer


def write_cogs(folder: Path, scene: Path, *, coarse_nir: bool = False) -> dict[str, str]:
    """Each band of ``scene`` as a single-band COG next to it (``nir`` at half the resolution when asked)."""
    names = {}
    with rasterio.open(scene) as src:
        data = src.read()
        for i, band in enumerate(BANDS):
            plain = folder / f"plain_{band}.tif"
            transform, pixels = TRANSFORM, data[i]
            if coarse_nir and band == "nir":
                transform, pixels = TRANSFORM @ rasterio.Affine.scale(2), data[i, ::2, ::2]
            write_geotiff(plain, pixels, crs=src.crs, transform=transform)
            name = f"{band}{'_coarse' if coarse_nir and band == 'nir' else ''}.tif"
            rasterio.shutil.copy(plain, folder / name, driver="COG")
            plain.unlink()
            names[band] = name
    return names


def write_item(path: Path, hrefs: dict[str, str]) -> Path:
    """A STAC Item at ``path`` whose assets are ``hrefs`` (absolute URLs or paths relative to the Item)."""
    item = pystac.Item(
        id="blob-scene",
        geometry={"type": "Point", "coordinates": [0.0, 0.0]},
        bbox=[0, 0, 0, 0],
        datetime=datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC),
        properties={},
    )
    for name, href in hrefs.items():
        item.add_asset(name, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


@pytest.fixture(scope="module")
def item_url(served: Path) -> str:  # noqa: F811 (the fixture imported above)
    """Relative asset hrefs in an Item served next to its COGs."""
    names = write_cogs(served, served / "scene.tif")
    write_item(served / "item.json", {band: f"./{name}" for band, name in names.items()})
    return "/item.json"


def test_item_assets_stacked_equal_the_local_scene(
    checkpoint: Path,  # noqa: F811
    served: Path,  # noqa: F811
    web: HttpServer,  # noqa: F811
    item_url: str,
    tmp_path: Path,
) -> None:
    ck = ["--checkpoint", str(checkpoint), "-q"]
    assert infer_main([str(served / "scene.tif"), "--out", str(tmp_path / "local.tif"), *ck]) == 0
    # an Item URL with relative hrefs and --assets; a local Item with absolute URLs and the checkpoint's band names
    assert infer_main([web.url + item_url, "--assets", ",".join(BANDS), "--out", str(tmp_path / "a.tif"), *ck]) == 0
    local_item = write_item(tmp_path / "item.json", {b: f"{web.url}/{b}.tif" for b in BANDS})
    assert infer_main([str(local_item), "--out", str(tmp_path / "b.gpkg"), *ck]) == 0
    expected = read(tmp_path / "local.tif")
    for name in ("a.tif", "b.tif"):
        np.testing.assert_array_equal(read(tmp_path / name), expected)
        with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / name) as b:
            assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
    vrt = item_vrt(str(local_item), BANDS)
    assert vrt.stem == "blob-scene" and f"/vsicurl/{web.url}/red.tif" in vrt.read_text()
    with open_raster(vrt) as ds:
        assert ds.descriptions == BANDS


def test_assets_at_other_resolutions_are_resampled_to_the_finest(
    served: Path,  # noqa: F811
    web: HttpServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    names = write_cogs(served, served / "scene.tif", coarse_nir=True)
    item = write_item(tmp_path / "item.json", {b: f"{web.url}/{n}" for b, n in names.items()})
    with open_raster(item_vrt(str(item), BANDS, folder=tmp_path)) as ds, rasterio.open(served / "scene.tif") as src:
        assert (ds.shape, ds.transform, ds.crs) == (src.shape, src.transform, src.crs)
        stacked, original = ds.read().astype(float), src.read().astype(float)
    np.testing.assert_array_equal(stacked[:3], original[:3])
    coarse = original[3, ::2, ::2]
    n = coarse.shape[0]
    at = np.clip(np.arange(2 * n) / 2 - 0.25, 0, n - 1)  # fine pixel centres in coarse pixel coordinates
    rows = np.array([np.interp(at, np.arange(n), c) for c in coarse.T]).T  # bilinear: linear along each axis
    expected = np.array([np.interp(at, np.arange(n), r) for r in rows])
    assert np.abs(stacked[3, 1:-1, 1:-1] - expected[1:-1, 1:-1]).max() <= 1.0  # uint8 rounding


def test_item_without_the_asked_assets_is_one_line_exit_2(
    checkpoint: Path,  # noqa: F811
    web: HttpServer,  # noqa: F811
    item_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = [web.url + item_url, "--assets", "red,green,swir", "--out", str(out / "x.tif"), "--checkpoint"]
    assert infer_main([*args, str(checkpoint)]) == 2
    err = one_line_error(capsys)
    assert "has no asset swir" in err and "it has: blue, green, nir, red" in err and "--assets" in err
    assert list(out.iterdir()) == []


def test_item_url_not_found_is_one_line_exit_2(
    checkpoint: Path,  # noqa: F811
    web: HttpServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        infer_main([f"{web.url}/nothing.json", "--out", str(tmp_path / "x.tif"), "--checkpoint", str(checkpoint)]) == 2
    )
    assert "nothing.json: not found on the server (HTTP 404)" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_tile_a_stac_item(web: HttpServer, item_url: str, tmp_path: Path) -> None:  # noqa: F811
    args = ["--assets", "red,green,blue", "--size", "48", "--out", str(tmp_path / "tiles"), "--workers", "1", "-q"]
    assert tile_main([web.url + item_url, *args]) == 0
    crops = sorted((tmp_path / "tiles" / "images").iterdir())
    assert crops and all(c.name.startswith("blob-scene_") for c in crops)
    with rasterio.open(crops[0]) as crop:
        assert crop.count == 3 and crop.descriptions == BANDS[:3]
