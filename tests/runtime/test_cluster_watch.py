"""A Dask cluster failing under a running job, on real ``dask scheduler`` / ``dask worker`` processes.

A worker SIGKILLed while it holds tasks is survived with outputs identical to an undisturbed run (tiling, inference,
CRF search). Every worker gone or the scheduler lost ends the run with one line and exit 2 (130 on Ctrl-C), leaving
nothing half-written under a final name, and the same command on a new cluster resumes to the same outputs. A
scheduler that does not answer, or a scene with a corrupt block in its middle, stops the run before anything is
written. Each fault waits on evidence (a task processing on the worker, files written), never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from rs_deeplab.cli.errors import ClusterError, InputError, RasterError
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference import predict_scene
from rs_deeplab.inference.crf import grid
from rs_deeplab.inference.crf import search as cs
from rs_deeplab.inference.writing.writer import partial_path, sidecar_path
from rs_deeplab.runtime.cluster import CONNECT_SECONDS, check_cluster_options, open_cluster
from rs_deeplab.runtime.cluster_watch import WORKERS_GONE_ENV
from rs_deeplab.sample import write_vaihingen
from rs_deeplab.tiling.presets import VAIHINGEN_GT, tile_preset
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
from tests.badkit import ENV, check_one_line
from tests.conftest import DEFAULT_TRANSFORM, UTM33
from tests.daskkit import (
    ROOT,
    TILE,
    busy_workers,
    kill_busy_worker,
    processes,
    start_scheduler,
    start_workers,
    wait_for,
)
from tests.daskkit import tile_command as tile_with_options
from tests.tiling.test_executor import _scene, assert_same_outputs
from tests.trainkit import blob_scene, one_thread

PATIENCE = "2"
"""Seconds a run waits without any worker before it stops, in these tests (``RS_DEEPLAB_WORKERS_GONE_SECONDS``)."""


@dataclass
class Scheduler:
    """A running ``dask scheduler`` and what starting more processes beside it needs."""

    address: str
    folder: Path
    procs: list[subprocess.Popen[bytes]]
    common: dict[str, Any]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    folder = tmp_path_factory.mktemp("dask")
    with processes(folder) as (procs, common):
        yield Scheduler(start_scheduler(folder, procs, common), folder, procs, common)


@pytest.fixture
def workers(scheduler: Scheduler) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two fresh single-threaded workers (no nanny) for one test; gone from the scheduler afterwards."""
    from distributed import Client

    started = start_workers(scheduler.address, scheduler.folder, scheduler.procs, scheduler.common)
    yield started
    for proc in started:
        proc.kill()
        proc.wait()
    with Client(scheduler.address, timeout=30, set_as_default=False) as client:
        wait_for(lambda: not client.nthreads(), lambda: False, timeout=30)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneSpec:
    """An uncompressed 4-band scene with ISPRS colour labels: 729 crops of 32 px every 16 px."""
    return _scene(tmp_path_factory.mktemp("scene"), "scene", 440, 440, 5)


