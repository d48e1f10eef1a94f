"""STAC catalog of a prediction run (rs_deeplab.geo.stac_outputs) on real rasters, a GeoPackage and a VRT: pystac reads
it back, every href resolves (also after the folder is copied), and footprints, classes and extents are right."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import Transformer
from shapely.geometry import box

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import quiet_georeferencing, write_geotiff
from rs_deeplab.geo.stac_outputs import (
    CLASSIFICATION_SCHEMA,
    COG,
    GEOPACKAGE,
    GEOTIFF,
    PROJECTION_SCHEMA,
    VRT,
    RegionAssets,
    SceneAssets,
    stac_folder,
    write_stac,
)
from rs_deeplab.labels.class_names import class_names_tag, read_class_names

NAMES = ["impervious surface", "building", "tree"]
COLOURS = {0: (255, 255, 255, 255), 1: (0, 0, 255, 255), 2: (0, 255, 0, 255), 255: (0, 0, 0, 0)}
PREDICTED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ACQUIRED = datetime(2021, 6, 1, 10, 30, 0, tzinfo=UTC)
UTM_GRID = Affine(0.5, 0.0, 368_000.0, 0.0, -0.5, 5_808_000.0)
GEO_GRID = Affine(0.0001, 0.0, 13.4, 0.0, -0.0001, 52.5)


def label_raster(path: Path, crs: str | None, transform: Affine, *, cog: bool = False) -> Path:
    """A 64×48 class raster as the inference writer leaves it: nodata 255, colour table, CLASS_NAMES."""
    data = np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 3
    data[:4] = 255
    target = path.with_name(f"plain_{path.name}") if cog else path
    write_geotiff(
        target,
        data,
        crs=crs,
        transform=transform,
        nodata=255,
        colormap=COLOURS,
        tags=class_names_tag(NAMES),
        descriptions=["class"],
    )
    if cog:
        rasterio.shutil.copy(target, path, driver="COG")
        target.unlink()
    return path


@pytest.fixture
def run(tmp_path: Path) -> dict[str, Any]:
    """Inputs in ``inputs/``, a two-scene run's outputs in ``run/``: x_a (UTM, probabilities), x_b (EPSG:4326 COG)."""
    inputs, out = tmp_path / "inputs", tmp_path / "run"
    inputs.mkdir()
    out.mkdir()
    scene_a = write_geotiff(
        inputs / "a.tif",
        np.zeros((3, 48, 64), np.uint8),
        crs="EPSG:32633",
        transform=UTM_GRID,
        tags={"TIFFTAG_DATETIME": ACQUIRED.strftime("%Y:%m:%d %H:%M:%S")},
    )
    a = label_raster(out / "x_a.tif", "EPSG:32633", UTM_GRID)
    b = label_raster(out / "x_b.tif", "EPSG:4326", GEO_GRID, cog=True)
    probs = write_geotiff(
        out / "x_a_probs.tif",
        np.zeros((3, 48, 64), np.uint8),
        crs="EPSG:32633",
        transform=UTM_GRID,
        tags=class_names_tag(NAMES),
    )
    vrt = out / "x.vrt"
    rasterio.shutil.copy(a, vrt, driver="VRT")
    gpkg = out / "x.gpkg"
    frame = gpd.GeoDataFrame(
        {"class_id": [1], "class_name": ["building"], "area_m2": [4.0], "perimeter_m": [8.0], "scene": ["a"]},
        geometry=[box(368_001, 5_807_980, 368_003, 5_807_982)],
        crs="EPSG:32633",
    )
    frame.to_file(gpkg, layer="labels", driver="GPKG")
    scenes = [
        SceneAssets("a", a, probabilities=probs, source=scene_a),
        SceneAssets("b", b, source="https://example.com/scenes/b.tif"),
    ]
    region = RegionAssets(mosaic_vrt=vrt, polygons=gpkg)
    return {"out": out, "scenes": scenes, "region": region, "tmp": tmp_path}


