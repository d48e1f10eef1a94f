"""The tile index: ``index.gpkg`` with a ``tiles`` layer (one footprint per crop) and a ``classes`` table."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rs_deeplab.geo.raster import atomic_output
from rs_deeplab.labels.classes import IGNORE_INDEX, ClassScheme

TILES_LAYER = "tiles"
CLASSES_LAYER = "classes"
BASE_COLUMNS = (
    "scene",
    "split",
    "row_off",
    "col_off",
    "width",
    "height",
    "valid_fraction",
    "image",
    "label",
    "scene_path",
)
"""Columns of every ``tiles`` row, before the per-class ``n_<class>`` pixel counts and the footprint."""


def class_table(
    records: Sequence[Mapping[str, Any]], scheme: ClassScheme | None, mapping: Sequence[tuple[str, int]] = ()
) -> pd.DataFrame:
    """One row per class value that gets a count column: ``class_id``, ``name``, ``column``, ``scheme``, ``values``.

    With a scheme every class of it is listed (plus ``ignore`` = 255); without one, every value seen in the labels.
    ``values`` lists the vector attribute values mapped to each class (``mapping``), comma-separated.
    """
    seen = sorted({int(v) for rec in records for v in rec["counts"]})
    if scheme is not None:
        ids = sorted(set(range(scheme.num_classes)) | set(seen) | {IGNORE_INDEX})
    elif any(rec["label"] for rec in records):
        ids = sorted(set(seen) | {IGNORE_INDEX})
    else:
        ids = []
    names = []
    for i in ids:
        if i == IGNORE_INDEX:
            names.append("ignore")
        elif scheme is not None and i < scheme.num_classes:
            names.append(scheme.classes[i])
        else:
            names.append(str(i))
    columns = [f"n_{re.sub(r'[^0-9A-Za-z_]', '_', n)}" for n in names]
    values = [",".join(sorted(v for v, cid in mapping if cid == i)) for i in ids]
    return pd.DataFrame(
        {"class_id": ids, "name": names, "column": columns, "scheme": scheme.name if scheme else "", "values": values},
    ).astype({"class_id": "int64"})


def footprints(records: Sequence[Mapping[str, Any]], transforms: Mapping[str, Any]) -> np.ndarray:
    """Polygons of the scene pixels each crop covers, in its scene's CRS (``transforms`` keyed by scene key)."""
    import shapely

    rings = []
    for rec in records:
        t = transforms[rec["scene"]]
        c0, r0 = rec["col_off"], rec["row_off"]
        c1, r1 = c0 + rec["width"], r0 + rec["height"]
        rings.append([t @ (c0, r0), t @ (c1, r0), t @ (c1, r1), t @ (c0, r1), t @ (c0, r0)])
    return shapely.polygons(np.asarray(rings, dtype=float).reshape(len(rings), 5, 2))


def build_index(
    records: Sequence[Mapping[str, Any]],
    *,
    transforms: Mapping[str, Any],
    crss: Mapping[str, Any],
    scheme: ClassScheme | None,
    mapping: Sequence[tuple[str, int]] = (),
) -> tuple[Any, pd.DataFrame]:
    """The ``tiles`` GeoDataFrame (sorted by scene, row, column) and the ``classes`` table.

    Footprints of scenes in another CRS than the first scene's are reprojected to it; ``scene_crs`` keeps each
    scene's own CRS.
    """
    import geopandas as gpd
    from rasterio.warp import transform_geom

    rows = sorted(records, key=lambda r: (r["scene"], r["row_off"], r["col_off"]))
    classes = class_table(rows, scheme, mapping)
    frame = pd.DataFrame({c: [r[c] for r in rows] for c in BASE_COLUMNS})
    frame = frame.astype({"row_off": "int64", "col_off": "int64", "width": "int64", "height": "int64"})
    frame["valid_fraction"] = frame["valid_fraction"].astype("float64")
    for cid, column in zip(classes["class_id"], classes["column"], strict=True):
        frame[column] = np.array([int(r["counts"].get(str(cid), 0)) for r in rows], dtype=np.int64)
    frame["scene_crs"] = [str(crss[r["scene"]] or "") for r in rows]
    target = next(iter(crss.values()), None)
    geoms = footprints(rows, transforms)
    for i, rec in enumerate(rows):
        own = crss[rec["scene"]]
        if own is not None and target is not None and own != target:
            import shapely.geometry

            geoms[i] = shapely.geometry.shape(transform_geom(own, target, shapely.geometry.mapping(geoms[i])))
    return gpd.GeoDataFrame(frame, geometry=geoms, crs=target), classes


def merge_index(
    old_tiles: Any, old_classes: pd.DataFrame, tiles: Any, classes: pd.DataFrame, *, replace: Sequence[str]
) -> tuple[Any, pd.DataFrame]:
    """An existing index with new rows added (``--append``); its rows of the ``replace`` scenes are dropped first.

    New footprints are reprojected to the existing layer's CRS; classes are the union of both tables, and a count
    column missing on one side is 0.
    """
    import geopandas as gpd

    keep = old_tiles[~old_tiles["scene"].isin(list(replace))]
    if keep.crs is not None and tiles.crs is not None and keep.crs != tiles.crs:
        tiles = tiles.to_crs(keep.crs)
    both = pd.concat([old_classes, classes], ignore_index=True)
    both["values"] = both["values"].fillna("") if "values" in both else ""
    values = both.groupby("class_id")["values"].agg(
        lambda v: ",".join(sorted({x for s in v for x in s.split(",") if x}))
    )
    table = both.drop_duplicates("class_id").sort_values("class_id", ignore_index=True)
    table["values"] = [values[i] for i in table["class_id"]]
    frame = pd.concat([pd.DataFrame(keep), pd.DataFrame(tiles)], ignore_index=True)
    for column in table["column"]:
        frame[column] = frame[column].fillna(0).astype("int64") if column in frame else np.int64(0)
    frame = frame.sort_values(["scene", "row_off", "col_off"], ignore_index=True)
    order = [*BASE_COLUMNS, *table["column"], "scene_crs"]
    geometry = keep.geometry.name if len(keep) else tiles.geometry.name
    merged = gpd.GeoDataFrame(frame[order], geometry=frame[geometry].values, crs=keep.crs or tiles.crs)
    return merged, table


def write_index(path: str | Path, tiles: Any, classes: pd.DataFrame) -> Path:
    """Write both layers to a GeoPackage atomically (a temporary file renamed onto ``path``)."""
    import pyogrio

    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided")  # pixel-coordinate scenes (PNG) have none
        pyogrio.write_dataframe(tiles, tmp, layer=TILES_LAYER, driver="GPKG")
        pyogrio.write_dataframe(classes, tmp, layer=CLASSES_LAYER, driver="GPKG")
    return Path(path)


def read_index(path: str | Path) -> tuple[Any, pd.DataFrame]:
    """Read ``index.gpkg``: the ``tiles`` GeoDataFrame and the ``classes`` table.

    Image and label paths in ``tiles`` are relative to the folder holding the index.
    """
    import pyogrio

    return (
        pyogrio.read_dataframe(path, layer=TILES_LAYER),
        pyogrio.read_dataframe(path, layer=CLASSES_LAYER, read_geometry=False),
    )
