"""Feeding the model: each scene row read once, raw windows normalised on the device, threads, quantised
probabilities, CRF off the main thread, and the feed benchmark."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.io
import torch
from rasterio.windows import Window

from bench.gpukit import fp32_exact
from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.grid import axis_offsets
from rs_deeplab.geo.raster import open_raster, quiet_georeferencing
from rs_deeplab.inference import CRFSettings, predict_scene
from rs_deeplab.inference.predicting.blending import (
    FinishedRows,
    StripAccumulator,
    quantise_probs,
    quantise_probs_torch,
)
from rs_deeplab.inference.predicting.predictor import Normaliser, Predictor
from rs_deeplab.inference.predicting.rows import RowJob, concat_rows, stream_rows
from rs_deeplab.inference.predicting.streams import OrderedWorker
from rs_deeplab.inference.reading.reader import WindowReader, scene_info, transport_dtype
from rs_deeplab.inference.reading.strip_reader import StripReader
from tests.conftest import DEFAULT_TRANSFORM
from tests.inference.scenes import NAMES, Oracle, blobs, labelled_scene

ROOT = Path(__file__).resolve().parents[3]
MEAN, STD = (100.0, 50.0, 7.5), (30.0, 0.7, 3.0)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
"""Where the device-side steps are checked against the host; the CUDA cases are marked ``gpu`` (skipped, with the
reason, where there is no GPU; selected by ``pytest -m gpu`` where there is one)."""


def write_tiled(path: Path, data: np.ndarray, block: int | None = 32, nodata: float | None = None) -> Path:
    """A GeoTIFF with ``block``-pixel tiles (None: GDAL's default strips), so reads split into several chunks."""
    tiling = {} if block is None else {"tiled": True, "blockxsize": block, "blockysize": block}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=DEFAULT_TRANSFORM,
        nodata=nodata,
        **tiling,
    ) as dst:
        dst.write(data)
    return path


def old_batches(path: Path, size: int, stride: int, batch: int, mean: Any, std: Any) -> Iterator[tuple[Any, ...]]:
    """The reader before this change: every window row reads its whole band; windows normalised on the host."""
    info = scene_info(path)
    n = info.count
    m = None if mean is None else np.asarray(mean, np.float32).reshape(n, 1, 1)
    s = None if std is None else np.asarray(std, np.float32).reshape(n, 1, 1)
    with open_raster(path) as src:
        for row_off in axis_offsets(info.height, size, stride):
            window = Window(0, row_off, info.width, min(size, info.height - row_off))
            data = src.read(window=window)
            valid = None
            if info.mask_kind == "nodata" and info.nodata is not None:
                nd = info.nodata
                valid = (~np.isnan(data) if np.isnan(nd) else data != nd).any(0)
            elif info.mask_kind == "mask":
                valid = src.read_masks(1, window=window) > 0
            if np.issubdtype(data.dtype, np.floating):
                finite = np.isfinite(data).all(0)
                valid = finite if valid is None else valid & finite
                data = np.where(finite, data, 0)
            valid = None if valid is None or valid.all() else valid
            cols = [c for c in axis_offsets(info.width, size, stride) if valid is None or valid[:, c : c + size].any()]
            for i in range(0, len(cols), batch):
                chunk = cols[i : i + batch]
                images = np.zeros((len(chunk), n, size, size), np.float32)
                masks = None if valid is None else np.zeros((len(chunk), size, size), bool)
                for j, c in enumerate(chunk):
                    crop = data[:, :, c : c + size]
                    out = images[j, :, : crop.shape[1], : crop.shape[2]]
                    out[...] = crop
                    if m is not None:
                        out -= m
                    if s is not None:
                        out /= s
                    if masks is not None and valid is not None:
                        masks[j, : crop.shape[1], : crop.shape[2]] = valid[:, c : c + size]
                        images[j] *= masks[j]
                yield row_off, tuple(chunk), images, masks


