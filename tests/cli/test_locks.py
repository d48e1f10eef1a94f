"""Two runs on the same output, as users start them (real processes): the second refuses in one line, exit 2, and
the first finishes intact; a run killed with SIGKILL leaves no lock that stops the next one.

The first run is held still with SIGSTOP once it holds its lock (evidence: its lock file names its pid), so the
second always starts while the first is running, without any fixed sleep; SIGCONT lets it finish. The second run
(and the run after a killed one) is the script's ``main`` in the test's process: the lock's holder is the other
process, and a second start-up of the library would prove nothing more.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import rasterio

from rs_deeplab.cli.locks import OutputBusyError, lock_path, output_lock
from rs_deeplab.geo.raster import write_geotiff
from tests.pipelines.test_interrupts import TIMEOUT, TRANSFORM, finish, script, start, wait_for
from tests.trainkit import blob_scene, make_tiles, one_thread, write_config

BUSY = re.compile(
    r"error: (?P<out>\S+) is being written by another run \(pid (?P<pid>\d+) on host (?P<host>\S+), started "
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it or choose another (?P<option>\S+)"
)


def holds_lock(proc: subprocess.Popen[str], output: Path) -> Callable[[], bool]:
    """Evidence that ``proc`` holds the lock of ``output``: the lock file names its pid."""

    def check() -> bool:
        try:
            return bool(json.loads(lock_path(output).read_text() or "{}").get("pid") == proc.pid)
        except ValueError:  # being written
            return False

    return check


def in_process(command: list[str]) -> tuple[int, str]:
    """Run ``command`` (``[python, pipelines/<name>.py, *args]``) as its script's ``main`` here: exit code, stderr."""
    module = importlib.import_module(f"pipelines.{Path(command[1]).stem}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), one_thread():
        code = module.main(command[2:])
    return code, err.getvalue()


def refused_while_running(
    first: list[str], second: list[str], output: Path, cwd: Path, option: str, shown: Path | None = None
) -> None:
    """Start ``first``, stop it once it holds the lock of ``output``, run ``second`` (in this process) to its one-line
    refusal (naming ``shown``, the output it was given), let ``first`` end."""
    proc = start(first, cwd)
    try:
        wait_for(proc, holds_lock(proc, output), f"the lock of {output}")
        proc.send_signal(signal.SIGSTOP)
        code, err = in_process(second)
        err = err.strip()
        assert code == 2, err
        assert "\n" not in err and "Traceback" not in err, err
        match = BUSY.fullmatch(err)
        assert match, err
        assert (int(match["pid"]), match["host"], match["option"]) == (proc.pid, socket.gethostname(), option)
        assert match["out"] == str(shown or output)
    finally:
        proc.send_signal(signal.SIGCONT)
    code, err = finish(proc)
    assert code == 0, err
    assert not lock_path(output).exists()  # removed once the run is done


def killed_holder_leaves_no_lock(cmd: list[str], output: Path, cwd: Path) -> None:
    """SIGKILL ``cmd`` once it holds its lock: the lock file stays behind, and the same command then runs to 0."""
    proc = start(cmd, cwd)
    wait_for(proc, holds_lock(proc, output), f"the lock of {output}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    assert lock_path(output).exists()  # the file is no lock: the kernel released the flock with the process
    code, err = in_process(cmd)
    assert code == 0, err
    assert not lock_path(output).exists()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image, _ = blob_scene(5, 256)
    path = tmp_path_factory.mktemp("lock_scene") / "scene.tif"
    return write_geotiff(path, image, crs="EPSG:32633", transform=TRANSFORM)


def test_a_lock_refuses_a_second_holder_and_goes_with_its_folders(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "labels.tif"
    busy = rf"^{re.escape(str(out))} is being written by another run \(pid {os.getpid()} on host "
    with output_lock(out) as path:
        assert path == out.parent / ".labels.tif.lock" and json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputBusyError, match=busy), output_lock(out):
            pass
    assert list(tmp_path.iterdir()) == []  # the lock file and the folders made for it are gone


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run started twice at once on the same folder: the second refused while the first ran; the folder
    the first one wrote (its checkpoint is the model the inference test runs)."""
    tmp = tmp_path_factory.mktemp("train_lock")
    tiles = make_tiles(tmp / "data")
    run = tmp / "runs" / "x"
    config = write_config(
        tmp / "exp.yaml",
        tiles,
        run,
        schedule={"iterations": 2},
        train={"eval_every": 2, "checkpoint_every": 2, "log_every": 1},
    )
    cmd = [*script("train"), str(config), "--quiet"]
    refused_while_running(cmd, cmd, run, tmp, "work_dir")
    return run


@pytest.mark.slow
def test_train_on_the_same_run_folder_refuses(run_folder: Path) -> None:
    assert {"last.pt", "best.pt", "config.yaml"} <= {p.name for p in run_folder.iterdir()}


@pytest.mark.slow
def test_infer_on_the_same_out_refuses(run_folder: Path, scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.gpkg"  # its raster labels.tif: the lock is the raster's, whichever --out names it
    model = ["--checkpoint", str(run_folder / "best.pt"), "--size", "64", "--stride", "64", "--quiet"]
    model += ["--runtime", "torch"]  # the lock is the point, not the runtime: no ONNX export while it is held
    first = [*script("infer"), str(scene), "--out", str(out), *model]
    second = [*script("infer"), str(scene), "--out", str(out.with_suffix(".tif")), *model]
    refused_while_running(first, second, out.with_suffix(".tif"), tmp_path, "--out", shown=out.with_suffix(".tif"))
    with rasterio.open(out.with_suffix(".tif")) as ds:
        assert ds.shape == (256, 256) and ds.read(1).max() < 6  # complete: every pixel a class
    assert out.exists()


@pytest.mark.slow
def test_tile_on_the_same_out_refuses_and_a_killed_run_leaves_no_lock(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    cmd = [*script("tile"), str(scene), "--out", str(out), "--size", "64", "--workers", "1", "--quiet"]
    refused_while_running(cmd, cmd, out, tmp_path, "--out")
    crops = sorted(p.name for p in (out / "images").iterdir())
    assert len(crops) == 49 and (out / "index.gpkg").exists()  # 7 × 7 windows of 64 every 32 pixels
    again = tmp_path / "again"
    cmd = [*script("tile"), str(scene), "--out", str(again), "--size", "64", "--workers", "1", "--quiet"]
    killed_holder_leaves_no_lock(cmd, again, tmp_path)
    assert sorted(p.name for p in (again / "images").iterdir()) == crops
