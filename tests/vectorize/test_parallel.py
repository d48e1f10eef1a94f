"""Vectorizing with worker processes: the same polygons, row for row and byte for byte, as one process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import pytest
from affine import Affine

from pipelines.vectorize import main
from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.vectorize import class_names_tag, parallel, vectorize

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["ground", "building", "tree", "water"]


def rows(path: Path) -> tuple[Any, ...]:
    """Geometries (WKB bytes) and every attribute column of the layer, in file order."""
    meta, _, geometry, fields = pyogrio.raw.read(path)
    return (list(meta["fields"]), list(geometry), *(list(f) for f in fields))


REAL_START_METHOD = parallel.start_method


@pytest.fixture(autouse=True)
def forked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers start by fork here even when earlier tests left threads running (spawn is tested on its own)."""
    monkeypatch.setattr(parallel, "start_method", lambda: "fork")


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 210 x 250 label raster of blobs of 4 classes (many cut by 64-pixel block seams), a nodata corner and a
    class that spans the whole raster (regions merged across many blocks)."""
    from rs_deeplab.geo.raster import write_geotiff

    rng = np.random.default_rng(25)
    cells = rng.integers(0, 4, (30, 36), dtype=np.uint8)
    array = np.kron(cells, np.ones((7, 7), np.uint8))[:210, :250]
    array[::23, :] = 3  # stripes of one class joining regions across every seam
    array[:40, :30] = 255
    path = tmp_path_factory.mktemp("workers") / "labels.tif"
    transform = Affine(0.5, 0.0, 368_000.0, 0.0, -0.5, 5_808_000.0)
    return write_geotiff(path, array, crs="EPSG:32633", transform=transform, nodata=255, tags=class_names_tag(NAMES))


CLEANED = {"simplify": 1.5, "fill_holes": 0.6, "min_area": 0.3}


@pytest.mark.parametrize("options", [{}, CLEANED], ids=["exact", "cleaned"])
def test_two_and_three_workers_write_the_rows_of_one(labels: Path, tmp_path: Path, options: dict[str, Any]) -> None:
    one = vectorize(labels, tmp_path / "one.gpkg", block_size=64, workers=1, **options)
    assert one.workers == 1 and one.blocks == 16 and one.merged > 10 and one.polygons > 100
    expected = rows(tmp_path / "one.gpkg")
    for workers in (2, 3):
        many = vectorize(labels, tmp_path / f"w{workers}.gpkg", block_size=64, workers=workers, **options)
        assert many.workers == workers
        assert (many.polygons, many.counts, many.merged) == (one.polygons, one.counts, one.merged)
        assert rows(tmp_path / f"w{workers}.gpkg") == expected


def test_rows_so_far_are_written_while_workers_polygonize_the_last_blocks(
    labels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rs_deeplab.vectorize.output import LayerWriter

    writes: list[int] = []
    real_write = LayerWriter._write

    def counted(self: LayerWriter, wkb: np.ndarray, *args: Any) -> None:
        writes.append(len(wkb))
        real_write(self, wkb, *args)

    monkeypatch.setattr(LayerWriter, "_write", counted)
    one = vectorize(labels, tmp_path / "one.gpkg", block_size=64, workers=1)
    assert writes == [one.polygons]  # one process: one write at the end
    writes.clear()
    two = vectorize(labels, tmp_path / "two.gpkg", block_size=64, workers=2)
    # with workers, the rows of the blocks merged so far are written as the last blocks are handed out
    assert len(writes) == 2 and 0 < writes[1] < writes[0] and sum(writes) == two.polygons
    assert rows(tmp_path / "two.gpkg") == rows(tmp_path / "one.gpkg")


def test_workers_started_beside_other_threads_are_fresh_interpreters_with_the_same_rows(
    labels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # the real choice of start method
    assert parallel.start_method() == ("fork" if threading.active_count() == 1 else "spawn")
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert parallel.start_method() == "spawn"
        vectorize(labels, tmp_path / "spawned.gpkg", block_size=64, workers=2)
    finally:
        stop.set()
        other.join()
    vectorize(labels, tmp_path / "one.gpkg", block_size=64, workers=1)
    assert rows(tmp_path / "spawned.gpkg") == rows(tmp_path / "one.gpkg")


def test_the_cli_with_two_workers_writes_the_rows_of_one(labels: Path, tmp_path: Path) -> None:
    assert main([str(labels), "--out", str(tmp_path / "one.gpkg"), "--block-size", "50", "--workers", "1", "-q"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "pipelines" / "vectorize.py"), str(labels), "--out", str(tmp_path / "two.gpkg")]
    done = subprocess.run(
        [*cmd, "--block-size", "50", "--workers", "2"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert ", 2 worker processes" in done.stdout and done.stderr == ""
    assert rows(tmp_path / "two.gpkg") == rows(tmp_path / "one.gpkg")


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_a_worker_count_below_one_is_refused_before_anything_is_written(
    labels: Path, tmp_path: Path, workers: Any
) -> None:
    with pytest.raises(InputError, match=r"workers must be a whole number of at least 1"):
        vectorize(labels, tmp_path / "out.gpkg", workers=workers)
    assert list(tmp_path.iterdir()) == []


def test_automatic_workers_follow_the_usable_cores_and_the_raster_size() -> None:
    cores = len(os.sched_getaffinity(0))
    big = parallel.AUTO_MIN_PIXELS
    assert parallel.resolve_workers(None, pixels=big, blocks=64) == cores
    assert parallel.resolve_workers(None, pixels=big - 1, blocks=64) == 1
    assert parallel.resolve_workers(8, pixels=10, blocks=3) == 3  # never more processes than blocks
    assert parallel.resolve_workers(2, pixels=10, blocks=1) == 1


def _resolve_in_a_daemon(results: Any) -> None:
    results.put(parallel.resolve_workers(2, pixels=parallel.AUTO_MIN_PIXELS, blocks=9))


def test_a_daemonic_process_polygonizes_itself() -> None:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    daemon = context.Process(target=_resolve_in_a_daemon, args=(results,), daemon=True)
    daemon.start()
    assert results.get(timeout=60) == 1  # it may not start children; outside a daemon the same call gives 2
    daemon.join(timeout=60)
    assert parallel.resolve_workers(2, pixels=parallel.AUTO_MIN_PIXELS, blocks=9) == 2


def _die_on_the_third_block(bi: int, bj: int, window: Any) -> Any:
    if (bi, bj) == (0, 2):
        os.kill(os.getpid(), signal.SIGKILL)
    return _POLYGONIZE(bi, bj, window)


_POLYGONIZE = parallel._polygonize


def test_a_killed_worker_is_one_line_and_leaves_no_output(labels: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(parallel, "_polygonize", _die_on_the_third_block)  # forked workers inherit it
    out = tmp_path / "out.gpkg"
    with pytest.raises(RasterError, match=r"labels.tif: a vectorizing worker process died .*; run again with fewer"):
        vectorize(labels, out, block_size=64, workers=2)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_block_read_by_a_worker_is_the_line_of_one_process(
    labels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rasterio

    # the start method the vectorizer picks: a fork beside the threads earlier tests left running killed a worker
    # reading this block in a full suite run (GDAL state inherited mid-use), which is why it spawns then
    monkeypatch.setattr(parallel, "start_method", REAL_START_METHOD)

    with rasterio.open(labels) as src:
        array, profile = src.read(1), src.profile
    broken = tmp_path / "broken.tif"
    profile.update(tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    with rasterio.open(broken, "w", **profile) as dst:
        dst.write(array, 1)
    with rasterio.open(broken) as src:  # zero the compressed bytes of the tile at block row 1, column 0
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_1", "TIFF", bidx=1))
    data = bytearray(broken.read_bytes())
    data[offset : offset + size] = bytes(size)
    broken.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    messages = []
    for workers in (1, 2):
        with pytest.raises(RasterError, match=r"broken.tif: cannot be read at rows 64\.\.128") as info:
            vectorize(broken, tmp_path / "out" / "polygons.gpkg", block_size=64, workers=workers)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert list((tmp_path / "out").iterdir()) == []
