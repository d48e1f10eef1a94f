"""``predict_scene``: a model over a whole scene, streamed into a georeferenced label raster."""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rs_deeplab.cli.errors import InputError
from rs_deeplab.config.modelcard import ModelCard
from rs_deeplab.geo.grid import check_size_stride
from rs_deeplab.geo.gsd import raster_gsd
from rs_deeplab.geo.raster import PathLike, small_block_cache, source_path
from rs_deeplab.inference.crf.dense import CRFSettings
from rs_deeplab.inference.dask_jobs.runner import dask_workers
from rs_deeplab.inference.predicting.blending import WindowKind
from rs_deeplab.inference.predicting.predictor import TTA, Predictor
from rs_deeplab.inference.predicting.regrid import working_info
from rs_deeplab.inference.predicting.rows import PANEL_COLUMNS, RowJob
from rs_deeplab.inference.predicting.scene_runs import SceneRun, job_progress, run_dask_stream, run_local
from rs_deeplab.inference.reading.reader import SceneInfo, scene_info, select_bands
from rs_deeplab.inference.runtimes.trained import LoadedModel, TrainedModel, module_fingerprint
from rs_deeplab.inference.writing.writer import OutputSpec
from rs_deeplab.remote.scenes import is_remote, reads_remote, remote_env, stat_remote
from rs_deeplab.runtime.devices import describe, pick_amp, pick_device, precision_name

log = logging.getLogger("rs_deeplab.inference")


@dataclass(frozen=True)
class SceneResult:
    """What one :func:`predict_scene` call did."""

    scene: Path | str
    """The scene as given: a local file, or a GDAL path (``/vsicurl/https://...``) kept as text."""
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
    gsd: float | None = None
    """The GSD (metres per pixel) the model saw the scene at, when it was resampled to one; None: its own."""


def needs_copy(module: torch.nn.Module, device: torch.device | str, *, channels_last: bool = False) -> bool:
    """Whether running ``module`` on ``device`` would change the caller's tensors (so a copy must run instead).

    True when a parameter or buffer lives on another device (``Predictor`` moves modules in place), or when
    channels_last on CUDA would re-lay out 4-D weights in place.
    """
    target = torch.device(device)
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.device.type != target.type or (t.device.index or 0) != (target.index or 0):
            return True
        relayout = channels_last and target.type == "cuda" and t.ndim == 4
        if relayout and not t.is_contiguous(memory_format=torch.channels_last):
            return True
    return False


