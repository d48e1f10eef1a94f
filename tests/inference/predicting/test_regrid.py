"""Inference at the model's ground sampling distance: resampled reads, predictions back on the scene's own grid.

The oracle model tells stripes of a period of 8 pixels (class 1) from stripes of 16 pixels (class 0): a fixed
size in pixels, as the objects a real model learnt at its training GSD. The scene at 0.5 m/pixel (the model's
GSD) has 4 m stripes inside blobs and 8 m stripes around them; its 2× coarser and 2× finer copies show the same
ground, so their stripes have other periods in pixels and only a run that resamples them to 0.5 m gets them right.
"""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from pipelines.infer import main
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.predicting.blending import FinishedRows
from rs_deeplab.inference.predicting.regrid import RowResampler, first_working_row, working_info
from rs_deeplab.inference.predicting.scene import predict_scene
from rs_deeplab.inference.reading.reader import SceneInfo, scene_info
from rs_deeplab.inference.runtimes.trained import TrainedModel
from tests.trainkit import blob_scene, train_tiny

MODEL_GSD = 0.5
PERIOD = 8  # pixels at the model's GSD: class 1; twice that: class 0
EXTENT = 128.0  # metres
ORIGIN = (368_000.0, 5_808_000.0)
BLOBS = ((40.0, 40.0, 22.0), (90.0, 85.0, 26.0), (30.0, 100.0, 14.0))  # centre x, y and radius in metres


def stripe_oracle() -> torch.nn.Sequential:
    """Class logits from the local amplitude of vertical stripes of ``2 × PERIOD`` (class 0) and ``PERIOD`` pixels.

    Built from torch's own modules only, so Dask workers can unpickle it: 5 × 16 cosine and sine kernels of both
    periods (each also negated), ReLU (so ``|r| = relu(r) + relu(-r)``), and a 1 × 1 sum per class.
    """
    x = torch.arange(2 * PERIOD, dtype=torch.float32)
    kernels = []
    for period in (2 * PERIOD, PERIOD):  # class 0, class 1
        for f in (torch.cos, torch.sin):
            k = f(2 * math.pi * x / period).expand(5, -1) / (5 * PERIOD)
            kernels += [k, -k]
    conv = torch.nn.Conv2d(1, 8, (5, 2 * PERIOD), bias=False)
    head = torch.nn.Conv2d(8, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack(kernels)[:, None])
        head.weight.zero_()
        head.weight[0, :4] = 20.0
        head.weight[1, 4:] = 20.0
    pad = torch.nn.ZeroPad2d((PERIOD, PERIOD - 1, 2, 2))  # "same" output size
    return torch.nn.Sequential(pad, conv, torch.nn.ReLU(), head)


def ground(gsd: float) -> tuple[np.ndarray, np.ndarray, rasterio.Affine]:
    """``(image (1, n, n) uint8, truth (n, n) uint8, transform)`` of the same 128 m square at ``gsd``."""
    n = round(EXTENT / gsd)
    centres = (np.arange(n) + 0.5) * gsd
    x, y = np.meshgrid(centres, centres)
    inside = np.zeros((n, n), bool)
    for cx, cy, r in BLOBS:
        inside |= (x - cx) ** 2 + (y - cy) ** 2 < r**2
    period_m = np.where(inside, PERIOD * MODEL_GSD, 2 * PERIOD * MODEL_GSD)
    image = 100 + 80 * np.cos(2 * np.pi * x / period_m)
    transform = rasterio.Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1])
    return np.rint(image)[None].astype(np.uint8), inside.astype(np.uint8), transform


def write_ground(folder: Path, gsd: float) -> tuple[Path, np.ndarray]:
    image, truth, transform = ground(gsd)
    path = write_geotiff(folder / f"scene_{gsd:g}.tif", image, crs="EPSG:32633", transform=transform)
    return path, truth


def agreement(labels: np.ndarray, truth: np.ndarray, gsd: float, band_m: float) -> float:
    """Balanced accuracy (mean over both classes) away from blob boundaries and the scene border (``band_m``)."""
    n = truth.shape[0]
    centres = (np.arange(n) + 0.5) * gsd
    x, y = np.meshgrid(centres, centres)
    far = np.ones_like(truth, bool)
    for cx, cy, r in BLOBS:
        far &= np.abs(np.hypot(x - cx, y - cy) - r) > band_m
    far &= (x > band_m) & (x < EXTENT - band_m) & (y > band_m) & (y < EXTENT - band_m)
    return float(np.mean([(labels[far & (truth == c)] == c).mean() for c in (0, 1)]))


