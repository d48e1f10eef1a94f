"""Tiler on real Dask: `dask scheduler` + `dask worker` processes, determinism across workers, SIGKILL and resume."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.tiling.index import read_index
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
from tests.conftest import DEFAULT_TRANSFORM, UTM33
from tests.daskkit import ROOT, tile_command
from tests.daskkit import dask_cluster as start_dask_cluster
from tests.daskkit import subprocess_env as _env


def _scene(folder: Path, name: str, height: int, width: int, seed: int) -> SceneSpec:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    image = write_geotiff(
        folder / f"{name}.tif",
        rng.integers(0, 255, (4, height, width), dtype=np.uint8),
        crs=UTM33,
        transform=DEFAULT_TRANSFORM,
        compress=None,
    )
    cells = rng.integers(0, 6, (height // 16 + 1, width // 16 + 1)).astype(np.uint8)
    ids = np.repeat(np.repeat(cells, 16, axis=0), 16, axis=1)[:height, :width]
    label = write_geotiff(
        folder / f"{name}_label.tif",
        SCHEMES["potsdam"].encode_colours(ids),
        crs=UTM33,
        transform=DEFAULT_TRANSFORM,
        compress=None,
    )
    return SceneSpec(image, label, "train")


def snapshot(out: Path) -> tuple[dict[str, str], pd.DataFrame, list[bytes]]:
    """Digest of every file but the index, plus the index's attribute table and footprints (WKB)."""
    files = {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "index.gpkg"
    }
    tiles, classes = read_index(out / "index.gpkg")
    table = pd.concat([tiles.drop(columns="geometry"), classes.add_prefix("classes_")], axis=1)
    return files, table, [shapely.to_wkb(g) for g in tiles.geometry]


def assert_same_outputs(a: Path, b: Path) -> None:
    files_a, table_a, geoms_a = snapshot(a)
    files_b, table_b, geoms_b = snapshot(b)
    assert files_a.keys() == files_b.keys()
    assert [k for k in files_a if files_a[k] != files_b[k]] == []
    pd.testing.assert_frame_equal(table_a, table_b)
    assert geoms_a == geoms_b


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[SceneSpec]:
    folder = tmp_path_factory.mktemp("scenes")
    return [_scene(folder, "north", 300, 260, 1), _scene(folder, "south", 190, 230, 2)]


@pytest.fixture(scope="module")
def reference(scenes: list[SceneSpec], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "tiles"
    summary = tile_scenes(scenes, out, size=64, stride=48, scheme="potsdam", workers=1)
    assert summary.cluster.startswith("this process") and summary.crops > 50
    return out


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `dask scheduler` and `dask worker` (2 processes) on loopback, started as command-line processes."""
    with start_dask_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield address


@pytest.mark.slow
@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_same_outputs_on_a_local_cluster_as_in_one_process(
    scenes: list[SceneSpec], reference: Path, tmp_path: Path, processes: bool
) -> None:
    summary = tile_scenes(
        scenes, tmp_path / "tiles", size=64, stride=48, scheme="potsdam", workers=2, processes=processes
    )
    assert summary.cluster == f"Dask local cluster (2 {'processes' if processes else 'threads'})"
    assert_same_outputs(reference, tmp_path / "tiles")


@pytest.mark.slow
def test_existing_scheduler_runs_the_same_job(
    scenes: list[SceneSpec], reference: Path, tmp_path: Path, dask_cluster: str
) -> None:
    summary = tile_scenes(
        scenes, tmp_path / "tiles", size=64, stride=48, scheme="potsdam", scheduler=dask_cluster, workers=5
    )
    assert summary.cluster == f"Dask scheduler {dask_cluster} (2 worker threads)"
    assert_same_outputs(reference, tmp_path / "tiles")


def test_unreachable_scheduler_is_one_line_exit_2(scenes: list[SceneSpec], tmp_path: Path) -> None:
    import dask
    import distributed  # noqa: F401  (its defaults first: the block's end would otherwise remove them with its key)

    from pipelines.tile import main

    out = tmp_path / "tiles"
    args = [str(scenes[0].image), "--out", str(out), "--scheduler", "tcp://127.0.0.1:9"]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(args) == 2
    assert main([*args[:-1], "localhost:8786"]) == 2
    assert not (out / "index.gpkg").exists()


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_files_and_index(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "scene", "big", 300, 310, 3)
    out = tmp_path / "killed"
    cmd = tile_command(scene, out, "--workers", "2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "images").is_dir() and len(os.listdir(out / "images")) >= 40:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed; make the scene larger"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the tiler (and any process it started), mid-write
        proc.wait()
    assert not (out / "index.gpkg").exists()
    done = len(os.listdir(out / "images"))
    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stderr.count("\n") == 1 and "Dask local cluster (2 processes)" in rerun.stderr, (
        rerun.stderr
    )  # no chatter
    resumed = int(re.search(r"(\d+) already done", rerun.stderr).group(1))  # type: ignore[union-attr]
    assert 0 < resumed < 18 * 19 and done >= 40
    ref = tmp_path / "reference"
    tile_scenes([scene], ref, size=32, stride=16, scheme="potsdam", workers=1)
    assert_same_outputs(ref, out)
    assert not [p for p in out.rglob(".*.tmp-*")]