def scenes(tmp_path: Path) -> dict[str, Path]:
    """Scenes of every kind the reader handles."""
    rng = np.random.default_rng(5)
    u8 = rng.integers(0, 256, (3, 150, 170)).astype(np.uint8)
    u8[:, 20:70, 30:100] = 0  # nodata, whole windows and parts
    u16 = rng.integers(0, 65536, (3, 150, 170)).astype(np.uint16)  # values above int16's range
    f32 = rng.normal(500, 300, (3, 150, 170)).astype(np.float32)
    f32[:, 40:90, :60] = np.nan
    f32[1, 100:105, 100:110] = np.inf  # a non-finite value in one band only
    masked = write_tiled(tmp_path / "mask.tif", u8.copy(), block=None)
    with rasterio.open(masked, "r+") as ds:
        mask = np.full(u8.shape[1:], 255, np.uint8)
        mask[90:130, 10:60] = 0
        ds.write_mask(mask)
    png = tmp_path / "scene.png"
    with (
        quiet_georeferencing(),
        rasterio.open(png, "w", driver="PNG", width=170, height=150, count=3, dtype="uint8") as dst,
    ):
        dst.write(rng.integers(0, 256, (3, 150, 170)).astype(np.uint8))
    return {
        "png": png,  # decoded from the top: read by one thread, in order
        "uint8-nodata": write_tiled(tmp_path / "u8.tif", u8, nodata=0),
        "uint16": write_tiled(tmp_path / "u16.tif", u16, block=48),
        "float32-nan-nodata": write_tiled(tmp_path / "f32.tif", f32, nodata=float("nan")),
        "float32-striped": write_tiled(tmp_path / "f32s.tif", f32, block=None),
        "mask": masked,
        "shorter-than-window": write_tiled(tmp_path / "short.tif", u16[:, :40, :70], block=None),
    }