def near_edges(labels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels with another label within ``radius`` pixels (a square neighbourhood)."""
    padded = np.pad(labels, radius, mode="edge")
    views = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2)
    return np.asarray(views.max((-2, -1)) != views.min((-2, -1)))


def reference_on(gsd: float, folder: Path) -> np.ndarray:
    """The oracle's labels of the scene at the model's GSD, taken (nearest) onto the grid at ``gsd``."""
    scene, _ = write_ground(folder, MODEL_GSD)
    predict_scene(stripe_oracle(), scene, folder / "reference.tif", **KW)  # type: ignore[arg-type]
    with rasterio.open(folder / "reference.tif") as ds:
        labels = ds.read(1)
    n = round(EXTENT / gsd)
    idx = np.floor((np.arange(n) + 0.5) * gsd / MODEL_GSD).astype(int)
    return np.asarray(labels[np.ix_(idx, idx)])


KW = {"size": 64, "stride": 32, "batch_size": 4, "mean": [100.0], "std": [80.0], "device": "cpu", "resume": False}


def test_oracle_gets_the_scene_at_its_own_gsd_right(tmp_path: Path) -> None:
    scene, truth = write_ground(tmp_path, MODEL_GSD)
    result = predict_scene(stripe_oracle(), scene, tmp_path / "ref.tif", gsd=MODEL_GSD, **KW)  # type: ignore[arg-type]
    assert result.gsd is None  # already at the model's GSD: nothing resampled
    with rasterio.open(result.labels) as ds:
        assert agreement(ds.read(1), truth, MODEL_GSD, band_m=4.0) > 0.99


@pytest.mark.parametrize("gsd", [1.0, 0.25], ids=["2x-coarser", "2x-finer"])
def test_resampled_to_the_model_gsd_and_written_on_the_scene_grid(tmp_path: Path, gsd: float) -> None:
    scene, truth = write_ground(tmp_path, gsd)
    native = predict_scene(stripe_oracle(), scene, tmp_path / "native.tif", **KW)  # type: ignore[arg-type]
    with rasterio.open(native.labels) as ds:
        assert agreement(ds.read(1), truth, gsd, band_m=4.0) < 0.7  # the oracle fails at the wrong scale
    out = tmp_path / "labels.tif"
    result = predict_scene(stripe_oracle(), scene, out, gsd=MODEL_GSD, probs_path=tmp_path / "p.tif", **KW)  # type: ignore[arg-type]
    assert result.gsd == MODEL_GSD
    with rasterio.open(scene) as src, rasterio.open(out) as ds, rasterio.open(tmp_path / "p.tif") as pr:
        for d in (ds, pr):
            assert (d.crs, d.transform, d.width, d.height) == (src.crs, src.transform, src.width, src.height)
        labels, probs = ds.read(1), pr.read().astype(int)
    assert agreement(labels, truth, gsd, band_m=2.0) > 0.99
    # the same labels as the oracle on the scene at its own GSD, up to 2 model pixels around class boundaries
    reference = reference_on(gsd, tmp_path)
    away = ~near_edges(reference, round(2 * MODEL_GSD / gsd))
    assert (labels[away] == reference[away]).mean() > 0.995
    assert (labels == reference).mean() > 0.98
    assert (labels != 255).all()
    assert np.abs(probs.sum(0) - 255).max() <= 2  # interpolated probabilities still sum to 1
    differ = labels != probs.argmax(0)  # only where the uint8 probabilities are (almost) tied
    assert differ.mean() < 0.001 and (np.abs(probs[0] - probs[1]) <= 1)[differ].all()
    # windows ran on the 256 × 256 working grid: 7 × 7 windows of 64 at a stride of 32, whatever the scene's size
    assert result.total_windows == 49


def test_nodata_stays_nodata_on_the_scene_grid(tmp_path: Path) -> None:
    image, _, transform = ground(1.0)
    image[:, :, :40] = 0
    scene = write_geotiff(tmp_path / "nd.tif", image, crs="EPSG:32633", transform=transform, nodata=0)
    predict_scene(stripe_oracle(), scene, tmp_path / "nd_out.tif", gsd=MODEL_GSD, **KW)  # type: ignore[arg-type]
    with rasterio.open(tmp_path / "nd_out.tif") as ds:
        labels = ds.read(1)
    assert (labels[:, :39] == 255).all() and (labels[:, 41:] != 255).all()


def test_a_scene_without_crs_cannot_be_forced_to_a_gsd(tmp_path: Path) -> None:
    from rs_deeplab.cli.errors import InputError

    png = tmp_path / "x.png"
    image, _, _ = ground(1.0)
    with rasterio.open(png, "w", driver="PNG", width=128, height=128, count=1, dtype="uint8") as ds:
        ds.write(image)
    with pytest.raises(InputError, match="no ground sampling distance"):
        predict_scene(stripe_oracle(), png, tmp_path / "o.tif", gsd=0.5, **KW)  # type: ignore[arg-type]


def _rows(probs: np.ndarray, cuts: list[int]) -> list[FinishedRows]:
    edges = [0, *cuts, probs.shape[1]]
    return [
        FinishedRows(a, probs[:, a:b].argmax(0).astype(np.uint8), probs[:, a:b]) for a, b in itertools.pairwise(edges)
    ]


class _Sink:
    def __init__(self) -> None:
        self.parts: list[FinishedRows] = []

    def write(self, rows: FinishedRows) -> None:
        self.parts.append(rows)

    def joined(self) -> tuple[int, np.ndarray, np.ndarray]:
        assert all(a.row_stop == b.row_start for a, b in itertools.pairwise(self.parts))
        probs = np.concatenate([p.probs for p in self.parts if p.probs is not None], axis=1)
        return self.parts[0].row_start, np.concatenate([p.labels for p in self.parts]), probs


@pytest.mark.parametrize("factor", [2.0, 0.5, 0.37])
def test_resampler_streams_and_resumes(tmp_path: Path, factor: float) -> None:
    scene, _ = write_ground(tmp_path, 1.0)
    info = scene_info(scene)
    work = working_info(info, factor)
    assert work.source_shape == (128, 128) and (work.height, work.width) == (round(128 * factor),) * 2
    rng = np.random.default_rng(0)
    probs = rng.random((3, work.height, work.width)).astype(np.float32)
    probs /= probs.sum(0)
    whole, parts = _Sink(), _Sink()
    RowResampler(whole, info, work, keep_probs=True).write(_rows(probs, [])[0])
    resampler = RowResampler(parts, info, work, keep_probs=True)
    for part in _rows(probs, [1, 7, 30, 31]):
        resampler.write(part)
    start, labels, out = whole.joined()
    assert (start, labels.shape, out.shape) == (0, (128, 128), (3, 128, 128))
    np.testing.assert_array_equal(labels, parts.joined()[1])
    np.testing.assert_allclose(out.sum(0), 1, atol=1e-5)
    # a resumed run starts at scene row 75 and is handed working rows from where they are needed (or earlier)
    for first in (first_working_row(75, info, work), 0):
        resumed = _Sink()
        r = RowResampler(resumed, info, work, 75)
        for a, b in ((first, first + 5), (first + 5, work.height)):
            r.write(FinishedRows(a, probs[:, a:b].argmax(0).astype(np.uint8), probs[:, a:b]))
        assert resumed.parts[0].row_start == 75
        np.testing.assert_array_equal(np.concatenate([p.labels for p in resumed.parts]), labels[75:])


@pytest.fixture(scope="module")
def checkpoint_at_gsd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A really trained (tiny) checkpoint on 0.1 m tiles: training records ``state["gsd"] = 0.1`` from the crops."""
    best = train_tiny(tmp_path_factory.mktemp("trained_gsd"))
    assert torch.load(best, map_location="cpu", weights_only=True)["gsd"] == pytest.approx(0.1)
    return best


@pytest.mark.slow
def test_cli_resamples_to_the_checkpoint_gsd(
    checkpoint_at_gsd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert TrainedModel(checkpoint_at_gsd).load(torch.device("cpu")).card.gsd == 0.1
    image, _ = blob_scene(3, 96)
    scene = write_geotiff(
        tmp_path / "coarse.tif",
        image[:4, :90, :70],
        crs="EPSG:32633",
        transform=rasterio.Affine(0.2, 0, 368_000, 0, -0.2, 5_808_000),
    )
    monkeypatch.chdir(tmp_path)
    seen: list[tuple[int, int, tuple[int, int] | None]] = []
    import rs_deeplab.inference.predicting.scene as scene_module

    original = scene_module.RowJob

    def spy(*, info: SceneInfo, **kwargs: Any) -> Any:
        seen.append((info.height, info.width, info.source_shape))
        return original(info=info, **kwargs)

    monkeypatch.setattr(scene_module, "RowJob", spy)
    ck = str(checkpoint_at_gsd)
    capsys.readouterr()
    assert main([str(scene), "--checkpoint", ck, "--out", "auto.tif", "--probs", "-q"]) == 0
    # the cost of reading at another scale is said even under -q
    assert capsys.readouterr().err == (
        f"{scene}: 0.2 m/pixel read at 0.1 m/pixel (140×180 working grid for 70×90 pixels: 4× the pixels)\n"
    )
    assert main([str(scene), "--checkpoint", ck, "--out", "native.tif", "--gsd", "native", "-q"]) == 0
    assert main([str(scene), "--checkpoint", ck, "--out", "forced.tif", "--gsd", "0.4", "-q"]) == 0
    assert seen == [(180, 140, (90, 70)), (90, 70, None), (45, 35, (90, 70))]
    for name in ("auto", "auto_probs", "native", "forced"):
        with rasterio.open(scene) as src, rasterio.open(tmp_path / f"{name}.tif") as ds:
            assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
    # beyond 4× the pixels, auto stops before any work and names the choices; a number takes the cost
    far = write_geotiff(
        tmp_path / "far.tif",
        image[:4, :40, :30],
        crs="EPSG:32633",
        transform=rasterio.Affine(0.5, 0, 368_000, 0, -0.5, 5_808_000),
    )
    capsys.readouterr()
    assert main([str(far), "--checkpoint", ck, "--out", "far_labels.tif", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0.5 m/pixel" in err and "25× the pixels" in err and "--gsd native" in err, err
    assert not (tmp_path / "far_labels.tif").exists()
    assert main([str(far), "--checkpoint", ck, "--out", "far_labels.tif", "--gsd", "0.1", "-q"]) == 0
    assert "25× the pixels" in capsys.readouterr().err
    # the working GSD is part of the run's fingerprint: a re-run at another GSD is computed again
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "forced.tif") as f:
        assert a.tags()["RS_DEEPLAB_INFERENCE"] != f.tags()["RS_DEEPLAB_INFERENCE"]
        assert '"gsd": 0.1' in a.tags()["RS_DEEPLAB_INFERENCE"]


@pytest.mark.parametrize("value", ["0", "-0.5", "abc", "nan"])
def test_bad_gsd_is_one_line_exit_2(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = tmp_path / "s.tif"
    shutil.copy(write_ground(tmp_path, 1.0)[0], scene)
    code = main([str(scene), "--out", str(tmp_path / "o.tif"), "--gsd", value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--gsd" in err
    assert not (tmp_path / "o.tif").exists()


def test_interrupted_resampled_run_resumes_to_the_same_rasters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene, _ = write_ground(tmp_path, 0.25)  # 512 scene rows: two output block rows
    kw = {**KW, "resume": True}
    fresh = predict_scene(
        stripe_oracle(), scene, tmp_path / "fresh.tif", gsd=MODEL_GSD, probs_path=tmp_path / "fp.tif", **kw
    )  # type: ignore[arg-type]
    from rs_deeplab.inference.writing import writer as writer_module

    original = writer_module.RowWriter._commit

    def commit_then_die(self: writer_module.RowWriter, rows: int) -> None:
        original(self, rows)
        if rows > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(writer_module.RowWriter, "_commit", commit_then_die)
    out, probs = tmp_path / "labels.tif", tmp_path / "probs.tif"
    with pytest.raises(KeyboardInterrupt):
        predict_scene(stripe_oracle(), scene, out, gsd=MODEL_GSD, probs_path=probs, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(writer_module.RowWriter, "_commit", original)
    resumed = predict_scene(stripe_oracle(), scene, out, gsd=MODEL_GSD, probs_path=probs, **kw)  # type: ignore[arg-type]
    assert resumed.resumed_at == 256 and resumed.total_windows < fresh.total_windows
    for a, b in ((fresh.labels, out), (tmp_path / "fp.tif", probs)):
        with rasterio.open(a) as x, rasterio.open(b) as y:
            np.testing.assert_array_equal(x.read(), y.read())
    # at another working GSD the fingerprint differs: the finished raster is computed again, not reused
    other = predict_scene(stripe_oracle(), scene, out, gsd=0.3, **kw)  # type: ignore[arg-type]
    assert other.windows > 0 and other.gsd == 0.3


@pytest.mark.slow
def test_dask_workers_resample_like_the_local_run(tmp_path: Path, dask_address: str) -> None:
    scene, _ = write_ground(tmp_path, 0.25)
    local = predict_scene(
        stripe_oracle(),
        scene,
        tmp_path / "local.tif",
        gsd=MODEL_GSD,
        probs_path=tmp_path / "lp.tif",
        **KW,  # type: ignore[arg-type]
    )
    dask = predict_scene(
        stripe_oracle(),
        scene,
        tmp_path / "dask.tif",
        gsd=MODEL_GSD,
        scheduler=dask_address,
        probs_path=tmp_path / "dp.tif",
        **KW,  # type: ignore[arg-type]
    )
    assert dask.gsd == MODEL_GSD and dask.runner != local.runner
    for a, b in (("local.tif", "dask.tif"), ("lp.tif", "dp.tif")):
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            assert (x.transform, x.shape) == (y.transform, y.shape)
            vx, vy = x.read().astype(int), y.read().astype(int)
        assert np.abs(vx - vy).max() <= 1 and (vx == vy).mean() > 0.999
