"""A remote scene's server that hiccups or stops answering in the middle of a job, through the real CLIs.

The server is a real HTTP server on loopback (:func:`tests.servers.http_server`) told to misbehave
(:class:`tests.servers.Faults`): HTTP 500/502/503/504 and connections reset (before an answer, or halfway through
the body) after some answered Range requests are retried and give the undisturbed result; a server that stalls
(reads the request and sends nothing), goes away or answers 503 to everything after the first rows are finished is
one line naming the URL and the timeout (or the refusal, or the status), exit 2, and the re-run resumes from those
rows to the identical result. Timeouts and pauses are
lowered for the tests (``RS_DEEPLAB_HTTP_TIMEOUT=1``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipelines.infer import main as infer_main
from pipelines.tile import main as tile_main
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.writing.writer import partial_path, sidecar_path
from rs_deeplab.remote.http import http_settings, read_options
from rs_deeplab.tiling.crops import PARTS
from tests.remote.test_scenes import BANDS, TRANSFORM, checkpoint, one_line_error  # noqa: F401 (the fixture)
from tests.servers import Faults, http_server, range_start
from tests.trainkit import blob_scene

HEIGHT, WIDTH = 2048, 512
"""Eight rows of 256-pixel GeoTIFF tiles: GDAL fetches the file in ranges that grow but stay well short of it, so a
server that stops once the first rows are written (and only for ranges past the second tile row, which those rows
never need) leaves finished rows behind and rows still to do."""
INFER = ["--size", "128", "--stride", "128", "--batch-size", "4"]
WINDOWS = 16 * 4
"""Windows of the whole scene at ``INFER``'s size and stride."""
TILE = ["--size", "128", "--stride", "128", "--workers", "1"]
EXPECTED = {
    "stall": "did not answer within 1 s (RS_DEEPLAB_HTTP_TIMEOUT)",
    "gone": "refused or dropped the connection",
    503: "answered HTTP 503 (also to 3 retries)",
}
"""What the one error line says for each outage of the server."""
HICCUPS: list[int | str | None] = ["cut", 500, None, 502, "reset", 503, None, "cut", 504, None, "reset"]


@pytest.fixture(autouse=True)
def quick_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 s timeout and 50 ms first pause, so that a stalled server costs seconds."""
    monkeypatch.setenv("RS_DEEPLAB_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("RS_DEEPLAB_HTTP_RETRY_DELAY", "0.05")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served folder: a 4-band 2048×512 scene (tiled 256², deflate)."""
    root = tmp_path_factory.mktemp("served_faults")
    image = np.concatenate([blob_scene(seed, WIDTH)[0] for seed in range(21, 25)], axis=1)
    write_geotiff(root / "scene.tif", image, crs="EPSG:32633", transform=TRANSFORM, descriptions=BANDS)
    return root


