"""``pipelines/infer.py`` with a trained checkpoint: defaults, GeoPackage output, COG, TTA, resume, Dask, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from pipelines.infer import main
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.predicting.scene import predict_scene
from rs_deeplab.inference.runtimes.trained import TrainedModel
from rs_deeplab.inference.writing.writer import sidecar_path
from rs_deeplab.vectorize import read_class_names
from tests import trainkit
from tests.conftest import reprojected
from tests.daskkit import ROOT, subprocess_env
from tests.trainkit import blob_scene

trained = trainkit.trained  # the module-scoped tiny checkpoint (a fixture)

TRANSFORM = rasterio.Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
INFER = [sys.executable, str(ROOT / "pipelines" / "infer.py")]


@pytest.fixture
def workspace(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding ``runs/tiny/best.pt``, as after the quick start."""
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    shutil.copy(trained, tmp_path / "runs" / "tiny" / "best.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def scene(path: Path, height: int, width: int, seed: int, bands: int = 4) -> Path:
    path = path.parent / "scenes" / path.name
    path.parent.mkdir(exist_ok=True)
    image, _ = blob_scene(seed, max(height, width))
    return write_geotiff(path, image[:bands, :height, :width], crs="EPSG:32633", transform=TRANSFORM)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name or ".tmp" in p.name)


