"""Bad inputs to ``pipelines/vectorize.py`` and ``pipelines/evaluate.py`` (scene mode), each run as a subprocess.

Every case must end with exit code 2, exactly one ``error: ...`` line on stderr, no traceback, and nothing left
behind: no output, no temporary file, no report folder.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from rs_deeplab.geo.raster import write_geotiff
from tests.badkit import ENV, Args, Run, check_one_line, listing, run_in, run_table
from tests.pipelines.test_infer_bad_inputs import corrupt_middle_block, snapshot, truncated
from tests.trainkit import REPO, blob_scene, once_per_run

VECTORIZE = [sys.executable, str(REPO / "pipelines" / "vectorize.py")]
EVALUATE = [sys.executable, str(REPO / "pipelines" / "evaluate.py")]
TRANSFORM = Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
NAMES = "impervious_surface,building,low_vegetation,tree,car,clutter"


def labels(path: Path, classes: np.ndarray, crs: str = "EPSG:32633", transform: Affine = TRANSFORM) -> Path:
    """A class raster (255 = nodata), deflate-compressed."""
    return write_geotiff(path, classes, crs=crs, transform=transform, nodata=255)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Label rasters (good, tall, all-255, another CRS, ...), broken variants and files of the wrong kind."""
    base = tmp_path_factory.mktemp("bad_vector_eval")
    inputs = base / "inputs"
    inputs.mkdir()
    _, classes = blob_scene(3, 96)
    _, other = blob_scene(4, 96)
    w = {"base": base, "inputs": inputs}
    w["lab"] = labels(inputs / "lab.tif", classes)
    w["truth"] = labels(inputs / "truth.tif", other)
    w["ignore"] = labels(inputs / "ignore.tif", np.full_like(classes, 255))
    w["small"] = labels(inputs / "small.tif", classes[:50, :70])
    w["geographic"] = labels(inputs / "geographic.tif", classes, "EPSG:4326", Affine(1e-6, 0, 13.4, 0, -1e-6, 52.5))
    w["shifted"] = labels(inputs / "shifted.tif", classes, transform=TRANSFORM * Affine.translation(3, 0))
    w["outside"] = labels(inputs / "outside.tif", np.where(classes == 2, 9, classes).astype(np.uint8))
    w["float"] = write_geotiff(inputs / "float.tif", classes.astype(np.float32), crs="EPSG:32633", transform=TRANSFORM)
    w["rgb"] = write_geotiff(inputs / "rgb.tif", np.stack([classes] * 3), crs="EPSG:32633", transform=TRANSFORM)
    tall = labels(base / "tall.tif", np.tile(classes, (8, 1)))
    w["truncated"] = truncated(tall, inputs / "truncated.tif", 0.6)
    w["corrupt"] = corrupt_middle_block(tall, inputs / "corrupt.tif")
    w["tall_truth"] = labels(inputs / "tall_truth.tif", np.tile(other, (8, 1)))
    w["junk"] = inputs / "junk.tif"
    w["junk"].write_bytes(bytes(range(256)) * 8)
    w["text"] = inputs / "notes.tif"
    w["text"].write_text("this is not a raster\n")
    w["junk_gpkg"] = inputs / "junk.gpkg"
    w["junk_gpkg"].write_bytes(bytes(range(256)) * 8)
    w["afile"] = inputs / "afile"
    w["afile"].write_text("x")
    w["folder"] = inputs / "a_folder.gpkg"
    w["folder"].mkdir()
    return w


def vec(key: str, out: str = "out.gpkg", *extra: str) -> Args:
    """``vectorize.py world[key] --out <case folder>/out`` plus ``extra``."""
    return lambda w, t: [*VECTORIZE, str(w[key]), "--out", str(t / out), *extra]


def vec_to(key: str, out: str, *extra: str) -> Args:
    """``vectorize.py lab.tif --out world[key]/out`` (an output path made from a world file)."""
    return lambda w, t: [*VECTORIZE, str(w["lab"]), "--out", str(w[key]) + out, *extra]


def ev(pred: str, truth: str, *extra: str, out: str | None = "reports") -> Args:
    """``evaluate.py --pred world[pred] --truth world[truth] --class-names ... --out <case folder>/out``."""

    def make(w: dict[str, Path], t: Path) -> list[str]:
        where = [] if out is None else ["--out", out.format(**{k: str(v) for k, v in w.items()}, t=t)]
        return [*EVALUATE, "--pred", str(w[pred]), "--truth", str(w[truth]), "--class-names", NAMES, *where, *extra]

    return make