@pytest.mark.parametrize(
    "kind", ["uint8-nodata", "uint16", "float32-nan-nodata", "float32-striped", "mask", "shorter-than-window", "png"]
)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("stats", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_device_normalisation_equals_host_normalisation(
    tmp_path: Path, kind: str, threads: int, stats: bool, device: str
) -> None:
    path = scenes(tmp_path)[kind]
    info = scene_info(path)
    mean, std = (MEAN, STD) if stats else (None, None)
    reader = WindowReader(
        info,
        size=64,
        stride=40,
        batch_size=3,
        bands=[1, 2, 3],
        mean=mean,
        std=std,
        read_threads=threads,
        pin_memory=device == "cuda",
    )
    normalise = Normaliser(mean, std, device)
    new = list(reader.batches())
    old = list(old_batches(path, 64, 40, 3, mean, std))
    assert [(b.row_off, b.col_offs) for b in new] == [o[:2] for o in old]
    for batch, (_, _, images, masks) in zip(new, old, strict=True):
        assert batch.pixels.dtype != torch.float32 or info.dtype.startswith("float")  # raw pixels are shipped
        assert batch.pixels.is_pinned() == (device == "cuda")
        x = normalise(batch.pixels, batch.valid, batch.extent)
        assert x.dtype == torch.float32 and x.device.type == device
        got = x.cpu().numpy().view(np.uint32)
        np.testing.assert_array_equal(got, images.view(np.uint32))  # bit for bit (±0 too)
        if masks is None:
            assert batch.valid is None
        else:
            assert batch.valid is not None
            np.testing.assert_array_equal(batch.valid.numpy(), masks)


def test_transport_dtypes_hold_every_value() -> None:
    assert transport_dtype("uint8") == np.uint8 and transport_dtype("float64") == np.float32
    assert transport_dtype("uint16") in (np.uint16, np.int32)
    values = np.array([0, 1, 32767, 32768, 65535], np.uint16)
    shipped = torch.from_numpy(values.astype(transport_dtype("uint16")))
    np.testing.assert_array_equal(Normaliser(None, None)(shipped.view(1, 1, 1, 5)).numpy().ravel(), values)


def test_unsigned_pixels_are_widened_where_the_device_cannot_convert_them() -> None:
    class Refuses:
        """A device tensor whose kernels lack uint16 (as on older torch builds)."""

        dtype = torch.uint16

        def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            raise RuntimeError("copy_ not implemented for 'UInt16'")

    pixels = torch.tensor([0, 40000, 65535], dtype=torch.uint16)
    out = Normaliser(None, None)._float(Refuses(), pixels)  # type: ignore[arg-type]
    assert out.dtype == torch.float32 and out.tolist() == [0.0, 40000.0, 65535.0]


class RowCounter:
    """Counts the scene rows rasterio reads (pixel reads and mask reads), from any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = self.mask_rows = 0
        self.lock = threading.Lock()
        read, read_masks = rasterio.io.DatasetReader.read, rasterio.io.DatasetReader.read_masks

        def counted(original: Callable[..., Any], attr: str) -> Callable[..., Any]:
            def wrapper(ds: Any, *args: Any, **kwargs: Any) -> Any:
                window = kwargs.get("window")
                with self.lock:
                    setattr(self, attr, getattr(self, attr) + (ds.height if window is None else window.height))
                return original(ds, *args, **kwargs)

            return wrapper

        monkeypatch.setattr(rasterio.io.DatasetReader, "read", counted(read, "rows"))
        monkeypatch.setattr(rasterio.io.DatasetReader, "read_masks", counted(read_masks, "mask_rows"))


@pytest.mark.parametrize("threads", [1, 2])
def test_each_scene_row_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    path = scenes(tmp_path)["mask"]  # 150 rows, an internal mask: pixels and mask each read once per row
    info = scene_info(path)
    counter = RowCounter(monkeypatch)
    reader = WindowReader(info, size=64, stride=32, batch_size=4, bands=[1, 2, 3], read_threads=threads)
    assert len(list(reader.batches())) > 0
    assert counter.rows == info.height and counter.mask_rows == info.height
    assert reader.rows_read == info.height
    # a restart at an arbitrary window row reads the rows from there on, once (the last row is shifted inward)
    rows = axis_offsets(info.height, 64, 32)
    counter.rows = 0
    list(reader.batches(rows[2:]))
    assert counter.rows == info.height - rows[2]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_bands_in_any_order_equal_direct_reads(tmp_path: Path, threads: int) -> None:
    path = scenes(tmp_path)["float32-nan-nodata"]
    info = scene_info(path)
    rng = np.random.default_rng(threads)
    offs = [int(o) for o in rng.integers(0, info.height - 10, 25)] + [0, 20, 40, 40, 60, 10, 130]
    with StripReader(info, [3, 1], 64, threads) as source, rasterio.open(path) as src:
        for i, off in enumerate(offs):
            data, valid = source.strip(off, offs[i + 1] if i + 1 < len(offs) else None)
            rows = min(64, info.height - off)
            direct = src.read([3, 1], window=Window(0, off, info.width, rows))
            ok = np.isfinite(direct).all(0) & (~np.isnan(direct)).any(0)
            np.testing.assert_array_equal(data, np.where(ok, direct, 0))
            np.testing.assert_array_equal(np.ones_like(ok) if valid is None else valid, ok)


def test_predict_scene_reads_each_row_once(make_raster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    label = blobs(301, 217, 3)
    scene = labelled_scene(make_raster, label)
    counter = RowCounter(monkeypatch)
    predict_scene(Oracle(), scene, tmp_path / "o.tif", size=64, stride=24, class_names=NAMES, resume=False)
    assert counter.rows == 301  # stride 24 of 64: the old reader read each row about 2.7 times
    with rasterio.open(tmp_path / "o.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), label)


def job_for(path: Path, threads: int, **kw: Any) -> RowJob:
    info = scene_info(path)
    return RowJob(
        info=info,
        size=64,
        stride=40,
        batch_size=3,
        bands=tuple(range(1, info.count + 1)),
        num_classes=5,
        read_threads=threads,
        **kw,
    )


class SoftOracle(Oracle):
    """The oracle, unsure (logits 1.5): the CRF's pairwise terms can change its probabilities."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 0.075


def run_rows(
    job: RowJob, start: int = 0, stop: int | None = None, model: Oracle | None = None, device: str = "cpu"
) -> FinishedRows:
    stop = job.info.height if stop is None else stop
    parts = list(stream_rows(job, Predictor(model or Oracle(), device, amp="none"), start, stop))
    return concat_rows(parts, job, start, stop)


@pytest.mark.parametrize("block", [16, None], ids=["tiled", "striped"])
def test_thread_count_does_not_change_output(tmp_path: Path, block: int | None) -> None:
    label = blobs(233, 190, 4)
    data = np.stack([label, np.random.default_rng(1).integers(0, 9, label.shape).astype(np.uint8)])
    data[:, 100:140, 20:80] = 9
    path = write_tiled(tmp_path / "t.tif", data, block=block, nodata=9)
    results = [run_rows(job_for(path, t, keep_probs=True)) for t in (1, 2, 3, 5)]
    assert results[0].probs is not None and results[0].probs.dtype == np.uint8
    np.testing.assert_array_equal(results[0].labels, np.where(data[0] == 9, 255, label))
    for r in results[1:]:
        assert r.probs is not None
        np.testing.assert_array_equal(r.labels, results[0].labels)
        np.testing.assert_array_equal(r.probs, results[0].probs)
    assert repr(job_for(path, 1)) == repr(job_for(path, 4))  # the thread count is not in the resume fingerprint


@pytest.mark.gpu
def test_a_cuda_run_equals_the_cpu_run(tmp_path: Path) -> None:
    label = blobs(233, 190, 4)
    data = np.stack([label, label]).astype(np.uint16) * 1000  # uint16 shipped raw, normalised on the GPU
    data[:, 100:140, 20:80] = 9
    path = write_tiled(tmp_path / "u16.tif", data, nodata=9)
    job = job_for(path, 2, keep_probs=True, mean=(0.0, 0.0), std=(1000.0, 1000.0))
    cpu = run_rows(job)
    with fp32_exact():  # fp32 means fp32: no TF32 convolutions on the GPU (the caller's settings come back)
        gpu = run_rows(job, device="cuda")
    np.testing.assert_array_equal(gpu.labels, cpu.labels)
    np.testing.assert_array_equal(cpu.labels, np.where(data[0] == 9, 255, label))
    assert gpu.probs is not None and cpu.probs is not None and gpu.probs.dtype == np.uint8
    assert np.abs(gpu.probs.astype(int) - cpu.probs).max() <= 1  # float sums in another order: ±1 at most


@pytest.mark.parametrize("device", DEVICES)
def test_quantised_probabilities_equal_the_writers_old_quantisation(device: str) -> None:
    rng = np.random.default_rng(0)
    halves = (np.arange(256, dtype=np.float32) + 0.5) / 255  # ties: rounded half to even like np.rint
    probs = np.concatenate([rng.random(10_000, dtype=np.float32), halves, np.float32([0, 1, 1 + 1e-7])])
    old = np.rint(probs * 255).astype(np.uint8)  # what writer.py did before
    np.testing.assert_array_equal(quantise_probs_torch(torch.from_numpy(probs).to(device)).cpu().numpy(), old)
    np.testing.assert_array_equal(quantise_probs(probs), old)
    assert quantise_probs(old) is old


def test_accumulator_quantises_on_the_device_like_the_host() -> None:
    rng = torch.Generator().manual_seed(0)
    kept, quant = (StripAccumulator(4, 90, 70, 32, keep_probs=True, quantise=q) for q in (False, True))
    rows: dict[bool, list[FinishedRows]] = {False: [], True: []}
    for r in axis_offsets(90, 32, 20):
        for c in axis_offsets(70, 32, 20):
            probs = torch.rand((4, 32, 32), generator=rng).softmax(0)
            for q, acc in ((False, kept), (True, quant)):
                rows[q] += list(acc.add(r, c, probs, None))
    rows[False] += list(kept.finish(90))
    rows[True] += list(quant.finish(90))
    floats = np.concatenate([p.probs for p in rows[False] if p.probs is not None], axis=1)
    uint8 = np.concatenate([p.probs for p in rows[True] if p.probs is not None], axis=1)
    assert uint8.dtype == np.uint8 and uint8.shape == floats.shape == (4, 90, 70)
    np.testing.assert_array_equal(uint8, np.rint(floats * 255).astype(np.uint8))


def crf_scene(tmp_path: Path) -> Path:
    label = blobs(150, 200, 11, classes=3)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)
    noise = np.random.default_rng(3).normal(0, 8, (3, *label.shape))
    image = np.clip(colours[label].transpose(2, 0, 1) + noise, 0, 255).astype(np.uint8)
    image[0] = np.minimum(label, 4)  # band 1 is what the oracle reads
    return write_tiled(tmp_path / "rgb.tif", image, block=None)


