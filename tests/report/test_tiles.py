"""Tile pyramids, outline levels and the vendored files, without a browser."""

from __future__ import annotations

import contextlib
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.class_names import class_names_tag
from rs_deeplab.report import polygons
from rs_deeplab.report import tiles as tiles_module
from rs_deeplab.report.assets import LIBRARIES, STATIC
from rs_deeplab.report.prediction import PredictionInputs, write_prediction_page
from rs_deeplab.report.tiles import (
    LABEL_PAD,
    TILE,
    max_zoom,
    tile_path,
    tiles,
    write_label_pyramid,
    write_scene_pyramid,
)
from rs_deeplab.vectorize import vectorize

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("width", "height"), [(1, 1), (256, 256), (257, 100), (600, 400), (5000, 300)])
def test_full_level_covers_every_pixel_once(width: int, height: int) -> None:
    zmax = max_zoom(width, height)
    covered = np.zeros((height, width), np.int32)
    for spec in tiles(width, height):
        w = spec.window
        if spec.z == zmax:
            covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
            assert (spec.out_width, spec.out_height) == (w.width, w.height)
        assert spec.out_width <= TILE and spec.out_height <= TILE
        if spec.z == 0:
            assert (spec.x, spec.y) == (0, 0)
    assert (covered == 1).all()


def test_label_tiles_hold_class_ids_and_counts(tmp_path: Path) -> None:
    labels = np.arange(300 * 520, dtype=np.int64).reshape(300, 520) % 5
    labels[:10] = 255
    path = write_geotiff(
        tmp_path / "l.tif",
        labels.astype(np.uint8)[None],
        crs="EPSG:32633",
        nodata=255,
        transform=from_origin(0, 300, 1, 1),
    )
    stats = write_label_pyramid(path, tmp_path / "t", classes=4)  # class 4 is beyond the names: not drawn
    assert stats.max_zoom == 2 and stats.counts is not None
    assert stats.counts[:4].tolist() == [int((labels == k).sum()) for k in range(4)]
    tile = np.asarray(Image.open(tmp_path / "t" / "2" / "1" / "0.png"))
    expected = labels[:256, 256:512].copy()
    expected[expected == 4] = 255
    assert tile.shape == (TILE, TILE) and (tile == expected).all()
    corner = np.asarray(Image.open(tmp_path / "t" / "2" / "2" / "1.png"))
    assert (corner[44:, :] == 255).all() and (corner[:, 8:] == 255).all()  # padding past the raster's edge


ODD = (1037, 601)
"""An odd-sized raster (width, height): four levels, partial edge tiles at every level."""


def odd_rasters(folder: Path) -> tuple[Path, np.ndarray, Path, np.ndarray]:
    """A 3-band uint8 scene with nodata pixels (0 in every band) and its class raster (ids 0-6, 255 nodata)."""
    width, height = ODD
    rng = np.random.default_rng(27)
    scene = rng.integers(1, 256, (3, height, width), dtype=np.uint8)
    scene[:, rng.random((height, width)) < 0.1] = 0
    labels = rng.integers(0, 7, (height, width), dtype=np.uint8)
    labels[rng.random((height, width)) < 0.1] = 255
    transform = from_origin(0, height, 1, 1)
    scene_path = write_geotiff(folder / "s.tif", scene, crs="EPSG:32633", nodata=0, transform=transform)
    labels_path = write_geotiff(folder / "l.tif", labels, crs="EPSG:32633", nodata=255, transform=transform)
    return scene_path, scene, labels_path, labels


def expected_tile(full: np.ndarray, spec: Any, pad: int) -> np.ndarray:
    """The oracle: the tile's window of the full-resolution ``(H, W, ...)`` array, every ``factor``-th pixel from
    its top-left one, padded to 256² with ``pad``.
    """
    factor = 2 ** (max_zoom(*ODD) - spec.z)
    w = spec.window
    part = full[w.row_off : w.row_off + w.height : factor, w.col_off : w.col_off + w.width : factor]
    tile = np.full((TILE, TILE, *full.shape[2:]), pad, np.uint8)
    tile[: part.shape[0], : part.shape[1]] = part
    return tile


