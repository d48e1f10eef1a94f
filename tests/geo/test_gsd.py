"""Ground sampling distance of rasters and training data, ``--gsd`` parsing and the working-GSD decision."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from rs_deeplab.geo.gsd import parse_gsd, raster_gsd, rasters_gsd, training_gsd, working_gsd

UTM = CRS.from_epsg(32633)


def test_raster_gsd_projected_in_metres_and_feet() -> None:
    assert raster_gsd(Affine(0.5, 0, 368_000, 0, -0.5, 5_808_000), UTM) == pytest.approx(0.5)
    assert raster_gsd(Affine(0.5, 0, 0, 0, -2.0, 0), UTM) == pytest.approx(1.0)  # non-square: sqrt of the area
    rotated = Affine.translation(368_000, 5_808_000) @ Affine.rotation(30) @ Affine.scale(0.3, -0.3)
    assert raster_gsd(rotated, UTM) == pytest.approx(0.3)
    feet = CRS.from_epsg(2263)  # NY State Plane, US survey feet
    assert raster_gsd(Affine(1.0, 0, 980_000, 0, -1.0, 200_000), feet) == pytest.approx(0.3048006, rel=1e-6)


def test_raster_gsd_geographic_at_the_centre_latitude() -> None:
    deg = 1e-5
    at_equator = raster_gsd(Affine(deg, 0, 10, 0, -deg, 0.0), CRS.from_epsg(4326), (0, 0))
    assert at_equator is not None and at_equator == pytest.approx(deg * math.pi * 6_371_008.8 / 180)  # ~1.11 m
    # 1000 rows below 60.005°N: centre at 60°N, east-west metres halved
    at_60 = raster_gsd(Affine(deg, 0, 10, 0, -deg, 60.0 + 500 * deg), CRS.from_epsg(4326), (1000, 1000))
    assert at_60 == pytest.approx(at_equator * math.sqrt(0.5), rel=1e-4)


def test_raster_gsd_is_none_without_a_crs_or_a_pixel_size() -> None:
    assert raster_gsd(Affine.identity(), None) is None
    assert raster_gsd(Affine(0, 0, 0, 0, 0, 0), UTM) is None


def test_training_gsd_is_the_median_and_warns_on_mixed_scales(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rs_deeplab.geo.gsd"):
        assert training_gsd([0.05, 0.05, 0.051]) == pytest.approx(0.05)
        assert not caplog.records
        assert training_gsd(iter([None, None])) is None
        assert training_gsd([]) is None
        assert training_gsd(g for g in (0.05, 0.09, 0.3)) == pytest.approx(0.09)
        assert "different ground sampling distances" in caplog.text
        caplog.clear()
        assert training_gsd([0.5, None]) == pytest.approx(0.5)
        assert "have no ground sampling distance" in caplog.text


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "fast", ""])
def test_parse_gsd_refuses_what_is_not_a_positive_number(text: str) -> None:
    with pytest.raises(ValueError, match="expected auto, native or a positive number"):
        parse_gsd(text)


def test_parse_gsd_choices() -> None:
    assert parse_gsd("auto") == "auto" and parse_gsd(" Native ") == "native" and parse_gsd("0.5") == 0.5


def test_working_gsd_decision(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rs_deeplab.geo.gsd"):
        assert working_gsd("auto", 0.5, 1.0) == 0.5
        assert working_gsd("auto", 0.5, 0.504) is None  # within 1%: the scene's own pixels
        assert working_gsd("auto", None, 1.0) is None  # pixel-only model: native, silently
        assert working_gsd("native", None, 1.0) is None
        assert working_gsd(0.25, None, 1.0) == 0.25
        assert working_gsd(1.0, 0.5, 1.0) is None
        assert working_gsd("native", 0.5, 0.6) is None  # 1.2× off: no warning
        assert not caplog.records
        assert working_gsd("native", 0.5, 1.0, "a.tif") is None
        assert len(caplog.records) == 1 and "a.tif" in caplog.text and "--gsd native" in caplog.text
        caplog.clear()
        assert working_gsd("auto", 0.5, None, "b.png") is None
        assert "b.png" in caplog.text
    with pytest.raises(ValueError, match="no georeferencing"):
        working_gsd(0.5, 0.5, None, "c.png")


@pytest.mark.parametrize(
    "model, scene, words",
    [
        (
            0.05,
            0.6,
            "d.tif: 0.6 m/pixel, the model was trained at 0.05 m/pixel: --gsd auto would predict it at 144× "
            "the pixels (beyond 4× either way); use --gsd native for its own pixels, or --gsd <metres> (e.g. "
            "--gsd 0.05) to accept the cost",
        ),
        (0.5, 0.2, "at 1/6.25 of the pixels"),
        (0.1, 0.2 * 1.02, "at 4.16× the pixels"),
    ],
)
def test_auto_stops_beyond_four_times_the_pixels(model: float, scene: float, words: str) -> None:
    with pytest.raises(ValueError) as info:
        working_gsd("auto", model, scene, "d.tif")
    assert words in str(info.value)
    assert working_gsd("native", model, scene, "d.tif") is None and working_gsd(model, model, scene) == model


def test_auto_resamples_up_to_four_times_the_pixels_either_way() -> None:
    for model, scene in ((0.05, 0.1), (0.1, 0.05), (0.15, 0.3 * 1.004), (0.5, 0.3)):
        assert working_gsd("auto", model, scene) == model


def test_rasters_gsd_reads_headers(tmp_path: Path) -> None:
    import numpy as np

    from rs_deeplab.geo.raster import write_geotiff

    a = write_geotiff(
        tmp_path / "a.tif",
        np.zeros((1, 8, 8), np.uint8),
        crs="EPSG:32633",
        transform=Affine(0.3, 0, 368_000, 0, -0.3, 5_808_000),
    )
    png = tmp_path / "b.png"
    with rasterio.open(png, "w", driver="PNG", width=8, height=8, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 8, 8), np.uint8))
    assert rasters_gsd([a, a]) == pytest.approx(0.3)
    assert rasters_gsd([png]) is None