class InlineWorker(OrderedWorker[Any, Any]):
    """The old behaviour: refine on the calling thread."""

    def submit(self, item: Any) -> list[Any]:
        return [self._fn(item)]


@pytest.mark.parametrize(("start", "stop"), [(0, 150), (37, 101)])
def test_crf_in_a_thread_gives_identical_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: int, stop: int
) -> None:
    path = crf_scene(tmp_path)
    job = job_for(path, 2, crf=CRFSettings(iterations=3), keep_probs=True)
    threads: set[str] = set()
    refine = CRFSettings.refine

    def recorded(self: CRFSettings, *args: Any, **kwargs: Any) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return refine(self, *args, **kwargs)

    monkeypatch.setattr(CRFSettings, "refine", recorded)
    background = run_rows(job, start, stop, SoftOracle())
    assert threads and not threads & {threading.current_thread().name}  # the CRF ran off this thread
    monkeypatch.setattr("rs_deeplab.inference.predicting.rows.OrderedWorker", InlineWorker)
    inline = run_rows(job, start, stop, SoftOracle())
    np.testing.assert_array_equal(background.labels, inline.labels)
    assert background.probs is not None and inline.probs is not None
    np.testing.assert_array_equal(background.probs, inline.probs)
    plain = run_rows(job_for(path, 2, keep_probs=True), start, stop, SoftOracle())
    assert plain.probs is not None and (quantise_probs(background.probs) != plain.probs).any()  # the CRF ran


