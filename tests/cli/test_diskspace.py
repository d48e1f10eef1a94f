"""The disk fills (issue 22, item 2): every script stops with one line, leaves no half-written final file, and
resumes to the result of an undisturbed run once space is freed.

A file-size limit (``RLIMIT_FSIZE``, ``ulimit -f``) stands in for the full disk: CPython ignores ``SIGXFSZ``, so a
write past the limit fails with ``EFBIG`` as a write to a full disk fails with ``ENOSPC``, and GDAL, SQLite and
torch have to report it the same way. Each case runs the real script as a subprocess with a limit that lets it
start and stop mid-way (the evidence: partial files, committed rows, finished crops), then runs it again without
the limit and compares every output with an undisturbed run. Undisturbed runs, and the last run of training and
inference, call the script's ``main`` in this process (same code, no torch start-up; one torch thread as in the
subprocesses, so that floating-point sums agree).
Training's limit is set on the running process (``prlimit``) once its first checkpoint is on disk, so the re-run
has a good checkpoint to resume from. The free-space checks before large outputs are tested with a patched
``shutil.disk_usage`` and, where this machine lets a user namespace mount one, a real 64 KB tmpfs.
"""

from __future__ import annotations

import errno
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from affine import Affine

from rs_deeplab.cli import diskspace
from rs_deeplab.cli.console import user_error_message
from rs_deeplab.cli.diskspace import check_free_space, out_of_space, space_errno
from rs_deeplab.cli.errors import DiskFullError
from rs_deeplab.config.schema import load_config
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.geo.tiff_writes import tiff_truncated
from rs_deeplab.tiling.index import read_index
from rs_deeplab.training.experiment import train_experiment
from tests.badkit import ENV
from tests.trainkit import REPO, blob_scene, make_tiles, one_thread, write_config

TRANSFORM = Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
TIMEOUT = 300
INFER = ["--size", "64", "--stride", "64", "--batch-size", "8", "-q"]
TRAIN: dict[str, dict[str, object]] = {
    "schedule": {"iterations": 6},
    "train": {"eval_every": 6, "checkpoint_every": 2, "log_every": 1},
}
"""Checkpoints at iterations 2 and 4 before the only evaluation: a limit set once the first is on disk hits the
second (no evaluation warning before the error line)."""


def script(name: str) -> list[str]:
    return [sys.executable, str(REPO / "pipelines" / f"{name}.py")]


def capped(limit: int) -> Any:
    """A ``preexec_fn`` giving the child process a file-size limit of ``limit`` bytes."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run(name: str, args: Sequence[object], cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script(name), *map(str, args)],
        cwd=cwd,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=TIMEOUT,
        preexec_fn=None if limit is None else capped(limit),
    )


def assert_no_space(proc: subprocess.CompletedProcess[str], path: Path, *, needs: bool = True) -> str:
    """Exit 2 and exactly one stderr line naming ``path``, the limit and the space; no traceback, no libtiff."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "_tiff" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert re.match(rf"error: \S*{re.escape(path.name)}: cannot be written: file too large \(", line), line
    assert "ulimit -f" in line and re.search(r"[\d.]+ (GB|MB|KB|bytes) free in ", line), line
    assert bool(re.search(r"needs about [\d.]+ (GB|MB|KB|bytes)", line)) == needs, line
    assert line.endswith("run the same command again to resume"), line
    return line


def pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def polygons(path: Path) -> tuple[Any, ...]:
    """Geometries (WKB) and attributes of a polygon layer, in file order."""
    _, _, geometry, fields = pyogrio.raw.read(path)
    return (list(geometry), *(list(f) for f in fields))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp-*"))


# --- the free-space checks and the one line, as functions ---------------------------------------------------------


def test_free_space_check_names_what_is_needed_and_what_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda _: usage._replace(free=1_000_000))
    check_free_space(tmp_path / "labels.tif", 900_000, "the label raster")  # fits: nothing said
    with pytest.raises(DiskFullError) as caught:
        check_free_space(tmp_path / "labels.tif", 2_500_000, "the label raster")
    expected = (
        f"{tmp_path / 'labels.tif'}: not enough free space for the label raster: needs about 2.5 MB, "
        f"1.0 MB free in {tmp_path}; free some space or write elsewhere"
    )
    assert str(caught.value) == expected
    assert caught.value.needed == 2_500_000 and caught.value.errno_code is None


