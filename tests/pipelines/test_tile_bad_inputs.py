"""Bad inputs to ``pipelines/tile.py``, each run as a user would: a subprocess.

Every case must end with exit code 2, exactly one ``error: ...`` line on stderr, no traceback, and nothing left
behind (no output folder, no temporary file). Labels partly outside their scheme and scenes without a CRS are
one warning line each. Ctrl-C during tiling exits 130 with one line, and the re-run gives the same index.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from affine import Affine

from rs_deeplab.geo.raster import quiet_georeferencing, write_geotiff
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.tiling.index import read_index
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
from tests.badkit import ENV, Args, Run, check_one_line, listing, run_in, run_table
from tests.conftest import DEFAULT_TRANSFORM, UTM33
from tests.daskkit import TILE, tile_command
from tests.trainkit import once_per_run

REPO = Path(__file__).resolve().parents[2]
POTSDAM = SCHEMES["potsdam"]
INTERRUPTED = "interrupted; re-run the same command to resume"


def _geotiff(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    options: dict[str, object] = {"crs": UTM33, "transform": DEFAULT_TRANSFORM, **kwargs}
    return write_geotiff(path, array, **options)  # type: ignore[arg-type]


def _cut(source: Path, dest: Path, fraction: float) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny rasters and vectors every case needs, made once: a good scene and labels, and broken variants."""
    base = tmp_path_factory.mktemp("bad_tile")
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 6, (96, 80)).astype(np.uint8)
    w: dict[str, Path] = {"base": base}
    w["scene"] = _geotiff(base / "scene.tif", rng.integers(0, 255, (3, 96, 80), dtype=np.uint8), compress=None)
    w["label"] = _geotiff(base / "label.tif", POTSDAM.encode_colours(ids), compress=None)
    w["float"] = _geotiff(base / "float.tif", rng.random((96, 80)).astype(np.float32))
    w["nines"] = _geotiff(base / "nines.tif", np.full((96, 80), 9, np.uint8))
    w["odd_colours"] = _geotiff(base / "odd_colours.tif", np.full((3, 96, 80), 77, np.uint8))
    w["two_bands"] = _geotiff(base / "two_bands.tif", np.zeros((2, 96, 80), np.uint8))
    w["other_crs"] = _geotiff(base / "other_crs.tif", POTSDAM.encode_colours(ids), crs="EPSG:32632")
    with quiet_georeferencing():
        w["other_size"] = write_geotiff(base / "other_size.tif", ids[:50, :40], crs=None, transform=Affine.identity())
        w["nocrs"] = write_geotiff(
            base / "nocrs.tif", np.zeros((3, 96, 80), np.uint8), crs=None, transform=Affine.identity()
        )
    w["truncated"] = _cut(w["scene"], base / "truncated.tif", 0.5)
    w["truncated_label"] = _cut(w["label"], base / "truncated_label.tif", 0.5)
    w["junk"] = base / "junk.tif"
    w["junk"].write_bytes(bytes(range(256)) * 8)
    w["junk_vector"] = base / "junk.gpkg"
    w["junk_vector"].write_bytes(bytes(range(256)) * 8)
    w["text"] = base / "notes.tif"
    w["text"].write_text("this is not a raster\n")
    w["notes"] = base / "notes.txt"  # a .txt argument is a list of scenes
    w["notes"].write_text("this is not a raster\n")
    w["afile"] = base / "afile"
    w["afile"].write_text("x")
    w["empty_dataset"] = base / "empty_dataset"
    (w["empty_dataset"] / "2_Ortho_RGB").mkdir(parents=True)
    near = shapely.box(368_000, 5_807_991, 368_004, 5_808_000)
    gpd.GeoDataFrame({"kind": ["building"]}, geometry=[near], crs=UTM33).to_file(base / "near.gpkg")
    gpd.GeoDataFrame({"kind": [1]}, geometry=[shapely.box(0, 0, 10, 10)], crs=UTM33).to_file(base / "far.gpkg")
    w["near"], w["far"] = base / "near.gpkg", base / "far.gpkg"
    return w


def scene(*extra: str) -> Args:
    """The good scene, then ``extra`` with ``{name}`` filled from the world."""
    return lambda w, t: [str(w["scene"]), *(e.format(**{k: str(v) for k, v in w.items()}, tmp=t) for e in extra)]


def odd_out(folder: Path) -> Path:
    """An output folder whose ``images`` is a file."""
    (folder / "odd_out").mkdir()
    (folder / "odd_out" / "images").write_text("x")
    return folder / "odd_out"


