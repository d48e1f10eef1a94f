"""Ctrl-C in every pipeline script, run as a user would (a subprocess): exit 130 and one line, never a traceback.

A Ctrl-C while a script still loads torch or GDAL (seconds) must be caught like one during the work: the scripts
import their library inside ``main``'s error boundary. Each test waits for evidence (a shared library of torch or
GDAL mapped into the process, an output's temporary file, an open input) before it sends SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from rs_deeplab.cli.console import INTERRUPTED
from rs_deeplab.geo.raster import write_geotiff
from tests import trainkit
from tests.badkit import ENV
from tests.trainkit import REPO, blob_scene, make_tiles, write_config

HEAVY_LIBRARIES = ("libtorch", "libgdal")  # what the library's imports map first: torch's or GDAL's
TIMEOUT = 120.0
TRANSFORM = Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)


def script(name: str) -> list[str]:
    return [sys.executable, str(REPO / "pipelines" / f"{name}.py")]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(proc: subprocess.Popen[str], evidence: Callable[[], bool], what: str) -> None:
    """Poll until ``evidence()`` holds while ``proc`` still runs (fails if it exits first or never shows it)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before {what}:\n{out}\n{err}")
        try:
            if evidence():
                return
        except (FileNotFoundError, ProcessLookupError):  # /proc entries of a process that is just exiting
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no sign of {what} within {TIMEOUT:.0f} s")
        time.sleep(0.001)  # poll interval only: the wait ends on the evidence, not on a time


def heavy_import_started(proc: subprocess.Popen[str]) -> Callable[[], bool]:
    maps = Path(f"/proc/{proc.pid}/maps")
    return lambda: any(lib in maps.read_text() for lib in HEAVY_LIBRARIES)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for the exit (killing the process after ``TIMEOUT``); returns the exit code and stderr."""
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Send Ctrl-C (SIGINT) and wait for the exit; returns the exit code and stderr."""
    proc.send_signal(signal.SIGINT)
    return finish(proc)


def assert_one_interrupted_line(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code == 130, err
    assert err.strip() == INTERRUPTED


def label_raster(path: Path, size: int, cell: int, seed: int = 0) -> Path:
    """A ``size``² uint8 class raster (classes 0-5) of ``cell``-pixel squares: many small regions; tiled, DEFLATE."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 6, (size // cell, size // cell), dtype=np.uint8)
    data = np.kron(classes, np.ones((cell, cell), np.uint8))
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "nodata": 255,
        "crs": "EPSG:32633",
        "transform": TRANSFORM,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "DEFLATE",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


trained = trainkit.trained  # the module-scoped tiny checkpoint (a fixture), for infer.py, export.py, crf_search.py


def scene(folder: Path) -> Path:
    image, _ = blob_scene(3, 256)
    return write_geotiff(folder / "scene.tif", image, crs="EPSG:32633", transform=TRANSFORM)


def train_args(tmp: Path, trained: Path) -> list[str]:
    tiles = make_tiles(tmp / "data")
    return [str(write_config(tmp / "exp.yaml", tiles, tmp / "runs" / "x"))]


def infer_args(tmp: Path, trained: Path) -> list[str]:
    return [str(scene(tmp)), "--out", str(tmp / "labels.gpkg"), "--checkpoint", str(trained)]


def export_args(tmp: Path, trained: Path) -> list[str]:
    return [str(trained), "--out", str(tmp / "model.ts"), "--format", "torchscript"]


def evaluate_args(tmp: Path, trained: Path) -> list[str]:
    pred, truth = label_raster(tmp / "pred.tif", 512, 8, 1), label_raster(tmp / "truth.tif", 512, 8, 2)
    return ["--pred", str(pred), "--truth", str(truth), "--class-names", "a,b,c,d,e,f", "--out", str(tmp / "scores")]


def vectorize_args(tmp: Path, trained: Path) -> list[str]:
    return [str(label_raster(tmp / "labels.tif", 512, 8)), "--out", str(tmp / "labels.gpkg")]


def crf_search_args(tmp: Path, trained: Path) -> list[str]:
    return [str(trained), "--out", str(tmp / "search"), "--images", "1", "--workers", "1"]


def demo_args(tmp: Path, trained: Path) -> list[str]:
    return ["--out", str(tmp / "demo"), "--run-dir", str(tmp / "runs" / "demo"), "--size", "512"]


ARGS: dict[str, Callable[[Path, Path], list[str]]] = {
    "train": train_args,
    "infer": infer_args,
    "export": export_args,
    "evaluate": evaluate_args,
    "vectorize": vectorize_args,
    "demo": demo_args,
    "crf_search": crf_search_args,
}


@pytest.mark.parametrize("name", list(ARGS))
def test_ctrl_c_while_the_library_loads_is_one_line_and_exit_130(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    trained = request.getfixturevalue("trained") if name in ("infer", "export", "crf_search") else tmp_path
    proc = start([*script(name), *ARGS[name](tmp_path, trained)], tmp_path)
    wait_for(proc, heavy_import_started(proc), "loading torch or GDAL")
    assert_one_interrupted_line(*interrupt(proc))


@pytest.mark.slow
def test_ctrl_c_while_vectorizing_leaves_no_output(tmp_path: Path) -> None:
    raster = label_raster(tmp_path / "labels.tif", 6000, 6)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = start([*script("vectorize"), str(raster), "--out", str(out_dir / "labels.gpkg")], tmp_path)
    wait_for(proc, lambda: any(out_dir.glob(".labels.tmp-*")), "the output's temporary file")
    assert_one_interrupted_line(*interrupt(proc))
    assert sorted(p.name for p in out_dir.iterdir()) == []  # neither labels.gpkg nor its temporary file


@pytest.mark.slow
def test_ctrl_c_while_scoring_scenes_leaves_no_report(tmp_path: Path) -> None:
    pred, truth = label_raster(tmp_path / "pred.tif", 12000, 6, 1), label_raster(tmp_path / "truth.tif", 12000, 6, 2)
    out_dir = tmp_path / "scores"
    cmd = [
        *script("evaluate"),
        "--pred",
        str(pred),
        "--truth",
        str(truth),
        "--class-names",
        "a,b,c,d,e,f",
        "--block-size",
        "128",
        "--out",
        str(out_dir),
    ]
    proc = start(cmd, tmp_path)
    fds = Path(f"/proc/{proc.pid}/fd")

    def reading_truth() -> bool:
        return any(os.readlink(fd) == str(truth) for fd in fds.iterdir())

    wait_for(proc, reading_truth, "reading the truth raster")
    assert_one_interrupted_line(*interrupt(proc))
    assert not out_dir.exists() or sorted(p.name for p in out_dir.iterdir()) == []
