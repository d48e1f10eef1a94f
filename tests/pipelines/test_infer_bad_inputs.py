"""Bad inputs to ``pipelines/infer.py``, each run as a user would: a subprocess.

Every case must end with exit code 2, exactly one ``error: ...`` line on stderr, no traceback, and nothing left
behind (no label raster, no ``.partial`` file or sidecar, no temporary GeoPackage). Ctrl-C during inference exits
130 with one line, leaves only what the re-run resumes from, and the re-run gives the uninterrupted run's raster.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.writing.writer import partial_path, sidecar_path
from tests import trainkit
from tests.badkit import ENV, Args, Run, check_one_line, listing, run_in, run_table
from tests.trainkit import REPO, blob_scene, once_per_run, one_thread

INFER = [sys.executable, str(REPO / "pipelines" / "infer.py")]
trained = trainkit.trained  # the session's tiny checkpoint (a fixture)
TRANSFORM = Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
INTERRUPTED = "interrupted; re-run the same command to resume"


def scene(path: Path, height: int, width: int, seed: int, bands: int = 4, compress: str | None = "deflate") -> Path:
    """A blob scene of ``bands`` bands, ``height`` × ``width`` pixels (rows repeat the 96-row pattern)."""
    image, _ = blob_scene(seed, 96)
    image = np.tile(image, (1, -(-height // 96), -(-width // 96)))[:bands, :height, :width]
    return write_geotiff(path, image, crs="EPSG:32633", transform=TRANSFORM, compress=compress)


def truncated(source: Path, dest: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` of ``source``'s bytes."""
    data = source.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def corrupt_middle_block(source: Path, dest: Path) -> Path:
    """A copy of ``source`` (deflate) whose middle block is junk: the header and the size are intact."""
    with rasterio.open(source) as ds:
        rows = -(-ds.height // ds.block_shapes[0][0])
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_0_{rows // 2}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_0_{rows // 2}", "TIFF", bidx=1))
    data = bytearray(source.read_bytes())
    data[offset : offset + size] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    dest.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, trained: Path) -> dict[str, Path]:
    """The session's tiny checkpoint (:func:`tests.trainkit.train_tiny`), good scenes, broken variants."""
    base = tmp_path_factory.mktemp("bad_infer")
    w: dict[str, Path] = {"base": base, "ckpt": trained}
    inputs = base / "inputs"
    inputs.mkdir()
    w["scene"] = scene(inputs / "scene.tif", 96, 96, 3)
    w["rgb"] = scene(inputs / "rgb.tif", 96, 96, 3, bands=3)
    tall = scene(base / "tall.tif", 768, 96, 4, compress=None)
    w["truncated"] = truncated(tall, inputs / "truncated.tif")
    w["corrupt"] = corrupt_middle_block(scene(base / "tall_deflate.tif", 768, 96, 5), inputs / "corrupt.tif")
    w["junk"] = inputs / "junk.tif"
    w["junk"].write_bytes(bytes(range(256)) * 8)
    w["text"] = inputs / "notes.tif"
    w["text"].write_text("this is not a raster\n")
    w["text_pt"] = inputs / "notes.pt"
    w["text_pt"].write_text("this is not a checkpoint\n")
    w["cut_pt"] = truncated(trained, inputs / "cut.pt", 0.3)
    state = torch.load(trained, map_location="cpu", weights_only=True)
    state["config"]["model"]["backbone"] = "resnet34"  # another architecture than the weights
    w["arch_pt"] = inputs / "arch.pt"
    torch.save(state, w["arch_pt"])
    w["afile"] = inputs / "afile"
    w["afile"].write_text("x")
    w["folder"] = inputs / "a_folder.tif"
    w["folder"].mkdir()
    w["inputs"] = inputs
    return w


def on(key: str, out: str = "out.tif", *extra: str) -> Args:
    """Arguments predicting ``world[key]`` into ``<case folder>/out``, plus ``extra``."""
    return lambda w, t: [str(w[key]), "--out", str(t / out), *extra]


def good(*extra: str, out: str = "out.tif") -> Args:
    return on("scene", out, *extra)


def with_checkpoint(key: str) -> Args:
    return lambda w, t: [str(w["scene"]), "--out", str(t / "out.tif"), "--checkpoint", str(w[key])]


def existing(name: str, content: bytes) -> Args:
    """``--out`` onto a file of another kind that exists in the case folder."""

    def make(w: dict[str, Path], t: Path) -> list[str]:
        (t / name).write_bytes(content)
        return [str(w["scene"]), "--out", str(t / name)]

    return make


def folder_out(name: str) -> Args:
    """``--out`` onto a folder made in the case folder."""

    def make(w: dict[str, Path], t: Path) -> list[str]:
        (t / name).mkdir()
        return [str(w["scene"]), "--out", str(t / name)]

    return make


def probs_folder(w: dict[str, Path], t: Path) -> list[str]:
    (t / "out_probs.tif").mkdir()
    return [str(w["scene"]), "--out", str(t / "out.tif"), "--probs"]


def gpkg_beside_scene(w: dict[str, Path], t: Path) -> list[str]:
    return [str(w["scene"]), "--out", str(w["scene"].with_suffix(".gpkg"))]


# (id, arguments from (world, case folder), words the error line must hold)
CASES: list[tuple[str, Args, str]] = [
    ("truncated-scene", on("truncated"), "is truncated"),
    ("corrupt-block-mid-run", on("corrupt", "out.tif", "--quiet"), "cannot be read at rows"),  # started: no logs
    ("junk-scene", on("junk"), "not a raster GDAL can read"),
    ("text-scene", on("text"), "not a raster GDAL can read"),
    ("missing-scene", lambda w, t: [str(t / "nope.tif"), "--out", str(t / "out.tif")], "file not found"),
    ("scene-is-folder", on("folder"), "is a directory"),
    ("band-count", on("rgb"), "has 3 bands but the model was trained on 4"),
    ("out-under-file", lambda w, t: [str(w["scene"]), "--out", str(w["afile"] / "out.tif")], "is a file, not a folder"),
    ("out-unwritable", lambda w, t: [str(w["scene"]), "--out", "/proc/rs_deeplab_out.tif"], "cannot write in /proc"),
    ("out-folder-missing", good(out="none/out.tif"), "does not exist; create it first"),
    ("out-is-folder", lambda w, t: [str(w["scene"]), "--out", str(w["folder"])], "is a folder where a file"),
    ("out-gpkg-is-folder", folder_out("x.gpkg"), "is a folder where a file"),
    ("out-is-the-scene", lambda w, t: [str(w["scene"]), "--out", str(w["scene"])], "input of this run"),
    ("out-raster-is-the-scene", gpkg_beside_scene, "would overwrite the scene"),
    ("out-existing-junk-tif", existing("old.tif", b"some notes, not a raster\n"), "is not a GeoTIFF"),
    ("out-existing-text-gpkg", existing("old.gpkg", b"some notes\n"), "is not a GeoPackage"),
    ("out-wrong-suffix", good(out="out.png"), "use a .gpkg"),
    ("probs-is-folder", probs_folder, "is a folder where a file"),
    ("size-0", good("--size", "0"), "--size 0"),
    ("size-negative", good("--size", "-64"), "--size -64"),
    ("stride-0", good("--stride", "0"), "--stride 0"),
    ("stride-negative", good("--stride", "-2"), "--stride -2"),
    ("stride-over-size", good("--size", "32", "--stride", "48"), "larger than the crop size"),
    ("batch-size-0", good("--batch-size", "0"), "--batch-size 0"),
    ("batch-size-negative", good("--batch-size", "-4"), "--batch-size -4"),
    ("crf-band-missing", good("--crf", "--crf-bands", "1,2,7"), "has 4 band(s)"),
    ("crf-band-0", good("--crf", "--crf-bands", "0,1,2"), "counted from 1"),
    ("crf-iterations-0", good("--crf", "--crf-iterations", "0"), "--crf-iterations 0"),
    ("crf-kernel-0", good("--crf", "--crf-gaussian", "0,3"), "gaussian_sxy"),
    ("min-area-negative", good("--min-area", "-1", out="out.gpkg"), "--min-area -1"),
    ("simplify-negative", good("--simplify", "-0.5", out="out.gpkg"), "--simplify -0.5"),
    ("workers-0", good("--workers", "0", out="out.gpkg"), "--workers 0"),
    ("scale-0", good("--scales", "0,1"), "positive"),
    ("checkpoint-missing", with_checkpoint("nope"), "checkpoint not found"),
    ("checkpoint-truncated", with_checkpoint("cut_pt"), "not a readable checkpoint"),
    ("checkpoint-text", with_checkpoint("text_pt"), "not a readable checkpoint"),
    ("checkpoint-other-architecture", with_checkpoint("arch_pt"), "do not fit the architecture it records"),
]


def run_case(w: dict[str, Path], folder: Path, make_args: Args) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``infer.py`` with a case's arguments in ``folder`` (on the CPU, with the module's checkpoint unless the
    case names one)."""
    args = [*make_args({**w, "nope": folder / "nope.pt"}, folder), "--device", "cpu"]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(w["ckpt"])]
    return run_in(folder, [*INFER, *args])


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def infer_runs(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every case of :data:`CASES`, two subprocesses at a time, once per test run; the inputs' folder must come out
    unchanged."""

    def table() -> dict[str, Run]:
        inputs_before = snapshot(world["inputs"])
        runs = run_table(CASES, functools.partial(run_case, world), world["base"] / "cases", workers=2, server=True)
        assert snapshot(world["inputs"]) == inputs_before  # no case wrote (or left a temporary file) beside them
        return runs

    return once_per_run(tmp_path_factory, "infer_bad_inputs", table)