def test_every_tile_is_the_decimated_raster_and_counts_are_the_full_levels(tmp_path: Path) -> None:
    """Both pyramids of an odd-sized raster, tile by tile, against the raster's own array (partial edge tiles)."""
    scene_path, scene, labels_path, labels = odd_rasters(tmp_path)
    classes = 5  # ids 5 and 6 are beyond the names: transparent, as nodata
    grid = list(tiles(*ODD))
    assert max_zoom(*ODD) == 3 and {s.z for s in grid} == {0, 1, 2, 3}
    assert any(s.out_width % 2 and s.z < 3 for s in grid) and any(s.out_height % 2 and s.z < 3 for s in grid)

    stats = write_label_pyramid(labels_path, tmp_path / "l", classes)
    shown = np.where(labels < classes, labels, LABEL_PAD).astype(np.uint8)
    for spec in grid:
        tile = np.asarray(Image.open(tile_path(tmp_path / "l", spec)))
        assert (tile == expected_tile(shown, spec, LABEL_PAD)).all(), spec
    assert stats.files == len(grid) == sum(1 for p in (tmp_path / "l").rglob("*") if p.is_file())
    assert stats.max_zoom == 3 and stats.counts is not None
    assert stats.counts.tolist() == np.bincount(shown.ravel(), minlength=256).tolist()

    stats = write_scene_pyramid(scene_path, tmp_path / "s", suffix="png")
    rgba = np.concatenate([scene.transpose(1, 2, 0), np.where(scene.any(axis=0), 255, 0)[..., None]], axis=2)
    for spec in grid:
        tile = np.asarray(Image.open(tile_path(tmp_path / "s", spec)))
        assert (tile == expected_tile(rgba.astype(np.uint8), spec, 0)).all(), spec
    assert stats.files == len(grid) and stats.max_zoom == 3


class CountingReads:
    """A dataset that records the windows and arguments of each pixel read (``read``, ``dataset_mask``)."""

    def __init__(self, ds: Any) -> None:
        self._ds = ds
        self.calls: list[tuple[str, tuple[int, int, int, int], tuple[str, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        w = kwargs["window"]
        self.calls.append(
            (
                name,
                (int(w.col_off), int(w.row_off), int(w.width), int(w.height)),
                tuple(sorted(k for k in kwargs if k != "window")),
            )
        )

    def read(self, *args: Any, **kwargs: Any) -> Any:
        self._record("read", kwargs)
        return self._ds.read(*args, **kwargs)

    def dataset_mask(self, *args: Any, **kwargs: Any) -> Any:
        self._record("dataset_mask", kwargs)
        return self._ds.dataset_mask(*args, **kwargs)


def test_the_raster_is_read_once_window_by_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each full-resolution window is read once, at full resolution; no other read (uint8: no stretch sample)."""
    scene_path, _, labels_path, _ = odd_rasters(tmp_path)
    opened: list[CountingReads] = []
    real = tiles_module.reading

    @contextlib.contextmanager
    def counting(path: str | Path) -> Iterator[Any]:
        with real(path) as ds:
            opened.append(CountingReads(ds))
            yield opened[-1]

    monkeypatch.setattr(tiles_module, "reading", counting)
    write_label_pyramid(labels_path, tmp_path / "l", 7)
    write_scene_pyramid(scene_path, tmp_path / "s")
    full = sorted(
        (s.window.col_off, s.window.row_off, s.window.width, s.window.height) for s in tiles(*ODD) if s.z == 3
    )
    assert len(full) == 15 and len(opened) == 2
    for dataset, kinds in zip(opened, (["read"], ["read", "dataset_mask"]), strict=True):
        for kind in kinds:
            calls = [c for c in dataset.calls if c[0] == kind]
            assert sorted(c[1] for c in calls) == full, kind
            assert all(c[2] == () for c in calls), calls  # no out_shape, no resampling: full resolution
        assert len(dataset.calls) == len(kinds) * len(full)


def test_outlines_capped_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = ((np.indices((64, 64)) // 4).sum(axis=0) % 2).astype(np.uint8)  # 256 squares of 4×4 pixels
    path = write_geotiff(
        tmp_path / "c.tif",
        labels[None],
        crs="EPSG:32633",
        transform=from_origin(0, 64, 1, 1),
        tags=class_names_tag(["a", "b"]),
    )
    vectorize(path, tmp_path / "c.gpkg")
    monkeypatch.setattr(polygons, "MAX_VERTICES", 50 * 5)  # 50 squares of 4 vertices (+ closing point)
    page = tmp_path / "c.html"
    write_prediction_page(page, PredictionInputs(labels=path, polygons=tmp_path / "c.gpkg"))
    assert "Outlines of the 50 largest of" in page.read_text()
    text = (tmp_path / "c_files" / "polygons.js").read_text()
    levels = json.loads(text.split("=", 1)[1].rstrip().rstrip(";"))
    assert len(levels[0]["polygons"]) == 50
    assert levels[-1]["minZoom"] < 0


def test_vendored_files_are_package_data() -> None:
    """Every file under static/ is matched by pyproject's package-data, so a wheel ships it; licences present."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["rs_deeplab.report"]
    files = [PurePosixPath(p.relative_to(STATIC.parent).as_posix()) for p in STATIC.rglob("*") if p.is_file()]
    assert files and all(
        any(f.match(pat) and len(f.parts) == len(PurePosixPath(pat).parts) for pat in patterns) for f in files
    ), [f for f in files if not any(f.match(p) for p in patterns)]
    for name, needed in LIBRARIES.items():
        assert all((STATIC / name / entry).exists() for entry in needed), name
    versions = (STATIC / "VERSIONS.md").read_text()
    assert "| leaflet | 1.9.4 |" in versions and "| proj4 | 2.22.0 |" in versions