def test_lack_of_space_is_found_in_errnos_messages_and_chains() -> None:
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as exc:  # torch.save's error: the OSError is its context
        wrapped = exc
    wrapped.__suppress_context__ = False
    assert space_errno(wrapped) == errno.EFBIG
    assert space_errno(OSError(errno.EDQUOT, "Disk quota exceeded")) == errno.EDQUOT
    assert space_errno(RuntimeError("sqlite3_exec() failed: database or disk is full")) == errno.ENOSPC
    assert space_errno(RuntimeError("Free disk space available is 10 bytes, whereas 4096 are needed")) == errno.ENOSPC
    assert space_errno(OSError(errno.EACCES, "Permission denied")) is None
    message = str(out_of_space("/data/labels.tif", errno.ENOSPC, 95_000_000))
    assert message.startswith("/data/labels.tif: cannot be written: no space left on the device; needs about 95 MB,")


def test_the_cli_boundary_makes_a_stray_full_disk_one_line() -> None:
    line = user_error_message(OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.csv"))
    assert line is not None and line.startswith("runs/x/metrics.csv: cannot be written: no space left on the device")
    wrapped = RuntimeError("iostream error")
    wrapped.__context__ = OSError(errno.EFBIG, "File too large")
    assert (user_error_message(wrapped) or "").startswith("an output file: cannot be written: file too large")
    assert user_error_message(RuntimeError("a bug")) is None


@pytest.mark.parametrize("bigtiff", [False, True])
def test_a_geotiff_cut_short_is_found_by_its_directory(tmp_path: Path, bigtiff: bool) -> None:
    data = np.random.default_rng(0).integers(0, 6, (2, 300, 300), dtype=np.uint8)
    whole = tmp_path / "whole.tif"
    with rasterio.open(
        whole,
        "w",
        driver="GTiff",
        width=300,
        height=300,
        count=2,
        dtype="uint8",
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="deflate",
        BIGTIFF="YES" if bigtiff else "NO",
        crs="EPSG:32633",
        transform=TRANSFORM,
    ) as dst:
        dst.write(data)
    assert not tiff_truncated(whole)
    blob = whole.read_bytes()
    for cut in (len(blob) - 1, len(blob) // 2, 12):
        (tmp_path / "cut.tif").write_bytes(blob[:cut])
        assert tiff_truncated(tmp_path / "cut.tif"), cut
    assert not tiff_truncated(REPO / "pyproject.toml")  # no TIFF: nothing to say


# --- tile.py ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 192² labelled scene (noisy image: crops compress to varied sizes)."""
    folder = tmp_path_factory.mktemp("scenes")
    image, classes = blob_scene(7, 192)
    write_geotiff(folder / "scene.tif", image, crs="EPSG:32633", transform=TRANSFORM)
    from rs_deeplab.labels.classes import SCHEMES

    write_geotiff(
        folder / "label.tif", SCHEMES["potsdam"].encode_colours(classes), crs="EPSG:32633", transform=TRANSFORM
    )
    return folder


def tile_args(scenes: Path, out: Path) -> list[object]:
    return [
        scenes / "scene.tif",
        "--labels",
        scenes / "label.tif",
        "--scheme",
        "potsdam",
        "--size",
        64,
        "--stride",
        32,
        "--compress",
        "deflate",
        "--out",
        out,
        "-q",
    ]


@pytest.mark.slow
def test_tile_stops_at_a_crop_then_at_the_index_and_resumes_to_the_same_tiles(scenes: Path, tmp_path: Path) -> None:
    from pipelines.tile import main as tile_main

    assert tile_main([str(a) for a in tile_args(scenes, tmp_path / "ref")]) == 0
    ref = tmp_path / "ref"
    crops = sorted(p.relative_to(ref) for p in (ref / "images").glob("*.tif")) + sorted(
        p.relative_to(ref) for p in (ref / "labels").glob("*.tif")
    )
    sizes = {c: (ref / c).stat().st_size for c in crops}
    first = max(sizes[Path("images/scene_0_0.tif")], sizes[Path("labels/scene_0_0.tif")])
    limit = max(first, int(np.median(list(sizes.values()))))
    assert max(sizes.values()) > limit and (ref / "index.gpkg").stat().st_size > 2 * max(sizes.values())

    out = tmp_path / "out"
    stopped = run("tile", tile_args(scenes, out), tmp_path, limit=limit)  # the disk fills among the crops
    assert_no_space(stopped, Path(".tif"))
    assert "for the crops left" in stopped.stderr
    written = list((out / "images").glob("*.tif"))
    assert 0 < len(written) < len(list((ref / "images").glob("*.tif")))  # mid-way
    for crop in [*written, *(out / "labels").glob("*.tif")]:  # every crop under its final name is whole
        assert crop.read_bytes() == (ref / crop.relative_to(out)).read_bytes()
    assert leftovers(out) == [] and not (out / "index.gpkg").exists()

    stopped = run("tile", tile_args(scenes, out), tmp_path, limit=2 * max(sizes.values()))  # then at the index
    assert_no_space(stopped, Path("index.gpkg"), needs=False)
    assert len(list((out / "images").glob("*.tif"))) == len(list((ref / "images").glob("*.tif")))
    assert not (out / "index.gpkg").exists() and leftovers(out) == []

    assert run("tile", tile_args(scenes, out), tmp_path).returncode == 0  # space freed: the same command
    for crop in crops:
        assert (out / crop).read_bytes() == (ref / crop).read_bytes()
    (tiles, classes), (ref_tiles, ref_classes) = read_index(out / "index.gpkg"), read_index(ref / "index.gpkg")
    assert tiles.drop(columns="geometry").equals(ref_tiles.drop(columns="geometry")) and classes.equals(ref_classes)
    assert list(tiles.geometry.to_wkb()) == list(ref_tiles.geometry.to_wkb())


def test_tile_refuses_crops_that_cannot_fit_before_writing(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.tile import main as tile_main

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda _: usage._replace(free=100_000))
    out = tmp_path / "out"
    assert tile_main([str(a) for a in tile_args(scenes, out)]) == 2
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"error: {re.escape(str(out))}: not enough free space for the crops: needs about "
        rf"[\d.]+ KB, 100 KB free in \S+; free some space or write elsewhere",
        line,
    ), line
    assert not out.exists()


def test_tile_refuses_on_a_real_small_file_system(scenes: Path, tmp_path: Path) -> None:
    """A 64 KB tmpfs, mounted in a user and mount namespace of the child only (skipped where that is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    args = " ".join(f"'{a}'" for a in [*script("tile"), *tile_args(scenes, mount / "tiles")])
    shell = f"mount -t tmpfs -o size=64k tmpfs '{mount}' || exit 99; {args}; echo rc=$?; ls -A '{mount}'"
    try:
        proc = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell],
            env=ENV,
            text=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
    except FileNotFoundError:
        pytest.skip("no unshare command")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()[:200]}")
    assert proc.stdout.split() == ["rc=2"], proc.stdout  # refused, and nothing written on that file system
    line = proc.stderr.strip()
    assert re.fullmatch(
        r"error: \S+/small/tiles: not enough free space for the crops: needs about [\d.]+ KB, "
        r"[\d.]+ KB free in \S+/small; free some space or write elsewhere",
        line,
    ), line


# --- train.py ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiles, and an undisturbed run of the :data:`TRAIN` config (its ``last.pt`` is also inference's model)."""
    folder = tmp_path_factory.mktemp("train")
    tiles = make_tiles(folder)
    cfg = write_config(folder / "ref.yaml", tiles, folder / "runs" / "ref", **TRAIN)
    with one_thread():
        result = train_experiment(load_config(cfg))
    assert result.last is not None
    return tiles, result.run_dir


@pytest.mark.slow
def test_train_stops_at_a_checkpoint_and_resumes_from_the_last_good_one(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    tiles, ref = trained
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "exp.yaml", tiles, run_dir, **TRAIN)
    proc = subprocess.Popen(
        [*script("train"), str(cfg), "-q"],
        cwd=tmp_path,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + TIMEOUT
    while not (run_dir / "last.pt").exists():  # the first checkpoint is on disk: now the disk fills
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.001)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
    _, err = proc.communicate(timeout=TIMEOUT)
    line = assert_no_space(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), Path("last.pt"))
    assert re.search(r"needs about (9\d|1\d\d) MB", line), line  # one checkpoint of the ResNet-18 DeepLab v3+
    good = torch.load(run_dir / "last.pt", weights_only=True)  # the last good checkpoint is whole
    assert good["iteration"] == 2 and leftovers(run_dir) == [] and not (run_dir / "best.pt").exists()

    from pipelines.train import main as train_main

    with one_thread():  # space freed: the same command (in this process: no second start-up) resumes
        assert train_main([str(cfg), "-q"]) == 0
    for name in ("last.pt", "best.pt"):
        mine, theirs = (torch.load(d / name, weights_only=True) for d in (run_dir, ref))
        assert mine["iteration"] == theirs["iteration"] == 6
        for key, tensor in theirs["model"].items():
            assert torch.equal(mine["model"][key], tensor), key
    rows = [r.split(",")[:4] for r in (run_dir / "metrics.csv").read_text().splitlines()]
    assert rows == [r.split(",")[:4] for r in (ref / "metrics.csv").read_text().splitlines()]


