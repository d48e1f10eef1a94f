"""pipelines/vectorize.py: a successful run, and every bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from pipelines.vectorize import main
from rs_deeplab.vectorize import class_names_tag

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["ground", "building", "tree"]


@pytest.fixture
def labels(make_raster) -> Path:
    array = np.kron(np.array([[0, 1, 2], [2, 1, 0]]), np.ones((6, 6), dtype=np.int64)).astype(np.uint8)
    return make_raster(array, name="labels.tif", nodata=255, tags=class_names_tag(NAMES))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_writes_selected_classes(labels, tmp_path, capsys):
    out = tmp_path / "out.gpkg"
    args = [str(labels), "--out", str(out), "--classes", "building,tree", "--simplify", "1", "--block-size", "4"]
    assert main([*args, "--scene", "s1", "--to-crs", "EPSG:4326"]) == 0
    df = gpd.read_file(out)
    assert set(df.class_name) == {"building", "tree"} and set(df.scene) == {"s1"} and df.crs.to_epsg() == 4326
    assert "polygons (building 1, tree 2)" in capsys.readouterr().out
    assert (
        main(
            [
                str(labels),
                "--out",
                str(out),
                "--exclude",
                "tree",
                "--append",
                "--scene",
                "s2",
                "-q",
                "--to-crs",
                "EPSG:4326",
            ]
        )
        == 0
    )
    assert gpd.read_file(out).scene.value_counts().to_dict() == {"s1": 3, "s2": 3}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "house"], "unknown class 'house' in classes; valid names: ground, building, tree"),
        (["--exclude", "house"], "unknown class 'house' in exclude"),
        (["--min-area", "-1"], "--min-area -1: must be a number >= 0"),
        (["--block-size", "0"], "--block-size 0: must be a positive whole number"),
        (["--workers", "0"], "--workers 0: must be a whole number of at least 1 (1 = this process only)"),
        (["--workers", "-3"], "--workers -3: must be a whole number of at least 1"),
        (["--to-crs", "EPSG:0"], "cannot understand CRS"),
    ],
)
def test_cli_bad_arguments(labels, tmp_path, capsys, extra, message):
    assert main([str(labels), "--out", str(tmp_path / "out.gpkg"), *extra]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out.gpkg").exists()


def test_cli_not_a_raster(tmp_path, capsys):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    assert main([str(text), "--out", str(tmp_path / "out.gpkg")]) == 2
    assert "not a raster GDAL can read" in one_error_line(capsys)


def test_cli_float_and_multiband_rasters(make_raster, tmp_path, capsys):
    floats = make_raster(np.zeros((4, 4), dtype=np.float32), name="probabilities.tif")
    assert main([str(floats), "--out", str(tmp_path / "out.gpkg")]) == 2
    assert "is a float32 raster; expected integer class labels" in one_error_line(capsys)
    rgb = make_raster(np.zeros((3, 4, 4), dtype=np.uint8), name="rgb.tif")
    assert main([str(rgb), "--out", str(tmp_path / "out.gpkg")]) == 2
    assert "has 3 bands; expected a single-band class-label raster" in one_error_line(capsys)


@pytest.mark.parametrize("name", ["out.shp", "out", "out.parquet"])
def test_cli_output_it_cannot_write(labels, tmp_path, capsys, name):
    if name.endswith(".parquet") and importlib.util.find_spec("pyarrow") is not None:
        assert main([str(labels), "--out", str(tmp_path / name)]) == 0  # writable when pyarrow is installed
        return
    assert main([str(labels), "--out", str(tmp_path / name)]) == 2
    err = one_error_line(capsys)
    assert "use one of .gpkg, .geojson, .json, .parquet" in err or "needs the pyarrow package" in err
    assert list(tmp_path.iterdir()) == [labels]


def test_cli_missing_output_folder(labels, tmp_path, capsys):
    assert main([str(labels), "--out", str(tmp_path / "nowhere" / "out.gpkg")]) == 2
    assert "does not exist; create it first" in one_error_line(capsys)


def test_cli_subprocess_reports_one_line_and_exit_2(labels, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "pipelines" / "vectorize.py"), str(labels), "--out", str(tmp_path / "o.gpkg")]
    done = subprocess.run([*cmd, "--classes", "house"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown class 'house' in classes; valid names: ground, building, tree "
        "(numeric class ids are accepted too)"
    ]