def write(run: dict[str, Any], **kwargs: Any) -> Path:
    args: dict[str, Any] = {
        "class_names": NAMES,
        "colours": COLOURS,
        "model": "deeplabv3plus-potsdam",
        "collection_id": "run-x",
        "predicted": PREDICTED,
        **kwargs,
    }
    scenes = args.pop("scenes", run["scenes"])
    return write_stac(stac_folder(run["out"] / "x.gpkg"), scenes, args.pop("region", run["region"]), **args)


def corners_4326(path: Path) -> list[tuple[float, float]]:
    """The raster's four corners in lon/lat, computed here with pyproj."""
    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
    return [to_wgs84.transform(x, y) for x, y in ((left, top), (left, bottom), (right, bottom), (right, top))]


def opens(href: str) -> None:
    """The asset behind ``href`` opens with rasterio (rasters) or pyogrio (GeoPackages)."""
    if href.endswith(".gpkg"):
        assert "labels" in pyogrio.list_layers(href)[:, 0]
    else:
        with rasterio.open(href) as src:
            assert src.count >= 1


def is_relative(href: str) -> bool:
    return not href.startswith("/") and "://" not in href


def test_layout_and_round_trip(run: dict[str, Any]) -> None:
    collection_path = write(run)
    assert collection_path == run["out"] / "x.stac" / "collection.json"
    assert sorted(p.relative_to(run["out"]).as_posix() for p in (run["out"] / "x.stac").rglob("*")) == [
        "x.stac/a",
        "x.stac/a/a.json",
        "x.stac/b",
        "x.stac/b/b.json",
        "x.stac/collection.json",
    ]
    assert not [p for p in run["out"].iterdir() if p.name.startswith(".")], "temporary folders left behind"
    collection = pystac.Collection.from_file(str(collection_path))
    items = {i.id: i for i in collection.get_items()}
    assert sorted(items) == ["a", "b"] == sorted(i.id for i in collection.get_items(recursive=True))
    assert collection.id == "run-x" and collection.get_self_href() is not None
    for item in items.values():
        for key, asset in item.assets.items():
            href = asset.get_absolute_href()
            assert href is not None and Path(href).is_file(), (item.id, key, href)
            opens(href)
        assert item.properties["rs_deeplab:model"] == "deeplabv3plus-potsdam"
        assert set(item.properties["processing:software"]) == {"rs_deeplab"}
        assert {PROJECTION_SCHEMA, CLASSIFICATION_SCHEMA} <= set(item.stac_extensions)
        assert item.common_metadata.created == PREDICTED
    assert Path(items["a"].assets["labels"].get_absolute_href() or "").resolve() == (run["out"] / "x_a.tif")
    assert items["a"].assets["labels"].media_type == GEOTIFF
    assert items["b"].assets["labels"].media_type == COG
    assert "probabilities" not in items["b"].assets
    bands = items["a"].assets["probabilities"].extra_fields["bands"]
    assert [b["name"] for b in bands] == NAMES
    for asset in collection.assets.values():
        opens(asset.get_absolute_href() or "")
    assert collection.assets["mosaic_vrt"].media_type == VRT
    assert collection.assets["polygons"].media_type == GEOPACKAGE
    assert collection.assets["polygons"].roles == ["data"]