@pytest.mark.slow
def test_defaults_after_training_write_raster_and_polygons(
    workspace: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", "labels.gpkg"]) == 0  # in this process: the same code as the script, no start-up
    stdout = capsys.readouterr().out
    assert "labels.tif" in stdout and "labels.gpkg" in stdout
    with rasterio.open(workspace / "labels.tif") as out, rasterio.open(trained.parents[2] / "val.tif") as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        labels = out.read(1)
        assert read_class_names(out) == ["impervious_surface", "building", "low_vegetation", "tree", "car", "clutter"]
        assert out.colormap(1)[1][:3] == (0, 0, 255)  # ISPRS building blue
    polygons = gpd.read_file(workspace / "labels.gpkg", layer="labels")
    assert set(polygons["scene"]) == {"val"} and len(polygons) > 0
    assert set(polygons["class_id"]) == set(np.unique(labels)) - {255}
    assert polygons.crs == "EPSG:32633"
    assert leftovers(workspace) == []


def test_several_scenes_into_one_geopackage_and_raster_only(workspace: Path, tmp_path: Path) -> None:
    a, b = scene(tmp_path / "north.tif", 96, 130, 5), scene(tmp_path / "south.tif", 70, 90, 6)
    assert main([str(a), str(b), "--out", "out.gpkg", "--probs", "--cog", "--separate"]) == 0  # one place, two maps
    assert not (workspace / "out.vrt").exists()
    polygons = gpd.read_file(workspace / "out.gpkg", layer="labels")
    assert set(polygons["scene"]) == {"north", "south"}
    for name, shape in (("north", (96, 130)), ("south", (70, 90))):
        with rasterio.open(workspace / f"out_{name}.tif") as ds:
            assert ds.shape == shape and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert read_class_names(ds) is not None and ds.colormap(1)[0][:3] == (255, 255, 255)
            labels = ds.read(1)
        with rasterio.open(workspace / f"out_{name}_probs.tif") as ds:
            probs = ds.read()
            assert ds.count == 6 and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        top2 = np.sort(probs.astype(int), axis=0)[-2:]
        clear = top2[1] - top2[0] > 2  # uint8 rounding may flip near-ties of an barely trained model
        assert clear.mean() > 0.3 and (probs.argmax(0) == labels)[clear].all()
        assert (np.abs(probs.astype(int).sum(0) - 255) <= 6).all()
    assert main([str(a), "--out", "only.tif"]) == 0
    assert (workspace / "only.tif").exists() and not (workspace / "only.gpkg").exists()


def test_scenes_with_equal_file_names_get_distinct_stable_names(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _ = blob_scene(7, 90)
    paths = []
    for folder, rows in (("city/north", slice(0, 64)), ("city/south", slice(20, 84)), ("other", slice(10, 74))):
        (tmp_path / folder).mkdir(parents=True)
        name = "other.tif" if folder == "other" else "tile.tif"
        paths.append(
            write_geotiff(tmp_path / folder / name, image[:4, rows, :80], crs="EPSG:32633", transform=TRANSFORM)
        )
    assert main([*map(str, paths), "--out", "region.gpkg", "-q", "--separate"]) == 0
    names = ["north_tile", "south_tile", "other"]
    assert set(gpd.read_file(workspace / "region.gpkg", layer="labels")["scene"]) == set(names)
    for path, name in zip(paths, names, strict=True):  # each the same as the scene run alone
        assert main([str(path), "--out", f"alone_{name}.tif", "-q"]) == 0
        with rasterio.open(workspace / f"region_{name}.tif") as x, rasterio.open(workspace / f"alone_{name}.tif") as y:
            np.testing.assert_array_equal(x.read(), y.read())
    capsys.readouterr()
    again = tmp_path / "city" / ".." / "city" / "north" / "tile.tif"
    assert main([str(paths[0]), str(again), "--out", "twice.tif"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tile.tif is listed twice" in err, err
    assert not list(workspace.glob("twice*"))


def tiles(folder: Path, windows: list[tuple[int, int, int, int]], seed: int = 11, size: int = 192) -> list[Path]:
    """Tiles cut from one 4-band ``size`` × ``size`` scene at the given ``(row0, row1, col0, col1)`` windows, in
    folders of their own, all named ``tile.tif`` (as an orthophoto's tiles often are)."""
    image, _ = blob_scene(seed, size)
    out = []
    for i, (r0, r1, c0, c1) in enumerate(windows):
        (folder / f"block_{i}").mkdir(parents=True, exist_ok=True)
        out.append(
            write_geotiff(
                folder / f"block_{i}" / "tile.tif",
                image[:, r0:r1, c0:c1],
                crs="EPSG:32633",
                transform=TRANSFORM @ rasterio.Affine.translation(c0, r0),
            )
        )
    return out


@pytest.mark.slow
def test_overlapping_tiles_become_one_mosaic_polygons_and_catalog(workspace: Path, tmp_path: Path) -> None:
    import pystac

    from rs_deeplab.geo.ownership import ownership

    windows = [(0, 100, 0, 110), (0, 100, 80, 190), (70, 190, 0, 110), (70, 190, 80, 190)]  # 30-px overlaps
    paths = tiles(tmp_path / "ortho", windows)
    (tmp_path / "list.txt").write_text("".join(f"ortho/block_{i}/tile.tif\n" for i in range(4)))
    assert main([f"@{tmp_path / 'list.txt'}", "--out", "city.gpkg", "--cog", "--stac", "--probs", "-q"]) == 0
    names = [f"block_{i}_tile" for i in range(4)]
    with rasterio.open(workspace / "city.vrt") as vrt, rasterio.open(workspace / "city.tif") as cog:
        assert vrt.shape == (190, 190) and vrt.transform == TRANSFORM and vrt.crs.to_epsg() == 32633
        assert read_class_names(vrt) is not None and vrt.colormap(1)[0][:3] == (255, 255, 255)
        mosaic = vrt.read(1)
        np.testing.assert_array_equal(cog.read(1), mosaic)
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    for name, rects in zip(names, ownership(windows), strict=True):  # each pixel from the tile farthest inside
        labels = rasterio.open(workspace / f"city_{name}.tif").read(1)
        r0, _, c0, _ = windows[names.index(name)]
        for a, b, c, d in rects:
            np.testing.assert_array_equal(mosaic[a:b, c:d], labels[a - r0 : b - r0, c - c0 : d - c0])
    polygons = gpd.read_file(workspace / "city.gpkg", layer="labels")
    assert polygons.crs.to_epsg() == 32633
    assert np.isclose(polygons.area_m2.sum(), (mosaic != 255).sum() * 0.01)  # every pixel once, none twice
    assert set(polygons.scene.str.split(",").explode()) == set(names) and polygons.scene.str.contains(",").any()
    collection = pystac.Collection.from_file(str(workspace / "city.stac" / "collection.json"))
    items = list(collection.get_items())
    assert sorted(i.id for i in items) == names
    assert {"mosaic_vrt", "mosaic_tif", "polygons"} <= set(collection.assets)
    for item in items:
        assert rasterio.open(item.assets["labels"].get_absolute_href()).count == 1
    with rasterio.open(workspace / "city_probs.vrt") as probs:
        assert probs.count == 6 and probs.shape == (190, 190)
    del paths


@pytest.mark.slow
def test_two_crs_region_and_a_killed_job_resumed(workspace: Path, tmp_path: Path) -> None:
    a, b = tiles(tmp_path / "t", [(0, 120, 0, 100), (0, 120, 90, 190)])
    east = reprojected(b, "EPSG:32632")  # the east tile delivered in UTM zone 32 (another CRS)
    assert main([str(a), str(east), "--out", "two.gpkg", "--to-crs", "EPSG:3857", "-q"]) == 0
    with rasterio.open(workspace / "two.vrt") as vrt:
        assert vrt.crs.to_epsg() == 3857 and (vrt.read(1) != 255).mean() > 0.8
    assert gpd.read_file(workspace / "two.gpkg").crs.to_epsg() == 3857
    assert (workspace / "two_warped").is_dir()
    # a job killed mid-way through its second scene resumes: the first scene is not computed again, the second
    # resumes at its last committed row, and the outputs are those of an undisturbed run
    big = tiles(tmp_path / "k", [(0, 192, 0, 100), (0, 1024, 90, 192)], seed=12, size=1024)
    cmd = [*INFER, *map(str, big), "--out", "killed.gpkg", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, cwd=workspace, env=subprocess_env(), start_new_session=True, stderr=subprocess.DEVNULL)
    first, second = workspace / "killed_block_0_tile.tif", workspace / "killed_block_1_tile.tif"
    side = sidecar_path(second)
    rows = 0
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and rows < 256:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):  # not there yet, or being replaced
                rows = json.loads(side.read_text())["rows"]
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed; make the second scene taller"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 256 <= rows < 1024 and first.exists() and not second.exists()
    assert not (workspace / "killed.gpkg").exists()
    rerun = subprocess.run(
        [*cmd, "--verbose"], cwd=workspace, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "killed_block_0_tile.tif: already complete" in rerun.stderr
    resumed = re.search(r"killed_block_1_tile\.tif: resuming at row (\d+) of 1024", rerun.stderr)
    assert resumed and int(resumed[1]) >= rows, rerun.stderr  # (rows committed after the last look count too)
    assert main([*map(str, big), "--out", "fresh.gpkg", "--batch-size", "1", "-q"]) == 0
    for name in ("", "_block_0_tile", "_block_1_tile"):
        ext = ".vrt" if not name else ".tif"
        with rasterio.open(workspace / f"killed{name}{ext}") as x, rasterio.open(workspace / f"fresh{name}{ext}") as y:
            np.testing.assert_array_equal(x.read(), y.read())
    assert len(gpd.read_file(workspace / "killed.gpkg")) == len(gpd.read_file(workspace / "fresh.gpkg"))
    assert leftovers(workspace) == []


def test_region_bad_input_is_one_line_exit_2_and_leaves_nothing(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tiles(tmp_path / "t", [(0, 64, 0, 64), (0, 64, 64, 128)])
    wide = write_geotiff(
        tmp_path / "wide.tif", (np.ones((4, 32, 32)) * 300).astype(np.uint16), crs="EPSG:32633", transform=TRANSFORM
    )
    (workspace / "file").write_text("a file")
    (tmp_path / "missing.txt").write_text("t/block_0/tile.tif\nt/block_9/tile.tif\n")
    cases = [
        ([str(a), str(wide), "--out", "x.gpkg"], "has 4 band(s) of uint16 but"),
        ([str(tmp_path / "t" / "*.tif"), "--out", "x.gpkg"], "no file matches"),
        ([f"@{tmp_path / 'missing.txt'}", "--out", "x.gpkg"], "missing.txt line 2: t/block_9/tile.tif does not exist"),
        ([str(a), str(b), "--out", "x.gpkg", "--to-crs", "EPSG:99999"], "--to-crs EPSG:99999: not a coordinate"),
        ([str(a), str(b), "--out", "x.gpkg", "--res", "0"], "--res 0"),
        ([str(a), str(b), "--out", "x.gpkg", "--res", "-1"], "--res -1"),
        ([str(a), "--out", "x.gpkg", "--res", "1"], "--res sets the mosaic's pixel size"),
        ([str(a), str(b), "--out", "file/x.gpkg"], "is a file"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))  # a region too big
    capsys.readouterr()
    assert main([str(a), str(b), "--out", "x.gpkg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not enough free space for the label rasters of 2 scenes" in err, err
    assert not list(workspace.glob("x*")) and leftovers(workspace) == []


@pytest.mark.slow
def test_tta_and_output_stride_override(workspace: Path, tmp_path: Path) -> None:
    a = scene(tmp_path / "a.tif", 64, 90, 7)
    assert main([str(a), "--out", "plain.tif", "--size", "64", "--stride", "32"]) == 0
    assert main([str(a), "--out", "tta.tif", "--tta", "--scales", "0.75,1.25"]) == 0
    assert main([str(a), "--out", "os8.tif", "--output-stride", "8"]) == 0
    rasters = {}
    for name in ("plain", "tta", "os8"):
        with rasterio.open(workspace / f"{name}.tif") as ds:
            rasters[name] = ds.read(1)
    assert not np.array_equal(rasters["plain"], rasters["tta"])  # the augmented passes changed something
    assert not np.array_equal(rasters["plain"], rasters["os8"])
    model = TrainedModel(workspace / "runs" / "tiny" / "best.pt", 8).load(torch.device("cpu")).module
    dilations = [m.dilation for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (4, 4) in dilations  # layer4 re-dilated for output stride 8


@pytest.mark.slow
def test_config_infer_output_stride_is_the_default(workspace: Path, tmp_path: Path) -> None:
    # a config trained at output stride 16 that says infer.output_stride: 8 (configs/own/potsdam_rgbir_r50.yaml)
    a = scene(tmp_path / "a.tif", 64, 90, 7)
    assert main([str(a), "--out", "os8.tif", "--output-stride", "8"]) == 0
    assert main([str(a), "--out", "os16.tif"]) == 0
    best = workspace / "runs" / "tiny" / "best.pt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    assert state["config"]["model"]["output_stride"] == 16
    state["config"]["infer"]["output_stride"] = 8
    torch.save(state, best)
    assert main([str(a), "--out", "recorded.tif"]) == 0
    assert main([str(a), "--out", "forced16.tif", "--output-stride", "16"]) == 0  # the option still wins
    rasters = {}
    for name in ("os8", "os16", "recorded", "forced16"):
        with rasterio.open(workspace / f"{name}.tif") as ds:
            rasters[name] = ds.read(1)
    assert not np.array_equal(rasters["os8"], rasters["os16"])
    assert np.array_equal(rasters["recorded"], rasters["os8"])
    assert np.array_equal(rasters["forced16"], rasters["os16"])


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = scene(tmp_path / "a.tif", 80, 80, 8)
    three = scene(tmp_path / "rgb.tif", 80, 80, 8, bands=3)
    (tmp_path / "text.tif").write_text("not a raster")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x04garbage")
    cases = [
        ([str(three), "--out", "x.gpkg"], "has 3 bands but the model was trained on 4"),
        ([str(a), "--out", "x.gpkg", "--checkpoint", "missing.pt"], "checkpoint not found"),
        ([str(a), "--out", "x.gpkg", "--checkpoint", str(tmp_path / "broken.pt")], "not a readable checkpoint"),
        ([str(tmp_path / "text.tif"), "--out", "x.gpkg"], "not a raster GDAL can read"),
        ([str(a), "--out", "nowhere/x.gpkg"], "does not exist; create it first"),
        ([str(a), "--out", "x.png"], "use a .gpkg"),
        ([str(a), "--out", "x.tif", "--output-stride", "32"], "supports output_stride 8, 16; got 32"),
        ([str(a), "--out", "x.tif", "--scales", "1,a"], "comma-separated numbers"),
        ([str(a), "--out", str(a)], "is an input of this run and would be overwritten"),
    ]
    if not torch.cuda.is_available():  # checked before any scene is read: the option and the fix
        cases += [
            ([str(a), "--out", "x.tif", "--device", "cuda"], "--device=cuda but no CUDA GPU is visible"),
            ([str(a), "--out", "x.tif", "--device", "cuda:7"], "use --device=cpu"),
        ]
    cases.append(([str(a), "--out", "x.tif", "--device", "tpu"], "--device=tpu: unknown device"))
    for args, message in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    assert not list(workspace.glob("x*")) and leftovers(workspace) == []
    with pytest.raises(SystemExit) as exit_info:
        main([str(a), "--out", "x.tif", "--amp", "fp8"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--amp: invalid choice: 'fp8'" in err
    os.remove(workspace / "runs" / "tiny" / "best.pt")
    assert main(["--out", "x.gpkg"]) == 2
    assert capsys.readouterr().err.startswith("error: no checkpoint found under runs/*/best.pt")


@pytest.mark.slow
def test_dask_workers_write_the_same_raster(workspace: Path, tmp_path: Path, dask_address: str) -> None:
    a = scene(tmp_path / "a.tif", 384, 100, 10)  # two Dask tasks of 256 rows
    assert main([str(a), "--out", "local.tif", "--probs"]) == 0
    assert main([str(a), "--out", "dask.tif", "--probs", "--scheduler", dask_address]) == 0
    assert main([str(a), "--out", "local_crf.tif", "--probs", "--crf", "--crf-bilateral", "40,5,4"]) == 0
    assert (
        main(
            [
                str(a),
                "--out",
                "dask_crf.tif",
                "--probs",
                "--crf",
                "--crf-bilateral",
                "40,5,4",
                "--scheduler",
                dask_address,
            ]
        )
        == 0
    )
    # a worker runs torch with its own thread count (1 here, 2 locally): float sums may differ in the last bit,
    # which can move a probability across a rounding edge of the uint8 scale (never more), or flip an exact tie;
    # the CRF's mean field carries such a difference on to its own marginals, so a refined label may differ only
    # where the refined probabilities (written by --probs) tie
    for name in ("", "_crf"):
        with (
            rasterio.open(workspace / f"local{name}_probs.tif") as x,
            rasterio.open(workspace / f"dask{name}_probs.tif") as y,
        ):
            px, py = x.read().astype(int), y.read().astype(int)
        assert np.abs(px - py).max() <= 1 and (px == py).mean() > 0.999, name
        top2 = np.sort(px, axis=0)[-2:]
        with rasterio.open(workspace / f"local{name}.tif") as x, rasterio.open(workspace / f"dask{name}.tif") as y:
            lx, ly = x.read(1), y.read(1)
        differ = lx != ly
        assert differ.mean() < 0.001 and (top2[1] - top2[0] <= 2)[differ].all(), name
    with rasterio.open(workspace / "local.tif") as x, rasterio.open(workspace / "local_crf.tif") as y:
        assert not np.array_equal(x.read(), y.read())  # the CRF did refine
    # any module, scattered to the workers: the same as the local run too
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    kwargs = {"size": 64, "stride": 40, "batch_size": 3, "mean": [100.0] * 4, "std": [50.0] * 4}
    predict_scene(model, a, tmp_path / "m_local.tif", **kwargs)  # type: ignore[arg-type]
    predict_scene(model, a, tmp_path / "m_dask.tif", scheduler=dask_address, **kwargs)  # type: ignore[arg-type]
    with rasterio.open(tmp_path / "m_local.tif") as x, rasterio.open(tmp_path / "m_dask.tif") as y:
        np.testing.assert_array_equal(x.read(), y.read())


def test_workers_polygonize_the_labels_in_processes_with_the_rows_of_one(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--workers 2``: the polygons of a raster wider than one vectorizing block come from two worker processes,
    and their rows are those of one process vectorizing the same labels."""
    import rs_deeplab.vectorize as vectorize_module

    runs: list[Any] = []
    real = vectorize_module.vectorize

    def recorded(*args: Any, **kwargs: Any) -> Any:
        runs.append(real(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(vectorize_module, "vectorize", recorded)
    wide = scene(tmp_path / "wide.tif", 40, 2_100, 7)
    assert main([str(wide), "--out", "wide.gpkg", "--workers", "2", "-q"]) == 0
    assert [(r.blocks, r.workers) for r in runs] == [(2, 2)]
    one = real(
        workspace / "wide.tif",
        tmp_path / "one.gpkg",
        class_names=read_names(workspace / "wide.tif"),
        layer="labels",
        extra_columns={"scene": "wide"},
        workers=1,
        quiet=True,
    )
    assert one.workers == 1 and one.polygons == runs[0].polygons > 0
    ours, theirs = (gpd.read_file(p, layer="labels") for p in (workspace / "wide.gpkg", tmp_path / "one.gpkg"))
    assert list(ours.columns) == list(theirs.columns)
    assert ours.geometry.to_wkb().tolist() == theirs.geometry.to_wkb().tolist()
    assert ours.drop(columns="geometry").equals(theirs.drop(columns="geometry"))


def read_names(path: Path) -> list[str]:
    with rasterio.open(path) as ds:
        names = read_class_names(ds)
    assert names is not None
    return list(names)
