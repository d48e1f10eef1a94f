"""docs/region.md stays true: every command in its ``bash`` blocks runs, in order, as a user would paste it."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import torch

from tests import trainkit
from tests.docs.test_own_data import run_page

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "region.md"

trained = trainkit.trained  # the module-scoped tiny checkpoint (a fixture)


@pytest.mark.slow
def test_region_page_runs_end_to_end(trained: Path, tmp_path: Path) -> None:
    # the page's model is the quick start's runs/demo/best.pt, trained at 0.25 m: the tiny one, said to be as well
    state = torch.load(trained, map_location="cpu", weights_only=True)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    torch.save({**state, "gsd": 0.25}, tmp_path / "runs" / "demo" / "best.pt")
    run_page(DOC, tmp_path, at_least=5, timeout=600)
    maps = tmp_path / "maps"
    tiles = sorted(maps.glob("city_top_potsdam_*.tif"))
    assert len(tiles) == 9  # what the page says: 3 × 3 tiles
    scene = tmp_path / "region_data" / "4_Ortho_RGBIR" / "top_potsdam_3_10_RGBIR.tif"
    with rasterio.open(maps / "city.vrt") as vrt, rasterio.open(scene) as src, rasterio.open(maps / "city.tif") as cog:
        assert (vrt.crs, vrt.transform, vrt.shape) == (src.crs, src.transform, src.shape) and vrt.shape == (544, 544)
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(vrt.read(1), cog.read(1))
    polygons = gpd.read_file(maps / "city.gpkg")
    assert polygons.scene.str.contains(",").any()  # objects on tile seams are one polygon
    items = list(pystac.Collection.from_file(str(maps / "city.stac" / "collection.json")).get_items())
    assert len(items) == 9
    scores = json.loads((maps / "scores" / "scene_scores.json").read_text())["scenes"]
    assert [Path(s["prediction"]).name for s in scores] == ["city.vrt", "whole.tif"]
    assert abs(scores[0]["scores"]["mIoU"] - scores[1]["scores"]["mIoU"]) < 0.01  # "within a fraction of a point"