# (id, arguments from (world, case folder), words the error line must hold)
CASES: list[tuple[str, Args, str]] = [
    ("vec-truncated", vec("truncated"), "is truncated"),
    ("vec-corrupt-block-mid-run", vec("corrupt"), "cannot be read at rows"),
    ("vec-junk", vec("junk"), "not a raster GDAL can read"),
    ("vec-text", vec("text"), "not a raster GDAL can read"),
    ("vec-missing", lambda w, t: [*VECTORIZE, str(t / "none.tif"), "--out", str(t / "o.gpkg")], "file not found"),
    ("vec-multiband", vec("rgb"), "expected a single-band class-label raster"),
    ("vec-float", vec("float"), "expected integer class labels"),
    ("vec-out-is-folder", vec_to("folder", ""), "is a folder where a file"),
    ("vec-out-under-file", vec_to("afile", "/out.gpkg"), "is a file, not a folder"),
    ("vec-out-unwritable", lambda w, t: [*VECTORIZE, str(w["lab"]), "--out", "/proc/rs_deeplab.gpkg"], "cannot write"),
    ("vec-out-folder-missing", vec("lab", "none/out.gpkg"), "does not exist; create it first"),
    ("vec-out-existing-junk", vec_to("junk_gpkg", ""), "is not a GPKG"),
    ("vec-out-is-the-input", vec_to("lab", ""), "cannot write '.tif'"),
    ("vec-append-to-junk", vec_to("junk_gpkg", "", "--append"), "cannot append, not a GeoPackage"),
    ("vec-block-size-0", vec("lab", "out.gpkg", "--block-size", "0"), "--block-size 0"),
    ("vec-block-size-negative", vec("lab", "out.gpkg", "--block-size", "-256"), "--block-size -256"),
    ("vec-min-area-negative", vec("lab", "out.gpkg", "--min-area", "-1"), "--min-area -1"),
    ("vec-simplify-negative", vec("lab", "out.gpkg", "--simplify", "-1"), "--simplify -1"),
    ("vec-fill-holes-negative", vec("lab", "out.gpkg", "--fill-holes", "-2"), "--fill-holes -2"),
    ("vec-unknown-class", vec("lab", "out.gpkg", "--classes", "nope", "--class-names", NAMES), "nope"),
    ("vec-bad-crs", vec("lab", "out.gpkg", "--to-crs", "EPSG:0"), "cannot understand CRS"),
    ("eval-truth-all-255", ev("lab", "ignore"), "no pixel to score"),
    ("eval-pred-all-255", ev("ignore", "truth"), "no pixel to score"),
    ("eval-sizes-differ", ev("lab", "small"), "both must cover the same scene grid"),
    ("eval-crs-differs", ev("lab", "geographic"), "different grids (CRS"),
    ("eval-transform-differs", ev("lab", "shifted"), "different grids (geotransform"),
    ("eval-truncated-pred", ev("truncated", "tall_truth"), "is truncated"),
    ("eval-corrupt-block-mid-run", ev("corrupt", "tall_truth"), "cannot be read at rows"),
    ("eval-junk-pred", ev("junk", "truth"), "not a raster GDAL can read"),
    ("eval-text-truth", ev("lab", "text"), "not a raster GDAL can read"),
    ("eval-multiband-pred", ev("rgb", "truth"), "expected one band of integer class ids"),
    ("eval-values-outside-classes", ev("outside", "truth"), "holds class value(s) [9]"),
    ("eval-out-is-file", ev("lab", "truth", out="{afile}"), "is a file where a folder is expected"),
    ("eval-out-under-file", ev("lab", "truth", out="{afile}/reports"), "is a file, not a folder"),
    ("eval-out-is-the-pred", ev("lab", "truth", out="{lab}"), "is a file where a folder is expected"),
    ("eval-out-unwritable", ev("lab", "truth", out="/proc/rs_deeplab_reports"), "cannot write"),
    ("eval-block-size-0", ev("lab", "truth", "--block-size", "0"), "--block-size 0"),
    ("eval-block-size-negative", ev("lab", "truth", "--block-size", "-5"), "--block-size -5"),
    (
        "eval-count-mismatch",
        lambda w, t: [
            *EVALUATE,
            "--pred",
            str(w["lab"]),
            str(w["lab"]),
            "--truth",
            str(w["truth"]),
            "--out",
            str(t / "r"),
        ],
        "one --truth per --pred",
    ),
]


def run_case(w: dict[str, Path], folder: Path, make_args: Args) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a case's command line in ``folder``."""
    return run_in(folder, make_args(w, folder))


@pytest.fixture(scope="module")
def runs(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every case of :data:`CASES`, two subprocesses at a time, once per test run; the inputs' folder must come out
    unchanged."""

    def table() -> dict[str, Run]:
        inputs_before = snapshot(world["inputs"])
        result = run_table(CASES, functools.partial(run_case, world), world["base"] / "cases", workers=2, server=True)
        assert snapshot(world["inputs"]) == inputs_before  # no output, temporary file or report beside the inputs
        return result

    return once_per_run(tmp_path_factory, "vectorize_evaluate_bad_inputs", table)


def test_there_are_many_cases() -> None:
    assert len({name for name, _, _ in CASES}) == len(CASES) >= 30


@pytest.mark.slow
@pytest.mark.parametrize("name, words", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(runs: dict[str, Run], name: str, words: str) -> None:
    proc, before, folder = runs[name]
    line = check_one_line(proc)
    assert words in line, line
    assert listing(folder) == before  # no output, .tmp, reports


def test_the_good_inputs_work(world: dict[str, Path], tmp_path: Path) -> None:
    """The cases' good rasters are fine: each failure above comes from the one thing a case breaks."""
    vec = subprocess.run(
        [*VECTORIZE, str(world["lab"]), "--out", str(tmp_path / "ok.gpkg")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert vec.returncode == 0, vec.stderr
    print({k: v[0].stderr.strip() for k, v in runs.items()}) if False else None
    ev = subprocess.run(
        [
            *EVALUATE,
            "--pred",
            str(world["lab"]),
            "--truth",
            str(world["truth"]),
            "--class-names",
            NAMES,
            "--out",
            str(tmp_path / "reports"),
            "-q",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["scene_scores.json", "scene_scores.md"]


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_a_raster_without_crs_is_one_info_line_and_no_foreign_warning(tmp_path: Path, suffix: str) -> None:
    """pyogrio warns that no CRS was given; the user is told once, in this project's own words."""
    _, classes = blob_scene(3, 96)
    nocrs = write_geotiff(tmp_path / "nocrs.tif", classes, nodata=255)
    proc = subprocess.run(
        [*VECTORIZE, str(nocrs), "--out", str(tmp_path / f"out{suffix}")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = check_one_line(proc, code=0, start="the raster has no CRS")
    assert "pixel-grid units" in line and "UserWarning" not in proc.stderr
    assert (tmp_path / f"out{suffix}").stat().st_size > 0