def moved_copy(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """A deep copy of ``module`` with its tensors copied straight to ``device`` (no second copy where they live).

    Shared (tied) tensors stay shared in the copy; the original is untouched.
    """
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to(device, copy=True), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = b.detach().to(device, copy=True)
    return copy.deepcopy(module, memo)


@contextlib.contextmanager
def kept_modes(model: object) -> Iterator[None]:
    """Restore the ``training`` flag of every submodule of a caller's module afterwards (``Predictor`` sets eval)."""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _num_classes(module: torch.nn.Module, bands: int, size: int, device: torch.device) -> int:
    with torch.inference_mode():
        probe = min(size, 128)  # one small forward pass: class count only
        out = Predictor(module, device, amp="none", channels_last=False)(torch.zeros(1, bands, probe, probe))
    return int(out.shape[1])


def predict_scene(
    model: torch.nn.Module | TrainedModel | LoadedModel,
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
    device: str | torch.device | None = "auto",
    amp: str = "auto",
    channels_last: bool = True,
    resume: bool = True,
    scheduler: str | None = None,
    gsd: float | None = None,
    quiet: bool = True,
    panel_columns: int = PANEL_COLUMNS,
) -> SceneResult:
    """Predict every pixel of a scene with overlapping windows and write a label raster on the scene's grid.

    Softmax probabilities of windows ``size`` pixels wide, every ``stride`` pixels, are blended with a smooth
    window (flat at the scene border) and arg-maxed; pixels where the scene is nodata get 255. Memory holds one
    strip of ``size`` rows, whatever the scene's height, and at most ``panel_columns`` columns of it, whatever the
    scene's width (a wider scene is predicted in column panels, tiers of rows at a time: the same output for a
    few % more model work, see :meth:`~rs_deeplab.inference.predicting.rows.RowJob.panels`; not with CRF, a resampled
    ``gsd`` or a Dask ``scheduler``, which take whole rows); rows are written as they are finished. Reading and
    writing run in background threads while the model works. A module given as an object is never moved, reset
    or switched to eval mode: a copy runs where it would be.

    Args:
        model: Any module mapping ``(B, bands, h, w)`` to ``(B, classes, h, w)`` logits, or a checkpoint or
            exported model: a :class:`~rs_deeplab.inference.runtimes.trained.TrainedModel` (read for this call) or a
            :class:`~rs_deeplab.inference.runtimes.trained.LoadedModel` (read by the caller, reused for many scenes),
            whose
            card also supplies ``mean``, ``std``, ``bands``, class names and colours unless given.
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
        device: ``auto`` (a GPU when one is visible), ``cpu``, ``cuda`` or ``cuda:N``; with ``scheduler`` every
            worker decides for itself (:func:`rs_deeplab.runtime.devices.resolve_device` for its own GPUs).
        amp: ``auto`` (bf16 where the GPU has it, else fp16), ``bf16``, ``fp16`` or ``none``; the CPU runs float32.
        channels_last: channels_last memory format on CUDA.
        resume: Continue an interrupted run of the same settings from its last finished rows, and skip an output
            a finished run of the same settings wrote. False recomputes from the first row.
        scheduler: Address of a Dask scheduler: spread row ranges over its workers (same output).
        gsd: Ground sampling distance (metres per pixel) to predict at: the scene is read resampled to it
            (bilinear, window by window) and the predictions come back to the scene's own grid
            (:mod:`rs_deeplab.inference.predicting.regrid`); ``size`` and ``stride`` count pixels at this GSD. None: the
            scene's own pixels.
        quiet: No progress bar.
        panel_columns: Columns of a panel of a wide scene (memory; the output does not depend on it).

    Raises:
        InputError: Bad size/stride/batch size, band count unlike the model's, missing output folder, a device or
            precision this machine (or a Dask worker) cannot run, a ``gsd`` for a scene without one (no CRS).
        RasterError: The scene is missing or not a raster GDAL can read.
        CheckpointError: A checkpoint that is missing, corrupt or of another architecture.
    """
    one = SceneTask(scene_path, out_path, probs_path, gsd)
    return predict_scenes(
        model,
        [one],
        size=size,
        stride=stride,
        batch_size=batch_size,
        mean=mean,
        std=std,
        bands=bands,
        class_names=class_names,
        colormap=colormap,
        window=window,
        tta=tta,
        crf=crf,
        cog=cog,
        device=device,
        amp=amp,
        channels_last=channels_last,
        resume=resume,
        scheduler=scheduler,
        quiet=quiet,
        panel_columns=panel_columns,
    )[0]


@dataclass(frozen=True)
class SceneTask:
    """One scene of a :func:`predict_scenes` job: where it is read, where its outputs go, the GSD to read it at."""

    scene: PathLike
    out: PathLike
    probs: PathLike | None = None
    gsd: float | None = None


def predict_scenes(
    model: torch.nn.Module | TrainedModel | LoadedModel,
    scenes: Sequence[SceneTask],
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
    cog: bool = False,
    device: str | torch.device | None = "auto",
    amp: str = "auto",
    channels_last: bool = True,
    resume: bool = True,
    scheduler: str | None = None,
    quiet: bool = True,
    panel_columns: int = PANEL_COLUMNS,
) -> list[SceneResult]:
    """Predict many scenes as one job: :func:`predict_scene` for each, with one model, one progress bar and, on a
    Dask cluster, one stream of tasks across scene boundaries (:mod:`rs_deeplab.inference.predicting.scene_runs`).

    Every scene's header is read, and its bands checked against the model, before any output is opened. Each
    scene's outputs are written, resumed and finished on their own: a killed job re-run recomputes only the rows
    not yet written, and skips scenes that are complete. The arguments are :func:`predict_scene`'s, given once
    for all scenes; the output of each scene is exactly what :func:`predict_scene` writes for it alone.
    """  # noqa: D205
    check_size_stride(size, stride)
    if not scenes:
        raise InputError("no scenes to predict")
    infos = [scene_info(t.scene) for t in scenes]
    works = [_working_grid(info, t.gsd) for info, t in zip(infos, scenes, strict=True)]
    choice = "auto" if device is None else str(device)
    with contextlib.ExitStack() as stack:
        if scheduler:
            client, plan = stack.enter_context(dask_workers(scheduler, choice, amp))
            here, compute = torch.device("cpu"), plan.fingerprint()
            log.info("inference on %s in %s", plan.description, compute["precision"])
            runner = plan.description
        else:
            here, compute = _local_compute(choice, amp)
            runner = f"this process ({describe(here)})"
        stack.enter_context(kept_modes(model))
        module, card, source, fingerprint_model = _resolve_model(model, here, channels_last and not scheduler)
        if card is not None:
            mean = card.mean if mean is None else mean
            std = card.std if std is None else std
            bands = card.bands if bands is None else bands
            class_names = card.class_names if class_names is None else class_names
            colormap = card.colormap if colormap is None else colormap
        runs = []
        for task, info, work in zip(scenes, infos, works, strict=True):
            chosen = select_bands(info, bands, None if card is None else card.in_channels)
            if class_names is None:
                class_names = [f"class_{i}" for i in range(_num_classes(module, len(chosen), size, here))]
            probs_out = None if task.probs is None else Path(task.probs)
            job = RowJob(
                info=work,
                size=size,
                stride=stride,
                batch_size=batch_size,
                bands=tuple(chosen),
                num_classes=len(class_names),
                mean=None if mean is None else tuple(float(m) for m in mean),
                std=None if std is None else tuple(float(s) for s in std),
                window=window,
                tta=tta or TTA(),
                crf=crf,
                keep_probs=probs_out is not None or work is not info,
                amp=amp,
                channels_last=channels_last,
                panel_cols=panel_columns,
            )
            job.reader()  # checks the statistics against the bands before anything is written
            spec = OutputSpec(Path(task.out), tuple(class_names), colormap, probs_out, cog)
            fingerprint = _fingerprint(info, job, fingerprint_model, compute, None if work is info else task.gsd)
            runs.append(SceneRun(info, job, spec, fingerprint, resume))
        bar = stack.enter_context(job_progress(runs, quiet))
        remote = any(reads_remote(info.path) for info in infos)
        stack.enter_context(keep_interrupt(small_block_cache()))  # each block is read or written once
        stack.enter_context(keep_interrupt(remote_env() if remote else contextlib.nullcontext()))  # reader threads too
        if scheduler:
            shipped = source if source is not None else module  # workers read a checkpoint themselves
            run_dask_stream(client, plan, shipped, runs, choice, bar)
        else:
            run_local(module, here, runs, bar)
    results = []
    for task, run, work, info in zip(scenes, runs, works, infos, strict=True):
        label = "earlier run" if run.earlier else runner
        log.info(
            "%s: %d of %d windows run (%d all-nodata skipped) in %.1f s on %s",
            run.spec.path,
            run.ran,
            run.total,
            run.total - run.ran,
            run.seconds,
            label,
        )
        results.append(
            SceneResult(
                source_path(task.scene),
                run.spec.path,
                run.spec.probs_path,
                run.ran,
                run.total,
                run.done,
                run.seconds,
                label,
                tuple(run.spec.class_names),
                None if work is info else task.gsd,
            )
        )
    return results


def _working_grid(info: SceneInfo, gsd: float | None) -> SceneInfo:
    """The grid the model sees: ``info`` itself, or its footprint at ``gsd`` metres per pixel."""
    if gsd is None:
        return info
    if not (isinstance(gsd, (int, float)) and math.isfinite(gsd) and gsd > 0):
        raise InputError(f"gsd must be a positive number of metres per pixel, got {gsd!r}")
    own = raster_gsd(info.transform, info.crs, (info.height, info.width))
    if own is None:
        raise InputError(
            f"{info.path}: has no ground sampling distance (no CRS in metres or degrees), so it "
            "cannot be resampled to another one; predict it at its own scale (--gsd native)"
        )
    work = working_info(info, own / gsd)
    if work is not info:
        factor = (work.width * work.height) / (info.width * info.height)
        log.warning(
            "%s: %.3g m/pixel read at %.3g m/pixel (%d×%d working grid for %d×%d pixels: %.2g× the pixels)",
            info.path,
            own,
            gsd,
            work.width,
            work.height,
            info.width,
            info.height,
            factor,
        )
    return work


class keep_interrupt(contextlib.AbstractContextManager[Any]):  # noqa: N801 (used as a context manager)
    """A context manager whose exit, while Ctrl-C unwinds, cannot mask the ``KeyboardInterrupt`` with its own error.

    rasterio's ``Env`` raised ``EnvError`` there, and the interrupted run ended with a traceback.
    """

    def __init__(self, inner: contextlib.AbstractContextManager[Any]) -> None:
        self.inner = inner

    def __enter__(self) -> Any:
        return self.inner.__enter__()

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool | None:
        if isinstance(value, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                self.inner.__exit__(kind, value, traceback)
            return False
        return self.inner.__exit__(kind, value, traceback)


def _resolve_model(
    model: torch.nn.Module | TrainedModel | LoadedModel, device: torch.device, channels_last: bool
) -> tuple[torch.nn.Module, ModelCard | None, TrainedModel | None, str]:
    """The module to run on ``device`` (a copy where the caller's would change), its card, its file, fingerprint."""
    if isinstance(model, TrainedModel):
        model = model.load(device)  # for this call only
    if isinstance(model, LoadedModel):
        return model.module, model.card, model.source, model.fingerprint()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, a TrainedModel or a LoadedModel, got {type(model).__name__}")
    fingerprint = module_fingerprint(model)
    if needs_copy(model, device, channels_last=channels_last):
        return moved_copy(model, device), None, None, fingerprint
    return model, None, None, fingerprint


def _local_compute(choice: str, amp: str) -> tuple[torch.device, dict[str, str]]:
    """This process's device and precision (validated before any work), and their fingerprint record."""
    device = pick_device(choice, option="--device")
    precision = precision_name(pick_amp(amp, device, option="--amp"))
    log.info("inference on %s in %s", describe(device), precision)
    return device, {"device": device.type, "precision": precision, "runner": "this process"}


def _fingerprint(
    info: SceneInfo, job: RowJob, model: str, compute: Mapping[str, str], gsd: float | None
) -> dict[str, Any]:
    """The run's identity for resuming.

    A local scene counts by its path, modification time and size; a remote one by what its server reports (URL,
    size, ETag, Last-Modified), so an object replaced on the server restarts the run.
    """
    if is_remote(info.path):
        scene = stat_remote(info.path).fingerprint()
    else:
        path = Path(info.path)
        stat = path.stat()
        scene = {"scene": str(path.resolve()), "scene_mtime": stat.st_mtime_ns, "scene_size": stat.st_size}
    return {
        **scene,
        "model": model,
        **compute,
        "gsd": gsd,
        "job": repr(job),
    }
