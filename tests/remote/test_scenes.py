"""Remote scenes through the real CLIs, against real servers on loopback: an HTTP server honouring Range requests
(and counting the bytes it sends) and moto's S3 server, both serving the real COG sample and a generated scene."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from pipelines.infer import main as infer_main
from pipelines.tile import main as tile_main
from pipelines.vectorize import main as vectorize_main
from rs_deeplab.cli.errors import InputError
from rs_deeplab.config.schema import load_config
from rs_deeplab.evaluation.scenes import REPORT_JSON
from rs_deeplab.geo.raster import open_raster, write_geotiff
from rs_deeplab.remote.scenes import gdal_path, is_remote, remote_env, scene_names, scene_stem, source_url, stat_remote
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
from rs_deeplab.training.experiment import train_experiment
from tests.conftest import REAL_DATA
from tests.servers import S3_KEYS, HttpServer, http_server, s3_server
from tests.trainkit import blob_scene, write_config

COG = REAL_DATA / "cogeo.tif"  # tests that serve it use the real_data fixture (marked real_data, never skip)
TRANSFORM = rasterio.Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
BANDS = ("red", "green", "blue", "nir")


def band_scene(path: Path, seed: int, size: int, **kwargs: object) -> Path:
    """A 4-band blob scene with band descriptions red, green, blue, nir."""
    image, _ = blob_scene(seed, size)
    return write_geotiff(path, image, crs="EPSG:32633", transform=TRANSFORM, descriptions=BANDS, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A really trained tiny checkpoint whose crops carried band names (recorded as ``band_names``); trained once
    per session (a finished checkpoint in the session's temporary folder is reused by test_stac.py)."""
    folder = tmp_path_factory.getbasetemp() / "remote_checkpoint"
    done = folder / "best.pt"
    if done.exists():
        return done
    folder.mkdir(parents=True, exist_ok=True)
    from rs_deeplab.labels.classes import SCHEMES

    image_path = band_scene(folder / "train.tif", 1, 128)
    _, classes = blob_scene(1, 128)
    label = write_geotiff(
        folder / "train_label.tif", SCHEMES["potsdam"].encode_colours(classes), crs="EPSG:32633", transform=TRANSFORM
    )
    specs = [SceneSpec(image_path, label, "train"), SceneSpec(image_path, label, "val", key="val")]
    tile_scenes(specs, folder / "tiles", size=64, stride=64, scheme="potsdam", workers=1, quiet=True)
    cfg = write_config(
        folder / "exp.yaml",
        folder / "tiles",
        folder / "runs",
        schedule={"iterations": 1},
        train={"eval_every": 1, "checkpoint_every": 1, "log_every": 1},
        infer={"size": 64, "stride": 32, "batch_size": 4},
    )
    best = train_experiment(load_config(cfg)).best
    assert best is not None
    shutil.copy(best, done)
    return done


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    """The folder both servers serve: the real COG sample and a generated 4-band scene."""
    root = tmp_path_factory.mktemp("served")
    shutil.copy(COG, root / "cogeo.tif")
    band_scene(root / "scene.tif", 5, 96)
    return root


@pytest.fixture(scope="module")
def web(served: Path) -> Iterator[HttpServer]:
    with http_server(served) as server:
        yield server