# --- infer.py ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_infer_stops_in_the_raster_the_cog_copy_and_the_polygons_and_resumes_each_time(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    from pipelines.infer import main as infer_main

    checkpoint = trained[1] / "last.pt"
    image, _ = blob_scene(5, 640)  # 640 rows (three rows of 256-pixel blocks), 384 columns
    scene = write_geotiff(tmp_path / "scene.tif", image[:, :, :384], crs="EPSG:32633", transform=TRANSFORM)
    top = write_geotiff(tmp_path / "top.tif", image[:, :256, :384], crs="EPSG:32633", transform=TRANSFORM)
    args = [scene, "--checkpoint", checkpoint, "--cog", *INFER]
    ref = tmp_path / "ref"
    ref.mkdir()
    with one_thread():
        assert infer_main([str(a) for a in [*args, "--out", ref / "labels.gpkg"]]) == 0
        # the label raster's size once its first row of blocks is written, and whole (as the partial file grows)
        for name, source in (("first.tif", top), ("whole.tif", scene)):
            assert infer_main([str(a) for a in [source, "--checkpoint", checkpoint, *INFER, "--out", ref / name]]) == 0
    cog, gpkg = (ref / "labels.tif").stat().st_size, (ref / "labels.gpkg").stat().st_size
    first, whole = (ref / "first.tif").stat().st_size, (ref / "whole.tif").stat().st_size
    assert first < whole < cog < gpkg // 3  # what the label content makes of the sizes differs from CPU to CPU

    out = tmp_path / "out"
    out.mkdir()
    args += ["--out", out / "labels.gpkg"]
    stopped = run("infer", args, tmp_path, limit=(first + whole) // 2)  # the disk fills in the label raster
    assert_no_space(stopped, Path("labels.tif"))
    side = out / ".labels.partial.json"
    assert side.exists() and 0 < int(side.read_text().split('"rows": ')[1].rstrip("}")) < 640  # rows committed
    assert (out / ".labels.partial.tif").exists() and not (out / "labels.tif").exists()

    stopped = run("infer", args, tmp_path, limit=cog - 1)  # raster finished; its Cloud-Optimized copy does not fit
    assert_no_space(stopped, Path("labels.tif"))
    assert '"rows": 640' in side.read_text() and not (out / "labels.tif").exists()
    assert not (out / ".labels.cog.tif").exists()

    stopped = run("infer", args, tmp_path, limit=gpkg // 2)  # the COG is written; the polygons do not fit
    assert_no_space(stopped, Path("labels.gpkg"), needs=False)
    assert (out / "labels.tif").exists() and not (out / "labels.gpkg").exists() and leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif"]

    with one_thread():  # space freed: the same command (in this process: no fourth start-up)
        assert infer_main([str(a) for a in args]) == 0
    assert np.array_equal(pixels(out / "labels.tif"), pixels(ref / "labels.tif"))
    with rasterio.open(out / "labels.tif") as src:
        assert src.overviews(1) and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert polygons(out / "labels.gpkg") == polygons(ref / "labels.gpkg")


# --- vectorize.py -------------------------------------------------------------------------------------------------


def test_vectorize_stops_mid_way_and_the_same_command_writes_the_same_polygons(tmp_path: Path) -> None:
    from pipelines.vectorize import main as vectorize_main

    cells = np.random.default_rng(3).integers(0, 6, (32, 32), dtype=np.uint8)
    labels = write_geotiff(
        tmp_path / "labels.tif",
        np.kron(cells, np.ones((16, 16), np.uint8)),
        nodata=255,
        crs="EPSG:32633",
        transform=TRANSFORM,
    )
    assert vectorize_main([str(labels), "--out", str(tmp_path / "ref.gpkg"), "-q"]) == 0
    size = (tmp_path / "ref.gpkg").stat().st_size
    out = tmp_path / "out" / "polygons.gpkg"
    out.parent.mkdir()
    stopped = run("vectorize", [labels, "--out", out, "-q"], tmp_path, limit=size // 2)
    assert_no_space(stopped, out, needs=False)
    assert list(out.parent.iterdir()) == []  # nothing under the final name, no temporary left
    assert run("vectorize", [labels, "--out", out, "-q"], tmp_path).returncode == 0
    assert polygons(out) == polygons(tmp_path / "ref.gpkg")