def test_footprints_projection_and_time(run: dict[str, Any]) -> None:
    collection = pystac.Collection.from_file(str(write(run)))
    items = {i.id: i for i in collection.get_items()}
    for scene in run["scenes"]:
        item = items[scene.name]
        assert item.geometry is not None and item.bbox is not None
        expected = corners_4326(scene.labels)
        ring = item.geometry["coordinates"][0]
        assert item.geometry["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
        for got, want in zip(sorted(map(tuple, ring[:4])), sorted(expected), strict=True):
            assert got == pytest.approx(want, abs=1e-9)
        lons, lats = zip(*expected, strict=True)
        assert item.bbox == pytest.approx([min(lons), min(lats), max(lons), max(lats)], abs=1e-9)
        west, south, east, north = item.bbox
        assert all(west <= x <= east and south <= y <= north for x, y in expected)
        area2 = sum(p[0] * q[1] - q[0] * p[1] for p, q in itertools.pairwise(ring))
        assert area2 > 0, "exterior ring must be counter-clockwise"
        with rasterio.open(scene.labels) as src:
            assert item.properties["proj:code"] == f"EPSG:{src.crs.to_epsg()}"
            assert item.properties["proj:shape"] == [48, 64]
            assert item.properties["proj:transform"] == list(src.transform)[:6]
    assert items["a"].datetime == ACQUIRED and items["a"].properties["rs_deeplab:datetime_source"] == "acquired"
    assert items["b"].datetime == PREDICTED and items["b"].properties["rs_deeplab:datetime_source"] == "predicted"
    (source,) = [link for link in items["a"].links if link.rel == "derived_from"]
    assert is_relative(source.href) and Path(source.get_absolute_href() or "").resolve() == run["tmp"] / "inputs/a.tif"
    (remote,) = [link for link in items["b"].links if link.rel == "derived_from"]
    assert remote.href == "https://example.com/scenes/b.tif"
    # the Collection's extent covers every item in space and time
    (union,) = collection.extent.spatial.bboxes
    for item in items.values():
        assert item.bbox is not None
        assert union[0] <= item.bbox[0] and union[1] <= item.bbox[1]
        assert union[2] >= item.bbox[2] and union[3] >= item.bbox[3]
    ((start, end),) = collection.extent.temporal.intervals
    assert start == ACQUIRED and end == PREDICTED


def test_classes_match_the_rasters(run: dict[str, Any]) -> None:
    collection = pystac.Collection.from_file(str(write(run)))
    for item in collection.get_items():
        labels = item.assets["labels"]
        with rasterio.open(labels.get_absolute_href() or "") as src:
            names, table, nodata = read_class_names(src), src.colormap(1), src.nodata
        classes = labels.extra_fields["classification:classes"]
        data = [c for c in classes if not c.get("nodata")]
        assert [c["title"] for c in data] == names
        assert [c["value"] for c in data] == list(range(len(NAMES)))
        assert all(c["name"] == c["title"].replace(" ", "_") for c in data)
        for c in classes:
            assert c["color_hint"] == "{:02X}{:02X}{:02X}".format(*table[c["value"]][:3])
        (empty,) = [c for c in classes if c.get("nodata")]
        assert empty["value"] == nodata == 255 and labels.extra_fields["nodata"] == 255
    definition = collection.item_assets["labels"].properties
    assert definition["classification:classes"] == classes and "href" not in definition
    assert CLASSIFICATION_SCHEMA in collection.stac_extensions


def test_json_is_self_contained_and_complete(run: dict[str, Any]) -> None:
    folder = write(run).parent
    collection = json.loads((folder / "collection.json").read_text())
    assert collection["type"] == "Collection" and collection["stac_version"] and collection["id"] == "run-x"
    assert collection["description"] and collection["license"]
    assert collection["extent"]["spatial"]["bbox"] and collection["extent"]["temporal"]["interval"]
    assert sorted(link["href"] for link in collection["links"] if link["rel"] == "item") == ["./a/a.json", "./b/b.json"]
    for name in ("a", "b"):
        item = json.loads((folder / name / f"{name}.json").read_text())
        for key in ("type", "stac_version", "id", "geometry", "bbox", "properties", "links", "assets"):
            assert key in item, key
        assert item["type"] == "Feature" and len(item["bbox"]) == 4 and item["properties"]["datetime"]
        assert {PROJECTION_SCHEMA, CLASSIFICATION_SCHEMA} <= set(item["stac_extensions"])
        assert all(u.startswith("https://stac-extensions.github.io/") for u in item["stac_extensions"])
        assert item["collection"] == "run-x"
        local = [link for link in item["links"] if "://" not in link["href"]]
        assert all(is_relative(link["href"]) for link in local)
        assert all(is_relative(asset["href"]) for asset in item["assets"].values())
        assert "self" not in {link["rel"] for link in item["links"]}
    for doc in [collection]:
        assert all(is_relative(x["href"]) for x in [*doc["links"], *doc["assets"].values()])


def test_copied_folder_still_resolves(run: dict[str, Any]) -> None:
    write(run)
    moved = shutil.copytree(run["tmp"], run["tmp"].parent / f"{run['tmp'].name}-moved")
    try:
        shutil.rmtree(run["tmp"] / "run")  # nothing may still point into the old folder
        collection = pystac.Collection.from_file(str(moved / "run" / "x.stac" / "collection.json"))
        hrefs = [a.get_absolute_href() for a in collection.assets.values()]
        hrefs += [a.get_absolute_href() for i in collection.get_items() for a in i.assets.values()]
        assert len(hrefs) == 2 + 3
        for href in hrefs:
            assert href is not None and Path(href).is_relative_to(moved), href
            opens(href)
    finally:
        shutil.rmtree(moved)


def test_rerun_replaces_the_catalog(run: dict[str, Any]) -> None:
    write(run)
    folder = write(run, scenes=run["scenes"][1:], region=None, collection_id="again").parent
    assert sorted(p.name for p in folder.iterdir()) == ["b", "collection.json"]
    collection = pystac.Collection.from_file(str(folder / "collection.json"))
    assert collection.id == "again" and [i.id for i in collection.get_items()] == ["b"]
    assert not collection.assets and "probabilities" not in collection.item_assets


def test_time_from_a_stac_item_source(run: dict[str, Any]) -> None:
    scene_a, scene_b = run["scenes"]
    source = run["tmp"] / "inputs" / "b.json"
    when = datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC)
    geometry = {"type": "Point", "coordinates": [13.4, 52.5]}
    pystac.Item("b", geometry, [13.4, 52.5, 13.4, 52.5], when, {}).save_object(dest_href=str(source))
    given = datetime(2020, 1, 2, 3, 4, 5)  # naive: taken as UTC
    scenes = [
        SceneAssets("a", scene_a.labels, source=scene_a.source, acquired=given),
        SceneAssets("b", scene_b.labels, source=source),
    ]
    items = {i.id: i for i in pystac.Collection.from_file(str(write(run, scenes=scenes))).get_items()}
    assert items["a"].datetime == given.replace(tzinfo=UTC)
    assert items["b"].datetime == when and items["b"].properties["rs_deeplab:datetime_source"] == "acquired"
    (link,) = [link for link in items["b"].links if link.rel == "derived_from"]
    assert link.media_type == "application/geo+json" and is_relative(link.href)