def tiled(w: dict[str, Path], folder: Path, manifest: str | None = None) -> str:
    """``folder/out`` holding the good scene's crops (its ``tiling.json`` replaced by ``manifest`` if given)."""
    tile_scenes([w["scene"]], folder / "out", size=32, workers=1, quiet=True)
    if manifest is not None:
        (folder / "out" / "tiling.json").write_text(manifest)
    return str(folder / "out")


def PRESET(w: dict[str, Path]) -> list[str]:  # noqa: N802
    """The empty Potsdam dataset folder as a preset."""
    return [str(w["empty_dataset"]), "--preset", "potsdam"]


# (id, how to build the arguments from (world, case folder), words the error line must hold);
# ``--out`` is the case folder's ``out`` unless the arguments name one
CASES: list[tuple[str, Args, str]] = [
    ("missing-scene", lambda w, t: [str(t / "none.tif")], "file not found"),
    ("text-scene", lambda w, t: [str(w["text"])], "not a raster GDAL can read"),
    ("text-list", lambda w, t: [str(w["notes"])], "notes.txt line 1: this is not a raster does not exist"),
    ("binary-junk-scene", lambda w, t: [str(w["junk"])], "not a raster GDAL can read"),
    ("truncated-scene", lambda w, t: [str(w["truncated"])], "truncated or corrupt"),
    ("truncated-label", scene("--labels", "{truncated_label}", "--scheme", "potsdam"), "truncated_label.tif"),
    ("binary-junk-label", scene("--labels", "{junk}"), "not a raster GDAL can read"),
    ("binary-junk-vector", scene("--labels", "{junk_vector}", "--label-field", "kind"), "not a vector file"),
    ("out-is-a-file", scene("--out", "{afile}"), "is a file"),
    ("out-under-a-file", scene("--out", "{afile}/sub"), "is a file, not a folder"),
    ("out-unwritable", scene("--out", "/proc/rs_deeplab_tiles"), "cannot write in /proc"),
    ("out-images-is-a-file", lambda w, t: [str(w["scene"]), "--out", str(odd_out(t))], "is a file where the crops"),
    ("out-is-the-scene", scene("--out", "{scene}"), "is an input of this run"),
    ("out-is-the-label", scene("--labels", "{label}", "--scheme", "potsdam", "--out", "{label}"), "is an input"),
    ("size-0", scene("--size", "0"), "crop size must be a positive"),
    ("size-negative", scene("--size", "-32"), "crop size must be a positive"),
    ("stride-0", scene("--size", "32", "--stride", "0"), "crop stride must be a positive"),
    ("stride-negative", scene("--size", "32", "--stride", "-8"), "crop stride must be a positive"),
    ("stride-above-size", scene("--size", "32", "--stride", "40"), "larger than the crop size"),
    ("block-0", scene("--size", "32", "--val-fraction", "0.3", "--block", "0"), "--block must be"),
    ("block-negative", scene("--size", "32", "--val-fraction", "0.3", "--block", "-64"), "--block must be"),
    ("workers-0", scene("--workers", "0"), "--workers must be"),
    ("workers-negative", scene("--workers", "-2"), "--workers must be"),
    ("seed-negative", scene("--size", "32", "--val-fraction", "0.3", "--block", "32", "--seed", "-1"), "--seed"),
    ("val-fraction-1", scene("--size", "32", "--val-fraction", "1"), "--val-fraction must be"),
    ("min-valid-negative", scene("--min-valid", "-0.5"), "--min-valid must be"),
    ("label-fill-300", scene("--labels", "{near}", "--label-field", "kind", "--label-fill", "300"), "--label-fill"),
    ("float-label-raster", scene("--labels", "{float}"), "float32 values, not whole class ids"),
    ("vector-labels-far-away", scene("--labels", "{far}", "--label-field", "kind"), "do not overlap the scene"),
    ("ids-outside-the-scheme", scene("--labels", "{nines}", "--scheme", "potsdam"), "all 255 (ignore)"),
    ("colours-outside-the-scheme", scene("--labels", "{odd_colours}", "--scheme", "potsdam"), "all 255 (ignore)"),
    ("wrong-scheme", scene("--labels", "{label}", "--scheme", "loveda"), "--scheme loveda stores class values"),
    ("unknown-scheme", scene("--labels", "{label}", "--scheme", "potsdamm"), "unknown dataset 'potsdamm'"),
    ("colour-labels-no-scheme", scene("--labels", "{label}"), "pass --scheme NAME"),
    ("two-band-labels", scene("--labels", "{two_bands}"), "have 2 bands"),
    ("label-other-crs", scene("--labels", "{other_crs}", "--scheme", "potsdam"), "CRS EPSG:32632 vs EPSG:32633"),
    ("label-other-size-no-georef", scene("--labels", "{other_size}"), "40×50 pixels vs 80×96"),
    ("vector-no-field", scene("--labels", "{near}"), "--label-field NAME"),
    ("unknown-preset-folder", lambda w, t: [str(t / "no_dataset"), "--preset", "potsdam"], "no_dataset"),
    ("out-in-preset-folder", lambda w, t: [*PRESET(w), "--out", str(w["empty_dataset"] / "t")], "inside the dataset"),
    ("empty-preset-folder", lambda w, t: [str(w["empty_dataset"]), "--preset", "potsdam"], "no Potsdam files"),
    ("georeferenced-and-not", lambda w, t: [str(w["scene"]), str(w["nocrs"])], "some scenes are georeferenced"),
    ("labels-count", scene("--labels", "{label}", "{label}"), "got 1 scenes but 2 --labels"),
    (
        "append-no-crs-to-georeferenced",
        lambda w, t: [str(w["nocrs"]), "--size", "32", "--append", "--out", tiled(w, t)],
        "its crops are georeferenced and scene nocrs",
    ),
    (
        "damaged-tiling-json",
        lambda w, t: [str(w["scene"]), "--size", "32", "--out", tiled(w, t, '{"size": 3')],
        "tiling.json: is damaged (not valid JSON",
    ),
    (
        "tiling-json-not-a-record",
        lambda w, t: [str(w["scene"]), "--size", "32", "--append", "--out", tiled(w, t, "[1, 2]")],
        "is damaged (not a tiling record)",
    ),
]


