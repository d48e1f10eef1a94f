"""pipelines/tile.py: the one-scene default run (real subprocess, no torch) and every bad input (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from pipelines.tile import main
from rs_deeplab.tiling.index import read_index
from tests.conftest import RasterFactory

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, RS_DEEPLAB_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.slow
def test_one_scene_and_nothing_else_works_without_importing_torch(make_raster: RasterFactory, tmp_path: Path) -> None:
    scene = make_raster(np.arange(3 * 600 * 520, dtype=np.uint32).reshape(3, 600, 520).astype(np.uint8))
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['tile.py', {str(scene)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'pipelines' / 'tile.py')!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
        "print('torch modules:', loaded)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "torch modules: []" in run.stdout
    assert "this process" in run.stderr and "4 crops from 1 scenes" in run.stderr  # too small for workers
    tiles, classes = read_index(tmp_path / "tiles" / "index.gpkg")  # default --out tiles/ in the working folder
    assert len(tiles) == 4 and set(tiles.label) == {""} and classes.empty
    assert sorted(os.listdir(tmp_path / "tiles" / "images")) == [f"scene_{r}_{c}.tif" for r in (0, 88) for c in (0, 8)]


def test_bad_input_through_a_real_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "tile.py"), str(tmp_path / "missing.tif"), "--out", str(out)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.tif'}: file not found; check the path"]
    assert not out.exists()


@pytest.fixture
def files(make_raster: RasterFactory, tmp_path: Path) -> dict[str, str]:
    """A scene, labels that fit and labels that do not, vectors, a non-raster and an empty dataset folder."""
    gpd.GeoDataFrame(
        {"kind": ["building"]}, geometry=[shapely.box(368_000, 5_807_990, 368_005, 5_808_000)], crs="EPSG:32633"
    ).to_file(tmp_path / "polys.gpkg")
    (tmp_path / "text.tif").write_text("not a raster")
    (tmp_path / "empty_dataset" / "2_Ortho_RGB").mkdir(parents=True)
    return {
        "scene": str(make_raster(np.zeros((3, 100, 90), np.uint8))),
        "label": str(make_raster(np.zeros((100, 90), np.uint8), "label.tif")),
        "colour": str(make_raster(np.zeros((3, 100, 90), np.uint8), "colour.tif")),
        "small": str(make_raster(np.zeros((3, 99, 90), np.uint8), "small.tif")),
        "other_crs": str(make_raster(np.zeros((3, 100, 90), np.uint8), "crs.tif", crs="EPSG:32632")),
        "vector": str(tmp_path / "polys.gpkg"),
        "text": str(tmp_path / "text.tif"),
        "empty": str(tmp_path / "empty_dataset"),
    }


BAD_INPUTS = [
    (["{missing}"], "file not found; check the path"),
    (["{text}"], "not a raster GDAL can read"),
    (["{scene}", "--labels", "{missing}"], "file not found"),
    (["{empty}", "--preset", "potsdam"], "no Potsdam files found (looked for top_potsdam_*_RGBIR.tif"),
    (["{scene}", "--preset", "vaihingen"], "not a folder; --preset vaihingen needs the dataset's root folder"),
    (["{empty}", "{scene}", "--preset", "potsdam"], "--preset takes exactly one dataset folder"),
    (["{empty}", "--preset", "loveda", "--bands", "rgb"], "--bands applies to --preset potsdam only"),
    (["{scene}", "--size", "0"], "crop size must be a positive whole number of pixels, got 0"),
    (["{scene}", "--size", "-4"], "crop size must be a positive"),
    (["{scene}", "--size", "64", "--stride", "65"], "stride 65 is larger than the crop size 64"),
    (["{scene}", "--stride", "0"], "crop stride must be a positive"),
    (["{scene}", "--labels", "{small}", "--scheme", "potsdam"], "90×99 pixels vs 90×100"),
    (["{scene}", "--labels", "{other_crs}", "--scheme", "potsdam"], "CRS EPSG:32632 vs EPSG:32633"),
    (["{scene}", "--labels", "{vector}"], "vector labels need --label-field NAME"),
    (["{scene}", "--labels", "{vector}", "--label-field", "cls"], "no attribute 'cls'; choose --label-field from"),
    (
        ["{scene}", "--labels", "{vector}", "--label-field", "kind", "--classes", "tree"],
        "map them with --label-map building=ID",
    ),
    (["{scene}", "--labels", "{vector}", "--label-field", "kind", "--label-map", "x"], "is not VALUE=ID"),
    (["{scene}", "--labels", "{label}", "{label}"], "got 1 scenes but 2 --labels"),
    (["{scene}", "--labels", "{colour}"], "colour-coded (3 bands); pass --scheme NAME"),
    (["{scene}", "--scheme", "potsdamm"], "unknown dataset 'potsdamm'"),
    (["{scene}", "--min-valid", "1.5"], "--min-valid must be a fraction between 0 and 1"),
    (["{scene}", "--workers", "0"], "--workers must be a whole number of at least 1"),
    (["{scene}", "--scheduler", "localhost"], "is not like tcp://host:8786"),
    (["{scene}", "--eroded"], "--bands and --eroded apply with --preset only"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    argv = [a.format(missing=tmp_path / "missing.tif", **files) for a in args] + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message in err[0]
    assert not out.exists()


def test_out_folder_of_another_run_is_refused(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    assert main([files["scene"], "--size", "64", "--workers", "1", "--out", out]) == 0
    before = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert main([files["scene"], "--size", "32", "--workers", "1", "--out", out]) == 2
    assert "holds crops of a different tiling run (size, stride differ)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == before