@pytest.fixture(scope="module")
def reference(scene: SceneSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene tiled in this process, undisturbed."""
    out = tmp_path_factory.mktemp("reference") / "tiles"
    tile_scenes([scene], out, size=32, stride=16, scheme="potsdam", workers=1, quiet=True)
    return out


def tile_command(scene: SceneSpec, out: Path, address: str) -> list[str]:
    return tile_with_options(scene, out, "--scheduler", address)


def start_tiling(command: list[str], patience: str = PATIENCE) -> subprocess.Popen[str]:
    env = {**ENV, WORKERS_GONE_ENV: patience}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def crops(out: Path) -> int:
    folder = out / "images"
    return len(os.listdir(folder)) if folder.is_dir() else 0


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def complete_crops_only(out: Path, reference: Path) -> None:
    """Nothing half-written under a final name: every crop there is byte for byte the reference's; no index."""
    assert not (out / "index.gpkg").exists()
    for folder in ("images", "labels"):
        for path in (out / folder).glob("[!.]*.tif"):  # (temporary names start with a dot)
            assert path.read_bytes() == (reference / folder / path.name).read_bytes(), path


@pytest.mark.slow
def test_tiling_survives_a_killed_worker(
    scene: SceneSpec, reference: Path, scheduler: Scheduler, workers: list[Any], tmp_path: Path
) -> None:
    from distributed import Client

    out = tmp_path / "tiles"
    run = start_tiling(tile_command(scene, out, scheduler.address))
    with Client(scheduler.address, timeout=30, set_as_default=False) as client:
        killed = kill_busy_worker(client, "tile-", lambda: crops(out) >= 20, lambda: run.poll() is not None)
    done = finished(run)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and killed
    assert_same_outputs(reference, out)  # the killed worker's tasks ran again on the other one
    assert not list(out.rglob(".*.tmp-*"))  # a crop it was writing stays no temporary file behind


@pytest.mark.slow
def test_tiling_stops_with_one_line_when_the_cluster_is_gone_and_resumes(
    scene: SceneSpec, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distributed import Client

    from pipelines.tile import main as tile_main

    out, folder = tmp_path / "tiles", tmp_path / "dask"
    folder.mkdir()
    with processes(folder) as (procs, common):
        address = start_scheduler(folder, procs, common)
        command = tile_command(scene, out, address)
        with Client(address, timeout=30, set_as_default=False) as client:
            # every worker killed while they hold tasks: one line once none has been back for PATIENCE seconds
            first = start_workers(address, folder, procs, common)
            run = start_tiling(command)
            wait_for(lambda: bool(busy_workers(client, "tile-")) and crops(out) >= 20, lambda: run.poll() is not None)
            kill_all(first)
            gone = time.monotonic()
            line = check_one_line(finished(run))
            assert f"all Dask workers at {address} are gone" in line and line.endswith(
                "re-run the same command to resume"
            ), line
            assert time.monotonic() - gone < float(PATIENCE) + 10
            complete_crops_only(out, reference)
            # no worker at all: one line at once
            assert "has no workers" in check_one_line(finished(start_tiling(command)))

            # new workers; now the scheduler is killed mid-run: one line, at once
            second = start_workers(address, folder, procs, common)
            before = crops(out)
            run = start_tiling(command)
            wait_for(
                lambda: bool(busy_workers(client, "tile-")) and crops(out) >= before + 20,
                lambda: run.poll() is not None,
            )
        procs[0].kill()  # the scheduler
        lost = time.monotonic()
        line = check_one_line(finished(run))
        assert f"lost the Dask scheduler at {address}" in line and "re-run the same command" in line, line
        assert time.monotonic() - lost < CONNECT_SECONDS + 5
        kill_all(second)  # orphans of the dead scheduler (their files are renamed whole, or temporary)
        complete_crops_only(out, reference)

        # a new scheduler: Ctrl-C while the run waits for workers is one line and 130
        address = start_scheduler(folder, procs, common)
        command = tile_command(scene, out, address)
        with Client(address, timeout=30, set_as_default=False) as client:
            third = start_workers(address, folder, procs, common)
            run = start_tiling(command, patience="600")
            wait_for(lambda: bool(busy_workers(client, "tile-")), lambda: run.poll() is not None)
            kill_all(third)
            run.send_signal(signal.SIGINT)
            check_one_line(finished(run), code=130, start="interrupted; re-run the same command to resume")
            complete_crops_only(out, reference)

            # the same command on new workers resumes to the undisturbed run's files and index (in this process:
            # the same code as the script, no start-up)
            start_workers(address, folder, procs, common)
            capsys.readouterr()
            assert tile_main(command[len(TILE) :]) == 0
    err = capsys.readouterr().err
    assert " already done" in err and " 0 already done" not in err, err
    assert_same_outputs(reference, out)


@pytest.mark.slow
def test_unreachable_scheduler_is_one_line_and_writes_nothing(
    scene: SceneSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        refused = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "tiles"
    start = time.monotonic()
    line = check_one_line(finished(start_tiling(tile_command(scene, out, refused))))
    assert "cannot reach the Dask scheduler" in line and "connection refused" in line, line
    assert time.monotonic() - start < CONNECT_SECONDS + 10 and not out.exists()

    with socket.socket() as silent:  # accepts connections but never greets, like an HTTP port
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(InputError, match="answers, but not as a Dask scheduler"):
            tile_scenes([scene], out, size=32, scheme="potsdam", scheduler=address, quiet=True)
        assert CONNECT_SECONDS - 1 < time.monotonic() - start < CONNECT_SECONDS + 5 and not out.exists()

    def no_model(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran before the scheduler was reached")

    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        cs.run_search(
            no_model,
            lambda i: blob_scene(i, 32),
            [0],
            tmp_path / "search",
            num_classes=6,  # type: ignore[arg-type]
            points=grid.make_grid([3.0], [30.0], [3.0], 2),
            normalise=torch.from_numpy,
            band_ranges=None,
            fingerprint="x",
            device=torch.device("cpu"),
            scheduler=refused,
            quiet=True,
        )
    assert not (tmp_path / "search").exists()
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        predict_scene(small_model(), scene.image, tmp_path / "labels.tif", scheduler=refused, **INFER)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*labels*"))
    monkeypatch.setenv(WORKERS_GONE_ENV, "0")
    with pytest.raises(InputError, match=f"{WORKERS_GONE_ENV}='0' must be a positive number of seconds"):
        check_cluster_options(None, refused)


@pytest.mark.slow
def test_a_task_that_kills_its_workers_is_one_line(tmp_path: Path) -> None:
    with processes(tmp_path) as (procs, common):
        common["env"]["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"  # Dask gives up after one death
        address = start_scheduler(tmp_path, procs, common)
        start_workers(address, tmp_path, procs, common)
        with open_cluster(None, address) as cluster:
            watch = cluster.watch()
            future = cluster.client.submit(os._exit, 1, pure=False, key="exit-1")  # the worker process dies
            with pytest.raises(
                ClusterError,
                match=f"^Dask workers at {address} died while running task exit-1, "
                r"1 time\(s\) .*re-run the same command to resume$",
            ):
                watch.wait(future)


def corrupt_middle_block(path: Path) -> None:
    """Zero the bytes of one tile that holds neither the first nor the last pixel (GDAL decodes it only there)."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_0", "TIFF", bidx=1))
        assert src.compression is not None and src.block_shapes[0][1] < src.width
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = bytes(size)
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_corrupt_block_mid_scene_stops_the_run_before_anything_is_written(
    scheduler: Scheduler, workers: list[Any], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b", "c"):  # deflate-compressed 256-px tiles, the middle scene damaged
        data = rng.integers(0, 255, (3, 300, 600), dtype=np.uint8)
        paths.append(write_geotiff(tmp_path / f"{name}.tif", data, crs=UTM33, transform=DEFAULT_TRANSFORM))
    corrupt_middle_block(paths[1])
    out = tmp_path / "tiles"
    with pytest.raises(RasterError, match=r"b\.tif: cannot be read at rows 0-299 .*corrupt"):
        tile_scenes(paths, out, size=64, workers=1, quiet=True)
    assert not out.exists()
    command = [*TILE, *map(str, paths), "--size", "64", "--out", str(out), "--scheduler", scheduler.address]
    line = check_one_line(finished(start_tiling(command)))
    assert "b.tif: cannot be read at rows 0-299" in line and not out.exists(), line  # read on the workers

    # the same inside a dataset's zip archive, read in place: area 2's image, in 32-px deflate tiles, damaged
    files = {f.area: f for f in write_vaihingen(tmp_path / "src", areas=(1, 2, 3), size=(96, 80), seed=5)}
    with rasterio.open(files[2].image) as src:
        profile, data = src.profile, src.read()
    profile.update(tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    with rasterio.open(files[2].image, "w", **profile) as dst:
        dst.write(data)
    corrupt_middle_block(files[2].image)
    root, stem = tmp_path / "vaihingen", "top_mosaic_09cm_area{}.tif"
    root.mkdir()
    for name, members in (
        ("ISPRS_semantic_labeling_Vaihingen.zip", {f"top/{stem.format(n)}": f.image for n, f in files.items()}),
        (VAIHINGEN_GT, {stem.format(n): f.label for n, f in files.items()}),
    ):
        with zipfile.ZipFile(root / name, "w", zipfile.ZIP_DEFLATED) as archive:
            for member, source in members.items():
                archive.write(source, member)
    with pytest.raises(RasterError, match=r"area2\.tif: cannot be read at rows 0-95 .*corrupt"):
        tile_preset("vaihingen", root, out, workers=1, quiet=True)
    assert not out.exists()


INFER = {"size": 64, "stride": 32, "batch_size": 4, "mean": [120.0] * 2, "std": [60.0] * 2}


def small_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 48, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(48, 48, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(48, 3, 1),
    )


@pytest.fixture(scope="module")
def infer_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 2-band scene of six 256-row Dask tasks, and its labels predicted in this process."""
    folder = tmp_path_factory.mktemp("infer")
    image = np.random.default_rng(3).integers(0, 255, (2, 1536, 256)).astype(np.uint8)
    path = write_geotiff(folder / "scene.tif", image, crs="EPSG:32633", transform=DEFAULT_TRANSFORM)
    with one_thread():  # as the scripts' OMP_NUM_THREADS=1
        predict_scene(small_model(), path, folder / "local.tif", device="cpu", **INFER)  # type: ignore[arg-type]
    with rasterio.open(folder / "local.tif") as src:
        return path, src.read()


def in_background(job: Callable[[threading.Event], Any]) -> Callable[[Callable[[], Any]], Any]:
    """Run ``job(ended)`` in a thread while the wrapped call runs here; ``ended`` is set when the call returns."""

    def around(call: Callable[[], Any]) -> Any:
        ended = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            background = pool.submit(job, ended)
            try:
                return call()
            finally:
                ended.set()
                background.result()

    return around


@pytest.mark.slow
def test_inference_survives_a_killed_worker(
    infer_scene: tuple[Path, np.ndarray], scheduler: Scheduler, workers: list[Any], tmp_path: Path
) -> None:
    from distributed import Client

    scene, expected = infer_scene
    out = tmp_path / "dask.tif"

    def killer(ended: threading.Event) -> None:
        with Client(scheduler.address, timeout=30, set_as_default=False) as client:
            kill_busy_worker(client, "predict_rows", partial_path(out).exists, ended.is_set)

    result = in_background(killer)(
        lambda: predict_scene(small_model(), scene, out, scheduler=scheduler.address, **INFER)  # type: ignore[arg-type]
    )
    assert "2 workers" in result.runner
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), expected)


@pytest.mark.slow
def test_inference_without_workers_stops_keeping_its_rows_and_resumes(
    infer_scene: tuple[Path, np.ndarray],
    scheduler: Scheduler,
    workers: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import Client

    monkeypatch.setenv(WORKERS_GONE_ENV, PATIENCE)
    scene, expected = infer_scene
    out = tmp_path / "dask.tif"

    def rows_written() -> int:
        try:
            return int(json.loads(sidecar_path(out).read_text())["rows"])
        except (OSError, ValueError):
            return 0

    def killer(ended: threading.Event) -> None:
        with Client(scheduler.address, timeout=30, set_as_default=False) as client:
            wait_for(lambda: rows_written() >= 256 and bool(busy_workers(client, "predict_rows")), ended.is_set)
            kill_all(workers)

    with pytest.raises(ClusterError, match=f"all Dask workers at {scheduler.address} are gone .* to resume$"):
        in_background(killer)(
            lambda: predict_scene(small_model(), scene, out, scheduler=scheduler.address, **INFER)  # type: ignore[arg-type]
        )
    assert partial_path(out).exists() and rows_written() >= 256 and not out.exists()
    more = start_workers(scheduler.address, scheduler.folder, scheduler.procs, scheduler.common)
    try:
        result = predict_scene(small_model(), scene, out, scheduler=scheduler.address, **INFER)  # type: ignore[arg-type]
    finally:
        kill_all(more)
    assert result.resumed_at >= 256 and not partial_path(out).exists()
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), expected)


@pytest.mark.slow
def test_crf_search_survives_a_killed_worker(scheduler: Scheduler, workers: list[Any], tmp_path: Path) -> None:
    from distributed import Client

    crops = [blob_scene(200 + i, 96) for i in range(8)]
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, 6, 5, padding=2)
    points = grid.make_grid([3.0, 5.0], [30.0, 60.0], [3.0], 10)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "model.pt").write_bytes(b"weights")
    shutil.copytree(tmp_path / "local", tmp_path / "dask")  # the same model file (size, time) in both places

    def search(folder: str, **where: Any) -> cs.SearchResult:
        return cs.run_search(
            model,
            crops.__getitem__,
            list(range(8)),
            tmp_path / folder / "search",
            num_classes=6,
            points=points,
            normalise=lambda a: torch.from_numpy(a / np.float32(255)),
            band_ranges=None,
            fingerprint="conv",
            device=torch.device("cpu"),
            record_for=tmp_path / folder / "model.pt",
            quiet=True,
            **where,
        )

    local = search("local", workers=1)
    cache = tmp_path / "dask" / "search" / cs.CACHE_DIR

    def killer(ended: threading.Event) -> None:
        with Client(scheduler.address, timeout=30, set_as_default=False) as client:
            kill_busy_worker(client, "crf-", lambda: len(list(cache.rglob("*.npz"))) == 8, ended.is_set)

    remote = in_background(killer)(lambda: search("dask", scheduler=scheduler.address))
    assert (remote.computed_settings, remote.rows, remote.best) == (6, local.rows, local.best)
    assert json.loads(cs.record_path(tmp_path / "dask" / "model.pt").read_text()) == json.loads(
        cs.record_path(tmp_path / "local" / "model.pt").read_text()
    )