def test_there_are_many_cases() -> None:
    assert len({name for name, _, _ in CASES}) == len(CASES) >= 30


@pytest.mark.slow
@pytest.mark.parametrize("name, words", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_infer_bad_input_is_one_line_and_leaves_nothing(infer_runs: dict[str, Run], name: str, words: str) -> None:
    proc, before, folder = infer_runs[name]
    line = check_one_line(proc)
    assert words in line, line
    assert listing(folder) == before  # no raster, .partial, sidecar
    for out in (folder / "out.tif", folder / "out.gpkg"):
        assert not partial_path(out).exists() and not sidecar_path(out).exists()


def wait_for_rows(side: Path, proc: subprocess.Popen[str], rows: int, timeout: float = 240) -> int:
    """Poll the resume sidecar until it records ``rows`` committed rows (evidence of work, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    done = 0
    while proc.poll() is None and time.monotonic() < deadline and done < rows:
        if side.exists():
            with contextlib.suppress(ValueError, KeyError, OSError):  # replaced while read
                done = json.loads(side.read_text())["rows"]
        time.sleep(0.02)
    return done


@pytest.mark.slow
def test_ctrl_c_exits_130_in_one_line_and_the_rerun_gives_the_same_raster(
    world: dict[str, Path], tmp_path: Path
) -> None:
    big = scene(tmp_path / "big.tif", 1024, 96, 9)
    out = tmp_path / "big_labels.tif"
    options = ["--checkpoint", str(world["ckpt"]), "--device", "cpu", "--batch-size", "1"]
    cmd = [*INFER, str(big), "--out", str(out), *options]
    proc = subprocess.Popen([*cmd, "--quiet"], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        rows = wait_for_rows(sidecar_path(out), proc, 256)
        assert proc.poll() is None, "the run ended before it could be interrupted; make the scene taller"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.splitlines() == [INTERRUPTED], err
    assert rows >= 256 and not out.exists()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["big.tif", partial_path(out).name, sidecar_path(out).name])  # what the re-run resumes
    rerun = subprocess.run([*cmd, "--verbose"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming at row" in rerun.stderr
    fresh = tmp_path / "fresh.tif"
    from pipelines.infer import main

    with one_thread():  # the undisturbed run in this process: the same code as the script, no second start-up
        assert main([str(big), "--out", str(fresh), *options, "--quiet"]) == 0
    with rasterio.open(out) as r, rasterio.open(fresh) as f:
        np.testing.assert_array_equal(r.read(1), f.read(1))
    pages = ["big_labels.html", "big_labels_files", "fresh.html", "fresh_files"]  # each finished run's page
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["big.tif", "big_labels.tif", "fresh.tif", *pages])