def leftovers(folder: Path) -> list[str]:
    """Temporary files (ours or GDAL's) anywhere under ``folder``."""
    return [str(p) for p in folder.rglob(".*") if ".tmp-" in p.name or "write-check" in p.name]


def run_case(
    world: dict[str, Path], folder: Path, make_args: Args
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``tile.py`` with a case's arguments in ``folder`` (``--out folder/out`` unless the case names one)."""
    args = make_args(world, folder)
    if "--out" not in args:
        args += ["--out", str(folder / "out")]
    return run_in(folder, [*TILE, *args])


Runs = dict[str, Run]


@pytest.fixture(scope="module")
def tile_runs(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Every case of :data:`CASES`, 3 subprocesses at a time, once per test run; nothing may appear beside the
    inputs either."""

    def table() -> Runs:
        world_files = sorted(p.name for p in world["base"].iterdir())
        runs = run_table(CASES, functools.partial(run_case, world), world["base"] / "cases", workers=3, server=True)
        assert sorted(p.name for p in world["base"].iterdir()) == sorted([*world_files, "cases"])
        assert world["afile"].read_text() == "x"
        return runs

    return once_per_run(tmp_path_factory, "tile_bad_inputs", table)


def test_the_table_is_large_and_its_names_distinct() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, words", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_tile_bad_input_is_one_line_and_leaves_nothing(tile_runs: Runs, name: str, words: str) -> None:
    proc, before, folder = tile_runs[name]
    line = check_one_line(proc)
    assert words in line, line
    assert listing(folder) == before  # no out/ folder
    assert leftovers(folder) == [] and leftovers(folder.parents[1]) == []
    assert proc.stdout == ""


def test_scene_without_crs_is_one_warning_line(world: dict[str, Path], tmp_path: Path) -> None:
    proc = subprocess.run(
        [*TILE, str(world["nocrs"]), "--size", "32", "--out", str(tmp_path / "out"), "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = check_one_line(proc, code=0, start="1 of 1 scenes have no CRS (nocrs.tif)")
    assert "pixel coordinates" in line
    assert len(read_index(tmp_path / "out" / "index.gpkg")[0]) == 5 * 4


def test_labels_partly_outside_the_scheme_are_one_warning_line_with_counts(
    world: dict[str, Path], tmp_path: Path
) -> None:
    colours = POTSDAM.encode_colours(np.zeros((96, 80), np.uint8))
    colours[:, :, :20] = (np.array([77, 10, 200], np.uint8))[:, None, None]  # a colour the scheme does not know
    colours[:, :8, 20:] = 0  # black boundary pixels: ignore by design, not counted
    label = _geotiff(tmp_path / "odd.tif", colours)
    out = tmp_path / "out"
    args = [str(world["scene"]), "--labels", str(label), "--scheme", "potsdam", "--size", "32", "--out", str(out)]
    proc = subprocess.run([*TILE, *args, "--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
    line = check_one_line(proc, code=0, start=f"{label}: ")
    assert line.endswith("1,920 label pixels (25.0%) have values outside the potsdam scheme; they are ignored (255)")
    tiles, _ = read_index(out / "index.gpkg")
    assert tiles["n_ignore"].sum() > 0 and tiles["n_impervious_surface"].sum() > 0


def test_damage_found_mid_run_on_dask_workers_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A deflate strip in the middle of the scene is garbage: the first and last pixels read, that band fails."""
    import rasterio

    path = tmp_path / "damaged.tif"
    data = np.random.default_rng(3).integers(0, 255, (3, 400, 300), dtype=np.uint8)
    profile = {
        "driver": "GTiff",
        "width": 300,
        "height": 400,
        "count": 3,
        "dtype": "uint8",
        "crs": UTM33,
        "transform": DEFAULT_TRANSFORM,
        "compress": "deflate",
        "blockysize": 8,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    damaged = bytearray(path.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 2000] = bytes(range(200)) * 10
    path.write_bytes(bytes(damaged))
    out = tmp_path / "out"
    proc = subprocess.run(
        [*TILE, str(path), "--size", "32", "--out", str(out), "--workers", "2"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = check_one_line(proc)
    assert f"{path}: cannot be read" in line and "truncated or corrupt" in line, line
    assert not (out / "index.gpkg").exists() and leftovers(out) == []


# --- Ctrl-C -------------------------------------------------------------------------------------------------------


BIG = 608
"""The side of :func:`big_scene`: rows of 37 crops of 32 px every 16 px."""


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneSpec:
    """A scene whose tiling at 32/16 takes a few seconds (1,369 crops), and its colour labels."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(9)
    ids = np.repeat(np.repeat(rng.integers(0, 6, (BIG // 16, BIG // 16)).astype(np.uint8), 16, 0), 16, 1)
    image = _geotiff(folder / "big.tif", rng.integers(0, 255, (4, BIG, BIG), dtype=np.uint8), compress=None)
    label = _geotiff(folder / "big_label.tif", POTSDAM.encode_colours(ids), compress=None)
    return SceneSpec(image, label)


@pytest.fixture(scope="module")
def big_reference(big_scene: SceneSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index of an uninterrupted run."""
    out = tmp_path_factory.mktemp("big_reference") / "tiles"
    tile_scenes([big_scene], out, size=32, stride=16, scheme="potsdam", workers=1, quiet=True)
    return out / "index.gpkg"


def same_index(a: Path, b: Path) -> None:
    tiles_a, classes_a = read_index(a)
    tiles_b, classes_b = read_index(b)
    pd.testing.assert_frame_equal(
        pd.DataFrame(tiles_a.drop(columns="geometry")), pd.DataFrame(tiles_b.drop(columns="geometry"))
    )
    pd.testing.assert_frame_equal(classes_a, classes_b)
    assert [shapely.to_wkb(g) for g in tiles_a.geometry] == [shapely.to_wkb(g) for g in tiles_b.geometry]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["2", "1"], ids=["local-dask-cluster", "in-process"])
def test_ctrl_c_during_tiling_is_one_line_130_and_the_rerun_gives_the_same_index(
    big_scene: SceneSpec, big_reference: Path, tmp_path: Path, workers: str
) -> None:
    out = tmp_path / "tiles"
    cmd = tile_command(big_scene, out, "--workers", workers)
    # its own process group, as a terminal's: Ctrl-C reaches the tiler and every worker process it started
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    parts = out / ".parts" / "big"
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if parts.is_dir() and list(parts.glob("*.json")):
                break  # evidence the work started: a row of crops is finished (what a re-run resumes)
            time.sleep(0.02)
        assert proc.poll() is None, "tiling ended before it could be interrupted; make the scene larger"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip() == INTERRUPTED, err
    assert not (out / "index.gpkg").exists()
    assert leftovers(out) == []  # finished crops and row records only
    done = len(os.listdir(out / "images"))
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr and " 0 already done" not in rerun.stderr, rerun.stderr
    assert done >= (BIG - 32) // 16 + 1  # a row of crops at least
    same_index(big_reference, out / "index.gpkg")
