"""``predict_scene``: a model over a whole scene, streamed into a georeferenced label raster."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
import torch

from rs_deeplab.cli import progress
from rs_deeplab.errors import InputError
from rs_deeplab.grid import check_size_stride
from rs_deeplab.inference.blending import FinishedRows, WindowKind
from rs_deeplab.inference.predictor import TTA, Predictor
from rs_deeplab.inference.reader import SceneInfo, scene_info, select_bands
from rs_deeplab.inference.rows import CRFSettings, RowJob, predict_rows, stream_rows
from rs_deeplab.inference.streams import BackgroundSink
from rs_deeplab.inference.trained import CheckpointInfo, TrainedModel, module_fingerprint
from rs_deeplab.inference.writer import BLOCK, OutputSpec, RowWriter, partial_path, sidecar_path
from rs_deeplab.raster import PathLike

log = logging.getLogger("rs_deeplab.inference")

GDAL_CACHE_MB = 64
"""GDAL block cache during inference: each block is read or written once, a bigger cache only piles them up."""


@dataclass(frozen=True)
class SceneResult:
    """What one :func:`predict_scene` call did."""

    scene: Path
    labels: Path
    probs: Path | None
    windows: int
    """Windows run through the model (all-nodata windows are skipped)."""
    total_windows: int
    resumed_at: int
    """Scene rows an earlier, interrupted run had finished (0 for a fresh run)."""
    seconds: float
    runner: str
    class_names: tuple[str, ...]


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None``/``auto`` → CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")
    return dev


def _num_classes(module: torch.nn.Module, bands: int, size: int, device: torch.device) -> int:
    with torch.inference_mode():
        probe = min(size, 128)  # one small forward pass: class count only
        out = Predictor(module, device, amp="none")(torch.zeros(1, bands, probe, probe))
    return int(out.shape[1])


def predict_scene(
    model: torch.nn.Module | TrainedModel,
    scene_path: PathLike,
    out_path: PathLike,
    *,
    size: int,
    stride: int,
    batch_size: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bands: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    colormap: Mapping[int, Sequence[int]] | None = None,
    window: WindowKind = "hann",
    tta: TTA | None = None,
    crf: CRFSettings | None = None,
    probs_path: PathLike | None = None,
    cog: bool = False,
    device: str | torch.device | None = None,
    amp: str = "bf16",
    channels_last: bool = True,
    resume: bool = True,
    scheduler: str | None = None,
    quiet: bool = True,
) -> SceneResult:
    """Predict every pixel of a scene with overlapping windows and write a label raster on the scene's grid.

    Softmax probabilities of windows ``size`` pixels wide, every ``stride`` pixels, are blended with a smooth
    window (flat at the scene border) and arg-maxed; pixels where the scene is nodata get 255. Memory holds one
    band of ``size`` rows, whatever the scene's height; rows are written as they are finished. Reading and
    writing run in background threads while the model works.

    Args:
        model: Any module mapping ``(B, bands, h, w)`` to ``(B, classes, h, w)`` logits, or a checkpoint
            (:class:`~rs_deeplab.inference.trained.TrainedModel`), which also supplies ``mean``, ``std``,
            ``bands``, class names and colours unless given.
        scene_path: Any raster GDAL reads.
        out_path: The uint8 label GeoTIFF (tiled, compressed, colour table, ``CLASS_NAMES`` tag).
        size: Window side in pixels.
        stride: Step between windows (``<= size``).
        batch_size: Windows per model call (batches never span two rows of windows).
        mean: Per-band values subtracted; None (with ``std`` None) feeds raw values as float32.
        std: Per-band divisors.
        bands: 1-based scene bands to read (all when None).
        class_names: Names written into the raster; ``class_<i>`` when None.
        colormap: Colour table ``{class: (r, g, b[, a])}`` of the label raster.
        window: Blending window, ``hann`` or ``gaussian``.
        tta: Multi-scale / flip test-time augmentation.
        crf: DenseCRF refinement of the blended probabilities.
        probs_path: Also write per-class probabilities (uint8, 0-255) there.
        cog: Write Cloud-Optimized GeoTIFFs.
        device: ``cpu``, ``cuda``, or None for CUDA when available.
        amp: ``bf16``/``fp16`` autocast on CUDA, ``none`` for float32.
        channels_last: channels_last memory format on CUDA.
        resume: Continue an interrupted run of the same settings from its last finished rows, and skip an output
            a finished run of the same settings wrote. False recomputes from the first row.
        scheduler: Address of a Dask scheduler: spread row ranges over its workers (same output).
        quiet: No progress bar.

    Raises:
        InputError: Bad size/stride/batch size, band count unlike the model's, missing output folder.
        RasterError: The scene is missing or not a raster GDAL can read.
        CheckpointError: A checkpoint that is missing, corrupt or of another architecture.
    """
    start_time = time.perf_counter()
    check_size_stride(size, stride)
    out, probs_out = Path(out_path), None if probs_path is None else Path(probs_path)
    info = scene_info(scene_path)
    dev = pick_device(device)
    module, ck, fingerprint_model = _resolve_model(model, dev)
    if ck is not None:
        mean = ck.mean if mean is None else mean
        std = ck.std if std is None else std
        bands = ck.bands if bands is None else bands
        class_names = ck.class_names if class_names is None else class_names
        colormap = ck.colormap if colormap is None else colormap
    chosen = select_bands(info, bands, None if ck is None else ck.in_channels)
    if class_names is None:
        class_names = [f"class_{i}" for i in range(_num_classes(module, len(chosen), size, dev))]
    job = RowJob(info, size, stride, batch_size, tuple(chosen), len(class_names),
                 None if mean is None else tuple(float(m) for m in mean),
                 None if std is None else tuple(float(s) for s in std), window, tta or TTA(), crf,
                 probs_out is not None, amp, channels_last)  # fmt: skip
    reader = job.reader()
    spec = OutputSpec(out, tuple(class_names), colormap, probs_out, cog)
    fingerprint = _fingerprint(info, job, fingerprint_model, dev)
    if not resume:
        for p in (out, probs_out):
            if p is not None:
                partial_path(p).unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
    writer = RowWriter(spec, info, fingerprint)
    if resume and writer.complete():
        log.info("%s: already complete from an earlier run with the same settings", out)
        return SceneResult(Path(scene_path), out, probs_out, 0, 0, info.height, time.perf_counter() - start_time,
                           "earlier run", tuple(class_names))  # fmt: skip
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        done = writer.open()
        try:
            total = reader.windows_in(job.window_rows(done, info.height))
            if scheduler:
                runner, ran = _run_dask(scheduler, model, job, writer, done, total, quiet)
            else:
                runner, ran = _run_local(module, dev, job, writer, done, total, quiet)
        finally:
            writer.close()
        writer.finish()
    seconds = time.perf_counter() - start_time
    log.info("%s: %d of %d windows run (%d all-nodata skipped) in %.1f s on %s", out, ran, total, total - ran,
             seconds, runner)  # fmt: skip
    return SceneResult(Path(scene_path), out, probs_out, ran, total, done, seconds, runner, tuple(class_names))


def _resolve_model(
    model: torch.nn.Module | TrainedModel, device: torch.device
) -> tuple[torch.nn.Module, CheckpointInfo | None, str]:
    if isinstance(model, TrainedModel):
        module, ck = model.load(device)
        return module, ck, model.fingerprint()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a TrainedModel, got {type(model).__name__}")
    return model, None, module_fingerprint(model)


def _fingerprint(info: SceneInfo, job: RowJob, model: str, device: torch.device) -> dict[str, Any]:
    path = Path(info.path)
    stat = path.stat()
    return {
        "scene": str(path.resolve()),
        "scene_mtime": stat.st_mtime_ns,
        "scene_size": stat.st_size,
        "model": model,
        "device": device.type,
        "job": repr(job),
    }


def _run_local(
    module: torch.nn.Module, device: torch.device, job: RowJob, writer: RowWriter, done: int, total: int, quiet: bool
) -> tuple[str, int]:
    predictor = Predictor(module, device, tta=job.tta, amp=job.amp, channels_last=job.channels_last)
    counter = _Counter()
    with BackgroundSink[FinishedRows](writer.write) as sink:
        rows = stream_rows(job, predictor, done, job.info.height, on_batch=counter.add)
        for part in progress(rows, desc="inference", unit="strip", quiet=quiet):
            sink.put(part)
    return f"this process ({device.type})", counter.n


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> None:
        self.n += k


def task_rows(job: RowJob) -> int:
    """Scene rows per Dask task: whole output blocks, about four window rows."""
    return max(BLOCK, math.ceil(4 * job.stride / BLOCK) * BLOCK)


def _run_dask(
    address: str, model: torch.nn.Module | TrainedModel, job: RowJob, writer: RowWriter, done: int, total: int,
    quiet: bool,
) -> tuple[str, int]:  # fmt: skip
    from rs_deeplab.scheduling import scheduler_client

    step = task_rows(job)
    ranges = [(a, min(a + step, job.info.height)) for a in range(done - done % step, job.info.height, step)]
    with scheduler_client(address) as client:
        workers = len(client.scheduler_info()["workers"])
        ref = model if isinstance(model, TrainedModel) else client.scatter(model, broadcast=True, hash=False)
        pending: dict[int, Any] = {}
        ahead = max(2, 2 * workers)
        bar = progress(iter(range(len(ranges))), total=len(ranges), desc="inference", unit="task", quiet=quiet)
        for i, (a, b) in enumerate(ranges):
            pending[i] = client.submit(predict_rows, ref, job, a, b, pure=False)
            if i >= ahead - 1:
                _write_next(pending, i - ahead + 1, writer)
                next(bar, None)
        for k in sorted(pending):
            _write_next(pending, k, writer)
            next(bar, None)
    return f"Dask scheduler {address} ({workers} workers)", total


def _write_next(pending: dict[int, Any], key: int, writer: RowWriter) -> None:
    writer.write(pending.pop(key).result())
