from __future__ import annotations

import json
from pathlib import Path

import cv2
import geopandas as gpd
import pytest
import rasterio
import yaml

from pipelines import demo
from tests.trainkit import DEMO_QUICK


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    overrides = DEMO_QUICK
    run = tmp_path / "runs" / "demo"
    assert demo.main(["--out", str(out), "--run-dir", str(run), "--size", "384", "--quiet", *overrides]) == 0
    printed = capsys.readouterr().out
    for label in (
        "sample scenes",
        "held-out scene",
        "tiles + index",
        "training run",
        "best checkpoint",
        "label raster (held-out scene)",
        "polygons",
        "scene scores",
        "prediction preview",
    ):
        assert label in printed
    assert (out / "potsdam" / "4_Ortho_RGBIR" / "top_potsdam_2_13_RGBIR.tif").is_file()
    assert (out / "tiles" / "index.gpkg").is_file()
    assert (run / "last.pt").is_file() and (run / "config.yaml").is_file()
    assert (out / "sample_preview.png").stat().st_size > 1000
    with (
        rasterio.open(out / "labels.tif") as pred,
        rasterio.open(out / "potsdam" / "4_Ortho_RGBIR" / "top_potsdam_2_13_RGBIR.tif") as scene,
    ):
        assert (pred.shape, pred.transform, pred.crs) == (scene.shape, scene.transform, scene.crs)
    assert len(gpd.read_file(out / "labels.gpkg", layer="labels")) > 0
    scores = json.loads((out / "scores" / "scene_scores.json").read_text())
    assert 0 <= scores["total"]["scores"]["OA"] <= 1
    for label, page in (
        ("prediction page", out / "labels.html"),
        ("training page", run / "report.html"),
        ("evaluation page", out / "scores.html"),
    ):
        assert label in printed and str(page) in printed and page.is_file()  # the pages the demo made, printed
    preview = cv2.imread(str(out / "prediction_preview.png"))
    assert preview.shape[1] == 3 * preview.shape[0] + 16  # scene | prediction | truth
    # the recorded config names the held-out scene, so `infer.py --out x.gpkg` needs no arguments in this folder
    assert yaml.safe_load((run / "config.yaml").read_text())["infer"]["scenes"] == [
        str((out / "potsdam" / "4_Ortho_RGBIR" / "top_potsdam_2_13_RGBIR.tif").resolve())
    ]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(out / "tiles")


def test_demo_rejects_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--out", str(tmp_path), "schedule.iters=3"]) == 2
    assert "schedule.iters: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "potsdam").exists()


def test_demo_config_points_at_the_outputs_whatever_the_folder_name(tmp_path: Path) -> None:
    out = tmp_path / "odd, name: [x]"
    cfg = demo.demo_config(out, ["schedule.iterations=3"])
    assert cfg.infer.scenes == [demo.held_out_scene(out)]
    assert cfg.data.root == out / "tiles" and cfg.work_dir == out / "run" and cfg.schedule.iterations == 3