def test_ordered_worker_keeps_order_bounds_the_queue_and_raises() -> None:
    def slow(i: int) -> int:
        time.sleep(0.02 if i % 3 == 0 else 0.0)
        if i == 7:
            raise ValueError("seven")
        return i * 10

    out: list[int] = []
    with OrderedWorker(slow, depth=2) as worker:
        for i in range(7):
            out += worker.submit(i)
            assert len(worker._pending) <= 2
        out += list(worker.drain())
    assert out == [i * 10 for i in range(7)]
    with OrderedWorker(slow, depth=1) as worker, pytest.raises(ValueError, match="seven"):
        for i in range(6, 10):
            worker.submit(i)
        list(worker.drain())


def test_predictor_precision_auto_and_bad_choices() -> None:
    model = torch.nn.Conv2d(1, 2, 1)
    assert Predictor(model, "cpu", amp="auto").amp_dtype is None
    for amp in ("bf16", "fp16", "none"):
        assert Predictor(model, "cpu", amp=amp).amp_dtype is None  # the CPU runs float32
    with pytest.raises(InputError, match="auto"):
        Predictor(model, "cpu", amp="fp8")


@pytest.mark.slow
def test_feed_bench_runs(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "infer_bench.py"), "--feed", "--smoke", "--workdir", str(tmp_path)]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "windows/s" in line]
    assert len(lines) >= 6, done.stdout