def test_refusals(run: dict[str, Any], tmp_path: Path) -> None:
    with quiet_georeferencing():
        no_crs = write_geotiff(run["out"] / "x_c.tif", np.zeros((48, 64), np.uint8), nodata=255)
    with pytest.raises(InputError, match=r"x_c\.tif: raster has no CRS"):
        write(run, scenes=[SceneAssets("c", no_crs)])
    assert not stac_folder(run["out"] / "x.gpkg").exists()
    earlier = write(run)  # a failed rerun leaves the catalog it would have replaced
    with pytest.raises(InputError, match="no CRS"):
        write(run, scenes=[*run["scenes"], SceneAssets("c", no_crs)])
    assert [i.id for i in pystac.Collection.from_file(str(earlier)).get_items()] == ["a", "b"]
    assert sorted(p.name for p in run["out"].iterdir() if p.name.startswith(".")) == []
    shutil.rmtree(earlier.parent)
    with pytest.raises(InputError, match="scene name 'a'"):
        write(run, scenes=[run["scenes"][0], run["scenes"][0]])
    with pytest.raises(InputError, match=r"scene name '\.\./a'"):
        write(run, scenes=[SceneAssets("../a", run["scenes"][0].labels)])
    with pytest.raises(InputError, match="not found"):
        write(run, scenes=[SceneAssets("a", run["out"] / "missing.tif")])
    taken = stac_folder(run["out"] / "x.gpkg")
    taken.mkdir()
    (taken / "notes.txt").write_text("someone's")
    with pytest.raises(InputError, match=r"holds no collection\.json"):
        write(run)
    assert (taken / "notes.txt").read_text() == "someone's"
