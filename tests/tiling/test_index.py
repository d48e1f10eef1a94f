"""The tile index: build, write and read back a real GeoPackage, and merge an --append run into it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import shapely
from affine import Affine
from pyproj import Transformer

from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.tiling.index import build_index, merge_index, read_index, write_index

T_A = Affine(0.5, 0, 368_000, 0, -0.5, 5_808_000)  # EPSG:32633
T_B = Affine(0.5, 0, 700_000, 0, -0.5, 5_808_000)  # EPSG:32632: the same place seen from the next UTM zone
CRSS = {"a": "EPSG:32633", "b": "EPSG:32632"}
TRANSFORMS = {"a": T_A, "b": T_B}


def record(scene: str, row: int, col: int, counts: dict[str, int], split: str = "train") -> dict[str, Any]:
    return {
        "scene": scene,
        "split": split,
        "row_off": row,
        "col_off": col,
        "width": 64,
        "height": 64,
        "valid_fraction": sum(counts.values()) / 64**2,
        "image": f"images/{scene}_{row}_{col}.tif",
        "label": f"labels/{scene}_{row}_{col}.tif",
        "scene_path": f"/data/{scene}.tif",
        "counts": counts,
    }


RECORDS = [
    record("b", 0, 0, {"0": 4000, "255": 96}, "val"),
    record("a", 32, 0, {"1": 1000, "4": 96, "255": 3000}),
    record("a", 0, 32, {"0": 2048, "1": 2048}),
    record("a", 0, 0, {"0": 4096}),
]


def corners(transform: Affine, row: int, col: int, size: int = 64) -> list[tuple[float, float]]:
    return [transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (size, 0), (size, size), (0, size))]


def test_write_and_read_back_a_geopackage(tmp_path: Path) -> None:
    tiles, classes = build_index(RECORDS, transforms=TRANSFORMS, crss=CRSS, scheme=SCHEMES["potsdam"])
    path = write_index(tmp_path / "index.gpkg", tiles, classes)
    assert os.listdir(tmp_path) == ["index.gpkg"]  # written under a temporary name, then renamed
    assert {name for name, _ in pyogrio.list_layers(path)} == {"tiles", "classes"}
    with sqlite3.connect(path) as db:  # a real GeoPackage: what QGIS reads
        assert db.execute("select table_name, data_type from gpkg_contents order by 1").fetchall() == [
            ("classes", "attributes"),
            ("tiles", "features"),
        ]
    back, back_classes = read_index(path)
    assert back.crs.to_epsg() == 32633  # the first scene's CRS
    assert [(r.scene, r.row_off, r.col_off) for r in back.itertuples()] == [
        ("a", 0, 0),
        ("a", 0, 32),
        ("a", 32, 0),
        ("b", 0, 0),
    ]
    for column in ("split", "image", "label", "scene_path", "row_off", "width", "valid_fraction"):
        assert list(back[column]) == list(tiles[column]), column
    assert list(back.scene_crs) == ["EPSG:32633"] * 3 + ["EPSG:32632"]
    # the class table names the scheme's classes and ignore; each count column holds the records' counts
    potsdam = SCHEMES["potsdam"].classes
    assert list(back_classes.name) == [*potsdam, "ignore"]
    assert list(back_classes.class_id) == [*range(len(potsdam)), 255]
    by_key = {(r["scene"], r["row_off"], r["col_off"]): r["counts"] for r in RECORDS}
    for row in back.itertuples():
        for cid, column in zip(back_classes.class_id, back_classes.column, strict=True):
            assert getattr(row, column) == by_key[(row.scene, row.row_off, row.col_off)].get(str(cid), 0)
    # footprints: the crop's pixels on the ground; scene b's reprojected into the index's CRS
    for row, geom in zip(back.itertuples(), back.geometry, strict=True):
        ring = corners(TRANSFORMS[row.scene], row.row_off, row.col_off)
        if row.scene == "b":
            to_a = Transformer.from_crs("EPSG:32632", "EPSG:32633", always_xy=True)
            ring = [to_a.transform(x, y) for x, y in ring]
        expected = shapely.Polygon(ring)
        assert geom.equals_exact(expected, tolerance=1e-6) or geom.symmetric_difference(expected).area < 1e-3


def test_append_replaces_a_scenes_rows_adds_new_ones_and_unions_the_classes(tmp_path: Path) -> None:
    old = build_index(RECORDS, transforms=TRANSFORMS, crss=CRSS, scheme=None)
    path = write_index(tmp_path / "index.gpkg", *old)
    old_tiles, old_classes = read_index(path)
    assert list(old_classes.class_id) == [0, 1, 4, 255]  # without a scheme: the values the labels hold
    new_records = [
        record("b", 0, 64, {"7": 100, "0": 10}, "val"),  # scene b again: its old rows go
        record("c", 0, 0, {"1": 64}, "train"),
    ]
    crss = {"b": "EPSG:32632", "c": "EPSG:32632"}
    transforms = {"b": T_B, "c": T_B @ Affine.translation(0, 200)}
    new = build_index(new_records, transforms=transforms, crss=crss, scheme=None)
    assert new[0].crs.to_epsg() == 32632
    merged_tiles, merged_classes = merge_index(old_tiles, old_classes, *new, replace=["b", "c"])
    write_index(path, merged_tiles, merged_classes)
    tiles, classes = read_index(path)
    assert tiles.crs.to_epsg() == 32633  # the existing index's CRS wins
    assert [(r.scene, r.row_off, r.col_off) for r in tiles.itertuples()] == [
        ("a", 0, 0),
        ("a", 0, 32),
        ("a", 32, 0),
        ("b", 0, 64),
        ("c", 0, 0),
    ]
    assert list(classes.class_id) == [0, 1, 4, 7, 255]
    column = dict(zip(classes.class_id, classes.column, strict=True))
    assert list(tiles[column[7]]) == [0, 0, 0, 100, 0]  # a class new in this run counts 0 in the old rows
    assert list(tiles[column[4]]) == [0, 0, 96, 0, 0]  # a class the new run lacks keeps its old counts
    assert list(tiles[column[0]]) == [4096, 2048, 0, 10, 0]
    to_a = Transformer.from_crs("EPSG:32632", "EPSG:32633", always_xy=True)
    expected = shapely.Polygon([to_a.transform(x, y) for x, y in corners(T_B, 0, 64)])
    assert tiles.geometry[3].symmetric_difference(expected).area < 1e-3
    assert np.isclose(tiles.geometry.area, 32 * 32, rtol=1e-3).all()  # 64 px of 0.5 m a side


def test_an_index_without_labels_has_an_empty_class_table(tmp_path: Path) -> None:
    records = [{**record("a", 0, 0, {}), "label": ""}]
    tiles, classes = build_index(records, transforms=TRANSFORMS, crss={"a": "EPSG:32633"}, scheme=None)
    back, back_classes = read_index(write_index(tmp_path / "index.gpkg", tiles, classes))
    assert len(back) == 1 and back_classes.empty
    assert back.label.tolist() == [""]


def test_rewriting_an_index_replaces_it_whole(tmp_path: Path) -> None:
    path = write_index(tmp_path / "index.gpkg", *build_index(RECORDS, transforms=TRANSFORMS, crss=CRSS, scheme=None))
    write_index(path, *build_index(RECORDS[1:2], transforms=TRANSFORMS, crss=CRSS, scheme=None))
    tiles, classes = read_index(path)
    assert len(tiles) == 1 and list(classes.class_id) == [1, 4, 255]  # no rows of the first write survive
    assert os.listdir(tmp_path) == ["index.gpkg"]