@pytest.fixture
def s3(served: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The same files in bucket ``scenes`` of a moto S3 server; the environment points GDAL and botocore at it."""
    files = {
        f"x/{name}": served / name for name in ("cogeo.tif", "scene.tif", "labels.tif") if (served / name).exists()
    }
    with s3_server("scenes", files) as env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        yield


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_urls_map_to_gdal_file_systems() -> None:
    assert gdal_path("https://h/x/scene.tif") == "/vsicurl/https://h/x/scene.tif"
    assert gdal_path("s3://b/k/scene.tif") == "/vsis3/b/k/scene.tif"
    assert gdal_path("gs://b/k.tif") == "/vsigs/b/k.tif"
    assert gdal_path("/vsizip//data/a.zip/x.tif") == "/vsizip//data/a.zip/x.tif"
    assert gdal_path("scenes/a.tif") == "scenes/a.tif"
    assert source_url("/vsis3/b/k/scene.tif") == "s3://b/k/scene.tif"
    assert scene_stem("/vsicurl/https://h/x/scene.tif?sig=abc") == "scene"
    assert scene_stem("s3://b/k/scene.tif") == scene_stem("scenes/scene.tif") == "scene"
    assert is_remote("/vsizip//vsicurl/https://h/a.zip/x.tif") and not is_remote("/vsizip//data/a.zip/x.tif")


def test_scene_names_tell_equal_file_names_apart_by_their_folders() -> None:
    assert scene_names(["a/x.tif", "b/y.tif"]) == ["x", "y"]
    assert scene_names(["d/north/t.tif", "d/south/t.tif", "o.tif"]) == ["north_t", "south_t", "o"]
    assert scene_names(["z/a/t.tif", "y/a/t.tif", "a/u.tif"]) == ["z_a_t", "y_a_t", "u"]
    assert scene_names(["https://h/2024/t.tif?sig=1", "s3://b/2023/t.tif"]) == ["2024_t", "2023_t"]
    with pytest.raises(InputError, match=r"t\.tif is listed twice \(t\)"):
        scene_names(["d/t.tif", "d/./t.tif"])
    with pytest.raises(InputError, match="get the same output name"):
        scene_names(["a/b_c.tif", "a_b/c.tif", "x/c.tif", "y/b_c.tif"])


def test_a_window_reads_a_fraction_of_the_file(web: HttpServer) -> None:
    web.traffic.reset()
    with remote_env(), open_raster(web.url + "/cogeo.tif") as src, rasterio.open(COG) as local:
        window = Window(512, 512, 200, 200)
        np.testing.assert_array_equal(src.read(window=window), local.read(window=window))
    sent, size = web.traffic.sent["/cogeo.tif"], COG.stat().st_size
    assert 0 < sent < 0.35 * size, (sent, size, web.traffic.requests)  # 23% here: the header and one 512² tile
    assert not any(method == "GET" and not rng for method, _, rng in web.traffic.requests)  # no whole-file GET


@pytest.mark.slow
def test_infer_over_http_and_s3_equals_the_local_file(
    checkpoint: Path, served: Path, web: HttpServer, s3: None, tmp_path: Path
) -> None:
    ck = ["--checkpoint", str(checkpoint), "-q"]
    assert infer_main([str(served / "scene.tif"), "--out", str(tmp_path / "local.tif"), *ck]) == 0
    web.traffic.reset()
    assert infer_main([f"{web.url}/scene.tif", "--out", str(tmp_path / "http.tif"), *ck]) == 0
    assert web.traffic.sent["/scene.tif"] > 0
    assert infer_main(["s3://scenes/x/scene.tif", "--out", str(tmp_path / "s3.gpkg"), *ck]) == 0
    expected = read(tmp_path / "local.tif")
    for name in ("http.tif", "s3.tif"):
        np.testing.assert_array_equal(read(tmp_path / name), expected)
        with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / name) as b:
            assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
    import geopandas as gpd

    assert set(gpd.read_file(tmp_path / "s3.gpkg", layer="labels")["scene"]) == {"scene"}


def test_remote_resume_fingerprint_is_what_the_server_reports(
    checkpoint: Path, served: Path, web: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, out = f"{web.url}/changing.tif", tmp_path / "labels.tif"
    band_scene(served / "changing.tif", 7, 64)
    stat = stat_remote(url)
    assert stat.size == (served / "changing.tif").stat().st_size and stat.etag
    assert infer_main([url, "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    with rasterio.open(out) as ds:
        record = json.loads(ds.tags()["RS_DEEPLAB_INFERENCE"])
    fingerprint = record.get("fingerprint", record)
    assert fingerprint["scene"] == url and fingerprint["scene_etag"] == stat.etag
    assert "scene_mtime" not in fingerprint
    capsys.readouterr()
    assert infer_main([url, "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    assert "already complete" in capsys.readouterr().err
    band_scene(served / "changing.tif", 8, 64)  # replaced on the server: same URL, new ETag
    assert infer_main([url, "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    assert "already complete" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scene", "expected"),
    [
        ("/missing.tif", "not found on the server (HTTP 404); check the URL"),
        ("/forbidden/scene.tif", "access denied (HTTP 403)"),
        ("/cogeo.tif", "has 3 bands but the model was trained on 4"),
    ],
)
def test_bad_remote_scene_is_one_line_exit_2_and_nothing_written(
    checkpoint: Path, web: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], scene: str, expected: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert infer_main([web.url + scene, "--out", str(out / "x.gpkg"), "--checkpoint", str(checkpoint)]) == 2
    assert expected in one_line_error(capsys)
    assert list(out.iterdir()) == []


def test_server_without_range_support_is_refused(
    checkpoint: Path, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with http_server(served, ranges=False) as plain:
        assert (
            infer_main([f"{plain.url}/scene.tif", "--out", str(tmp_path / "x.tif"), "--checkpoint", str(checkpoint)])
            == 2
        )
        assert plain.traffic.requests == [("GET", "/scene.tif", "bytes=0-0")]  # refused after one probe, GDAL not asked
    assert "ignores HTTP Range requests" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_s3_key_without_credentials_is_one_line_exit_2(
    checkpoint: Path, s3: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in S3_KEYS:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert (
        infer_main(["s3://scenes/x/scene.tif", "--out", str(tmp_path / "x.tif"), "--checkpoint", str(checkpoint)]) == 2
    )
    assert "no AWS credentials" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_tile_a_remote_scene_like_the_local_one(served: Path, web: HttpServer, tmp_path: Path) -> None:
    args = ["--size", "48", "--stride", "48", "--workers", "1", "-q"]
    assert tile_main([str(served / "scene.tif"), "--out", str(tmp_path / "local"), *args]) == 0
    assert tile_main([f"{web.url}/scene.tif", "--out", str(tmp_path / "remote"), *args]) == 0
    local = sorted(p.name for p in (tmp_path / "local" / "images").iterdir())
    assert local == sorted(p.name for p in (tmp_path / "remote" / "images").iterdir()) and local[0].startswith("scene_")
    for name in local:
        with (
            rasterio.open(tmp_path / "local" / "images" / name) as a,
            rasterio.open(tmp_path / "remote" / "images" / name) as b,
        ):
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.transform == b.transform
    manifest = json.loads((tmp_path / "remote" / "tiling.json").read_text())
    assert manifest["scenes"][0]["image"] == f"/vsicurl/{web.url}/scene.tif"
    assert manifest["remote"][f"/vsicurl/{web.url}/scene.tif"]["scene_etag"] == stat_remote(f"{web.url}/scene.tif").etag


@pytest.fixture(scope="module")
def label_raster(served: Path) -> Path:
    """A served class raster: two classes, 255 nowhere."""
    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 12:40] = 1
    return write_geotiff(served / "labels.tif", labels, crs="EPSG:32633", transform=TRANSFORM, nodata=255)


def test_vectorize_a_remote_label_raster(label_raster: Path, web: HttpServer, tmp_path: Path) -> None:
    import geopandas as gpd

    assert vectorize_main([str(label_raster), "--out", str(tmp_path / "local.gpkg"), "-q"]) == 0
    assert vectorize_main([f"{web.url}/labels.tif", "--out", str(tmp_path / "remote.gpkg"), "-q"]) == 0
    a, b = gpd.read_file(tmp_path / "local.gpkg"), gpd.read_file(tmp_path / "remote.gpkg")
    assert len(a) == len(b) == 2 and a.geometry.area.sum() == pytest.approx(b.geometry.area.sum())


def test_evaluate_a_remote_prediction_against_a_local_truth(
    label_raster: Path, web: HttpServer, s3: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.evaluate import main as evaluate_main

    pred = f"{web.url}/labels.tif"
    args = ["--pred", pred, "s3://scenes/x/labels.tif", "--truth", str(label_raster), str(label_raster)]
    assert evaluate_main([*args, "--class-names", "ground,roof", "--out", str(tmp_path), "-q"]) == 0
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    assert report["total"]["scores"]["mIoU"] == pytest.approx(1.0)
    assert [s["prediction"] for s in report["scenes"]] == [f"/vsicurl/{pred}", "/vsis3/scenes/x/labels.tif"]
    assert "| labels.tif | labels.tif |" in capsys.readouterr().out


def test_a_remote_output_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        infer_main(["scene.tif", "--out", "s3://bucket/labels.gpkg"])
    assert exit_info.value.code == 2
    assert "outputs are written locally; pass a local path" in capsys.readouterr().err


def test_tiling_resume_records_what_the_server_reports(
    served: Path, web: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    band_scene(served / "tile_a.tif", 11, 64)
    band_scene(served / "tile_b.tif", 12, 64)
    both, one, args = str(tmp_path / "both"), str(tmp_path / "one"), ["--size", "32", "--workers", "1", "-q"]
    assert tile_main([f"{web.url}/tile_a.tif", "--out", both, *args]) == 0
    assert tile_main([f"{web.url}/tile_b.tif", "--out", both, "--append", *args]) == 0
    remote = json.loads((tmp_path / "both" / "tiling.json").read_text())["remote"]
    assert sorted(remote) == [f"/vsicurl/{web.url}/tile_a.tif", f"/vsicurl/{web.url}/tile_b.tif"]
    assert tile_main([f"{web.url}/tile_a.tif", "--out", one, *args]) == 0
    band_scene(served / "tile_a.tif", 13, 64)  # replaced on the server: its old crops must not be taken as done
    capsys.readouterr()
    assert tile_main([f"{web.url}/tile_a.tif", "--out", one, *args]) == 2
    assert "holds crops of a different tiling run (remote differ)" in one_line_error(capsys)
    assert tile_main([f"{web.url}/tile_a.tif", "--out", both, "--append", *args]) == 2
    assert "tile_a.tif changed on its server since its crops were cut" in one_line_error(capsys)


def test_the_real_cog_predicted_over_http_and_s3_equals_the_local_file(
    web: HttpServer, s3: None, tmp_path: Path
) -> None:
    """The 3-band sample COG (EPSG:3857, 1024²) through predict_scene from both servers: the same labels."""
    import torch

    from rs_deeplab.inference import predict_scene

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    common = {"size": 256, "stride": 192, "batch_size": 4, "mean": [128.0] * 3, "std": [64.0] * 3, "device": "cpu"}
    predict_scene(model, COG, tmp_path / "local.tif", **common)  # type: ignore[arg-type]
    web.traffic.reset()
    with remote_env():
        predict_scene(model, gdal_path(f"{web.url}/cogeo.tif"), tmp_path / "http.tif", **common)  # type: ignore[arg-type]
        predict_scene(model, gdal_path("s3://scenes/x/cogeo.tif"), tmp_path / "s3.tif", **common)  # type: ignore[arg-type]
    assert web.traffic.sent["/cogeo.tif"] > 0
    expected = read(tmp_path / "local.tif")
    assert len(np.unique(expected)) > 1  # a model that tells pixels apart, so equality means something
    for name in ("http.tif", "s3.tif"):
        np.testing.assert_array_equal(read(tmp_path / name), expected)
        with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / name) as b:
            assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
