"""Crops written from a template of GDAL's bytes are the very files GDAL writes (real GeoTIFFs, real GDAL)."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from rs_deeplab.cli.errors import DiskFullError
from rs_deeplab.geo.raster import geotiff_profile
from rs_deeplab.tiling import crops
from rs_deeplab.tiling.tiff_template import TiffTemplate
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes

CLASSES = ["a", "b", "c", "d", "e", "f"]
UTM = Affine(0.5, 0, 368_000.0, 0, -0.5, 5_808_000.0)


def _scene(
    folder: Path,
    name: str,
    shape: tuple[int, int, int],
    dtype: str,
    *,
    nodata: float | None = None,
    crs: str | None = "EPSG:32633",
    transform: Affine = UTM,
    holes: bool = False,
    label: bool = True,
) -> SceneSpec:
    """A noisy scene (with a corner of nodata where ``holes``) and class ids with an ignored (255) corner."""
    rng = np.random.default_rng(len(name) + shape[1])
    count, height, width = shape
    data = rng.integers(1, 200, shape).astype(dtype)
    if holes:
        data[:, : height // 3, : width // 2] = 0 if nodata is None else nodata
    profile = geotiff_profile(
        width=width, height=height, count=count, dtype=dtype, crs=crs, transform=transform, nodata=nodata, compress=None
    )
    image = folder / f"{name}.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the pixel-coordinate scene
        with rasterio.open(image, "w", **profile) as dst:
            dst.write(data)
            if count == 3:
                dst.descriptions = ("red", "green", "nir")
    if not label:
        return SceneSpec(image)
    classes = rng.integers(0, 6, (1, height, width)).astype("uint8")
    classes[:, height // 2 :, : width // 3] = 255
    labels = folder / f"{name}_labels.tif"
    with rasterio.open(labels, "w", **dict(profile, count=1, dtype="uint8", nodata=255)) as dst:
        dst.write(classes)
    return SceneSpec(image, labels)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.tif"))}


@pytest.mark.parametrize(
    ("shape", "dtype", "options", "size"),
    [
        ((4, 1100, 1000), "uint8", {}, 512),
        ((3, 700, 900), "uint16", {"nodata": 0, "holes": True}, 256),
        ((1, 1000, 700), "int16", {"nodata": -5, "crs": None, "transform": Affine.identity(), "label": False}, 256),
        ((4, 600, 600), "uint8", {"transform": Affine(0.5, 0.1, 1000.0, 0.1, -0.5, 2000.0)}, 256),
        (
            (2, 700, 640),
            "uint8",
            {"crs": "EPSG:4326", "transform": Affine(1e-4, 0, 10.0, 0, -1e-4, 50.0), "holes": True},
            256,
        ),
    ],
    ids=["rgbir-512", "uint16-nodata-holes", "no-crs-identity", "rotated", "geographic-holes"],
)
def test_crops_from_the_template_are_gdals_bytes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    shape: tuple[int, int, int],
    dtype: str,
    options: dict,
    size: int,
) -> None:
    """Every crop file, image and label, equals the one GDAL writes, and most were written from the template."""
    spec = _scene(tmp_path, "scene", shape, dtype, **options)
    classes = CLASSES if spec.label is not None else None
    outputs = {}
    for templates in (False, True):
        monkeypatch.setattr(crops, "TEMPLATE_WRITES", templates)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="rs_deeplab.tiling.tiler"):
            out = tile_scenes(
                [spec], tmp_path / f"out{int(templates)}", size=size, classes=classes, workers=1, quiet=True
            )
        counts = [
            re.search(r"(\d+) crop files written from a template, (\d+) by GDAL", r.getMessage())
            for r in caplog.records
        ]
        fast, slow = (sum(int(m.group(i)) for m in counts if m) for i in (1, 2))
        outputs[templates] = _files(out.out)
        if templates:
            assert fast > slow, (fast, slow)  # the template wrote most crops (GDAL: the first ones, empty tiles)
        else:
            assert fast == 0 and slow == len(outputs[False])
    assert outputs[True].keys() == outputs[False].keys() and len(outputs[True]) > 8
    different = [name for name, data in outputs[True].items() if data != outputs[False][name]]
    assert different == []


def _gdal_crop(path: Path, pixels: np.ndarray, **options: object) -> bytes:
    profile = geotiff_profile(
        width=pixels.shape[2],
        height=pixels.shape[1],
        count=pixels.shape[0],
        dtype=pixels.dtype,
        crs="EPSG:32633",
        transform=UTM,
        compress=None,
    )
    with rasterio.open(path, "w", **{**profile, "interleave": "band", **options}) as dst:
        dst.write(pixels)
    return path.read_bytes()


def test_layouts_a_template_cannot_write_are_left_to_gdal(tmp_path: Path) -> None:
    """Compressed, stripped, floating-point and out-of-order (an empty tile GDAL appended) crops teach nothing;
    a crop with an empty tile is not rendered; a plain crop is, byte for byte.
    """
    pixels = np.random.default_rng(0).integers(1, 255, (2, 512, 512), dtype=np.uint8)
    origin = (UTM.c, UTM.f)
    template = TiffTemplate.learn(_gdal_crop(tmp_path / "plain.tif", pixels), pixels, origin, None)
    assert template is not None
    moved = UTM @ Affine.translation(512, 512)
    expected = _gdal_crop(tmp_path / "moved.tif", pixels, transform=moved)
    pieces = template.render(pixels, (moved.c, moved.f))
    assert pieces is not None and b"".join(pieces) == expected

    assert TiffTemplate.learn(_gdal_crop(tmp_path / "z.tif", pixels, compress="deflate"), pixels, origin, None) is None
    assert TiffTemplate.learn(_gdal_crop(tmp_path / "s.tif", pixels, tiled=False), pixels, origin, None) is None
    floats = pixels.astype("float32")
    assert TiffTemplate.learn(_gdal_crop(tmp_path / "f.tif", floats), floats, origin, None) is None
    holed = pixels.copy()
    holed[1, :256, 256:] = 0  # one tile of band 2 empty: GDAL writes it last
    assert TiffTemplate.learn(_gdal_crop(tmp_path / "h.tif", holed), holed, origin, None) is None
    assert template.render(holed, origin) is None


def test_a_template_write_without_space_is_one_disk_full_error() -> None:
    with pytest.raises(DiskFullError, match=r"crop\.tif: cannot be written: no space left on the device"):
        crops._write_pieces(Path("crop.tif"), "/dev/full", [b"II*\x00", memoryview(b"\x00" * 70000)])