@pytest.fixture(scope="module")
def local_labels(checkpoint: Path, served: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:  # noqa: F811
    """The label raster of the scene read from disk: what every remote run must give."""
    out = tmp_path_factory.mktemp("local_labels") / "labels.tif"
    args = [str(served / "scene.tif"), "--out", str(out), "--checkpoint", str(checkpoint), "-q", *INFER]
    assert infer_main(args) == 0
    return read(out)


@pytest.fixture(scope="module")
def local_crops(served: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The crops of the scene tiled from disk."""
    out = tmp_path_factory.mktemp("local_crops")
    assert tile_main([str(served / "scene.tif"), "--out", str(out), "-q", *TILE]) == 0
    return crops(out)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def crops(out: Path) -> dict[str, np.ndarray]:
    return {p.name: read(p) for p in sorted((out / "images").glob("*.tif"))}


def committed_rows(out: Path) -> int:
    """Rows of ``out`` the writer has committed to its partial file (0 before the first block row)."""
    try:
        return int(json.loads(sidecar_path(out).read_text())["rows"])
    except (OSError, ValueError, KeyError):
        return 0


def finished_parts(out: Path) -> bool:
    """Whether the tiler has finished a row of windows (its record saved)."""
    return any((out / PARTS).rglob("*.json"))


def test_the_settings_reach_gdal(monkeypatch: pytest.MonkeyPatch) -> None:
    options = read_options()
    assert options["GDAL_HTTP_LOW_SPEED_TIME"] == options["GDAL_HTTP_CONNECTTIMEOUT"] == "1"
    assert options["GDAL_HTTP_MAX_RETRY"] == "3" and options["GDAL_HTTP_RETRY_DELAY"] == "0.05"
    assert "/vsicurl/" in options["CPL_VSIL_CURL_NON_CACHED"].split(":")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "7")  # GDAL's own variable, set by the user, wins
    assert "GDAL_HTTP_MAX_RETRY" not in read_options()
    monkeypatch.setenv("RS_DEEPLAB_HTTP_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="RS_DEEPLAB_HTTP_TIMEOUT=soon: expected a whole number >= 1"):
        http_settings()


@pytest.mark.slow
def test_infer_rides_out_5xx_and_resets(
    checkpoint: Path,  # noqa: F811
    served: Path,
    local_labels: np.ndarray,
    tmp_path: Path,
) -> None:
    faults = Faults(after=1, queue=list(HICCUPS))
    with http_server(served, faults=faults) as web:
        out = tmp_path / "labels.tif"
        assert (
            infer_main([f"{web.url}/scene.tif", "--out", str(out), "--checkpoint", str(checkpoint), "-q", *INFER]) == 0
        )
    assert faults.delivered == [f for f in HICCUPS if f is not None]  # every hiccup happened, mid-job
    np.testing.assert_array_equal(read(out), local_labels)


def test_tile_rides_out_5xx_and_resets(served: Path, local_crops: dict[str, np.ndarray], tmp_path: Path) -> None:
    faults = Faults(after=1, queue=list(HICCUPS))
    with http_server(served, faults=faults) as web:
        assert tile_main([f"{web.url}/scene.tif", "--out", str(tmp_path / "tiles"), "-q", *TILE]) == 0
    assert faults.delivered == [f for f in HICCUPS if f is not None]
    got = crops(tmp_path / "tiles")
    assert list(got) == list(local_crops)
    for name, pixels in local_crops.items():
        np.testing.assert_array_equal(got[name], pixels)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stall", "gone"])
def test_infer_stops_in_one_line_when_the_server_stops_answering_and_resumes(
    checkpoint: Path,  # noqa: F811
    served: Path,
    local_labels: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    outage: str,
) -> None:
    out = tmp_path / "labels.tif"
    with rasterio.open(served / "scene.tif") as ds:  # where the tiles of rows 512.. start in the file
        later = int(ds.get_tag_item("BLOCK_OFFSET_0_2", "TIFF", bidx=1))
    faults = Faults(outage_when=lambda rng: committed_rows(out) > 0 and range_start(rng) >= later, outage=outage)
    with http_server(served, faults=faults) as web:
        url = f"{web.url}/scene.tif"
        args = [url, "--out", str(out), "--checkpoint", str(checkpoint), *INFER]
        assert infer_main([*args, "-q"]) == 2
        err = one_line_error(capsys)
        port = int(web.url.rsplit(":", 1)[1])
    assert err.startswith(f"error: {url}: the server ") and EXPECTED[outage] in err, err
    assert err.endswith("re-run the same command to resume"), err
    assert faults.delivered and not out.exists()
    done = committed_rows(out)  # the finished rows stay for the re-run
    assert partial_path(out).exists() and 256 <= done < HEIGHT, done
    with http_server(served, port=port):  # the server is back, at the same URL
        assert infer_main(args) == 0
    err = capsys.readouterr().err
    assert f"resuming at row {done} of {HEIGHT}" in err, err
    ran, total = map(int, re.search(r"(\d+) of (\d+) windows run", err).groups())  # type: ignore[union-attr]
    assert ran == total < WINDOWS, err  # the windows of the rows left, no more
    np.testing.assert_array_equal(read(out), local_labels)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stall", "gone", 503])
def test_tile_stops_in_one_line_when_the_server_stops_answering_and_resumes(
    served: Path,
    local_crops: dict[str, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    outage: str | int,
) -> None:
    out = tmp_path / "tiles"
    faults = Faults(outage_when=lambda _: finished_parts(out), outage=outage)
    with http_server(served, faults=faults) as web:
        url = f"{web.url}/scene.tif"
        args = [url, "--out", str(out), *TILE]
        assert tile_main([*args, "-q"]) == 2
        err = one_line_error(capsys)
        port = int(web.url.rsplit(":", 1)[1])
    assert err.startswith(f"error: {url}: the server ") and EXPECTED[outage] in err, err
    assert err.endswith("re-run the same command to resume"), err
    done = len(crops(out))
    assert 0 < done < len(local_crops)
    with http_server(served, port=port) as back:
        assert tile_main(args) == 0
        resumed_bytes = back.traffic.sent["/scene.tif"]
    assert f"{done} already done" in capsys.readouterr().err
    got = crops(out)
    assert list(got) == list(local_crops)
    for name, pixels in local_crops.items():
        np.testing.assert_array_equal(got[name], pixels)
    assert resumed_bytes < 0.8 * (served / "scene.tif").stat().st_size
