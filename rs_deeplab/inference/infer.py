"""``pipelines/infer.py`` as a library call: checkpoint + scenes → label rasters (+ polygons in a GeoPackage)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rs_deeplab.cli.errors import InputError
from rs_deeplab.cli.locks import output_lock
from rs_deeplab.cli.outputs import check_output_file
from rs_deeplab.config.modelcard import ModelCard
from rs_deeplab.geo.grid import check_size_stride
from rs_deeplab.geo.gsd import raster_gsd, working_gsd
from rs_deeplab.geo.mosaic import RegionOutput, checked_res, target_crs, write_region
from rs_deeplab.geo.raster import source_path
from rs_deeplab.inference.crf.dense import CRFSettings
from rs_deeplab.inference.crf.search import recorded_crf
from rs_deeplab.inference.predicting.predictor import TTA
from rs_deeplab.inference.predicting.scene import SceneResult, SceneTask, predict_scenes
from rs_deeplab.inference.reading.reader import SceneInfo, scene_info, select_bands
from rs_deeplab.inference.runtimes.choice import check_choice
from rs_deeplab.inference.runtimes.trained import TrainedModel, model_kind, newest_checkpoint
from rs_deeplab.inference.writing.region import check_region, staged, vectorize_region
from rs_deeplab.inference.writing.writer import partial_path, sidecar_path
from rs_deeplab.remote.scenes import is_remote, scene_names, scene_source
from rs_deeplab.remote.stac import is_stac_item
from rs_deeplab.runtime.devices import pick_amp, pick_device

log = logging.getLogger("rs_deeplab.inference")

RASTER_SUFFIXES = (".tif", ".tiff")
GROUND_SCHEMES = ("voc", "cityscapes")
"""Schemes photographed from the ground: TTA adds no vertical flips. Every other scheme (the aerial benchmarks
and own data, which this project expects to be overhead imagery) has no up and down, so TTA flips both ways."""


@dataclass(frozen=True)
class InferOptions:
    """Command-line choices; None means the checkpoint's ``infer`` settings."""

    size: int | None = None
    stride: int | None = None
    batch_size: int | None = None
    tta: bool = False
    scales: tuple[float, ...] | None = None
    crf: bool = False
    crf_bands: tuple[int, ...] | None = None
    crf_iterations: int | None = None
    """Mean-field iterations; None: the checkpoint's searched setting (``<stem>.crf.json``), else 5."""
    crf_gaussian: tuple[float, float] | None = None
    """Smoothness kernel ``(sxy, compat)``; None: the searched setting, else DeepLab's ``(3, 3)``."""
    crf_bilateral: tuple[float, float, float] | None = None
    """Appearance kernel ``(sxy, srgb, compat)``; None: the searched setting, else DeepLab's ``(80, 13, 10)``."""
    output_stride: int | None = None
    probs: bool = False
    cog: bool = False
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; with a scheduler, each Dask worker's choice."""
    amp: str = "auto"
    """Autocast precision on GPUs: ``auto``, ``bf16``, ``fp16`` or ``none``."""
    scheduler: str | None = None
    min_area: float = 0.0
    simplify: float = 0.0
    workers: int | None = None
    """Processes that polygonize blocks (None: the usable cores for large rasters; see
    :func:`rs_deeplab.vectorize.parallel.resolve_workers`)."""
    resume: bool = True
    gsd: str | float = "auto"
    """Scale the model sees scenes at: ``auto`` (the checkpoint's GSD, when a scene is more than 1% off it),
    ``native`` (each scene's own pixels) or metres per pixel (see :func:`rs_deeplab.geo.gsd.working_gsd`)."""
    assets: tuple[str, ...] | None = None
    """STAC Item scenes: the assets stacked as bands, in order (None: the checkpoint's band names)."""
    separate: bool = False
    """Several scenes as separate maps (e.g. dates of one place): no mosaic, polygons per scene."""
    to_crs: str | None = None
    """CRS of the mosaic and the polygons (None: the first scene's)."""
    res: float | None = None
    """Pixel size of the mosaic in its CRS's units (None: the first scene's)."""
    stac: bool = False
    """Also write a STAC Collection with one Item per scene (``x.stac/``)."""
    runtime: str = "auto"
    """What runs a checkpoint: ``auto`` (ONNX Runtime on a CPU where it is installed and the model exports, else
    PyTorch), ``torch`` or ``onnx`` (see :mod:`rs_deeplab.inference.runtimes.choice`)."""
    precision: str = "fp32"
    """``int8``: quantize the checkpoint for ONNX Runtime on the CPU, calibrated on the first scene."""


@dataclass
class InferResult:
    """Outputs of :func:`infer_scenes`."""

    checkpoint: Path
    rasters: list[SceneResult] = field(default_factory=list)
    polygons: Path | None = None
    polygon_count: int = 0
    seconds: float = 0.0
    region: RegionOutput | None = None
    """The mosaic of several scenes (VRT, COG under ``--cog``, probabilities VRT), with its grid and shares."""
    catalog: Path | None = None
    """The STAC Collection (``x.stac/collection.json``) under ``--stac``."""


def raster_paths(out: Path, scenes: Sequence[Path | str]) -> list[Path]:
    """Label raster per scene: ``x.tif`` for one scene, ``x_<scene>.tif`` for several.

    ``<scene>`` is :func:`~rs_deeplab.remote.scenes.scene_names`: the file stem, with parent folders in front where
    scenes share a file name.
    """
    base = out.with_suffix(".tif") if out.suffix.lower() not in RASTER_SUFFIXES else out
    if len(scenes) == 1:
        return [base]
    return [base.with_name(f"{base.stem}_{name}{base.suffix}") for name in scene_names(scenes)]


def _check_out(out: Path, inputs: Sequence[Path | str | None]) -> None:
    if out.suffix.lower() not in (*RASTER_SUFFIXES, ".gpkg"):
        raise InputError(f"--out {out}: use a .gpkg (raster + polygons) or a .tif (raster only) path")
    kind = "GeoPackage" if out.suffix.lower() == ".gpkg" else "GeoTIFF"
    check_output_file(out, what=f"--out {out}", kind=kind, inputs=inputs)


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise InputError(f"{name} {value}: must be a positive whole number")


def check_options(opts: InferOptions) -> None:
    """Refuse option values that cannot work, before anything is loaded (0 and negatives are never defaults).

    Raises:
        InputError: A size, stride, batch size or CRF iteration count below 1, a negative or non-finite
            ``min_area``/``simplify``, a CRF band below 1 or more than three of them, a ``to_crs`` that is no CRS,
            a ``res`` that is no positive number.
    """
    _positive("--size", opts.size)
    _positive("--stride", opts.stride)
    _positive("--batch-size", opts.batch_size)
    if opts.crf:
        _positive("--crf-iterations", opts.crf_iterations)
    for name, value in (("--min-area", opts.min_area), ("--simplify", opts.simplify)):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{name} {value}: must be a number >= 0")
    if opts.workers is not None and opts.workers < 1:
        raise InputError(
            f"--workers {opts.workers}: must be a whole number of at least 1 (processes polygonizing "
            "the labels; 1 = this process only)"
        )
    bands = opts.crf_bands
    if bands is not None and (not 1 <= len(bands) <= 3 or any(b < 1 for b in bands)):
        raise InputError(f"--crf-bands {','.join(map(str, bands))}: name 1 to 3 bands, counted from 1")
    if opts.scales is not None and not all(math.isfinite(s) and s > 0 for s in opts.scales):
        raise InputError(f"--scales {','.join(map(str, opts.scales))}: scales must be positive numbers")
    target_crs(opts.to_crs)
    checked_res(opts.res)
    check_choice(opts.runtime, opts.precision)


def _check_crf_bands(crf: CRFSettings | None, header: SceneInfo) -> None:
    if crf is not None and any(not 1 <= b <= header.count for b in crf.bands):
        raise InputError(
            f"--crf-bands {','.join(map(str, crf.bands))}: {header.path} has {header.count} band(s); "
            f"name bands 1..{header.count}"
        )


def _check_rasters(rasters: Sequence[Path], opts: InferOptions, out: Path, inputs: Sequence[Path | str]) -> None:
    """Every raster the run writes (labels, probabilities) is a writable file that is no input."""
    for r in rasters:
        targets = [r] + ([probs_path(r)] if opts.probs else [])
        for target in targets:
            check_output_file(target, what=f"--out {out}", kind="GeoTIFF", inputs=inputs)
        for target in targets:
            if partial_path(target).is_dir() or sidecar_path(r).is_dir():
                raise InputError(f"--out {out}: {partial_path(target)} is a folder; remove it")


def probs_path(raster: Path) -> Path:
    """Where the per-class probabilities of ``raster`` go."""
    return raster.with_name(f"{raster.stem}_probs.tif")


def resolve_scenes(
    scenes: Sequence[str | Path], assets: Sequence[str] | None, band_names: Sequence[str] | None
) -> list[Path | str]:
    """Scene arguments as the library reads them: local files as Paths; URLs and GDAL paths as GDAL path strings
    (checked with their server); STAC Items as local VRTs of their ``assets`` (default: ``band_names``).
    """  # noqa: D205
    out: list[Path | str] = []
    for s in scenes:
        chosen = (assets or band_names) if is_stac_item(s) else assets
        out.append(source_path(scene_source(s, chosen)))
    return out


def infer_scenes(
    scenes: Sequence[Path | str],
    out: Path,
    *,
    checkpoint: Path | None = None,
    options: InferOptions | None = None,
    quiet: bool = False,
) -> InferResult:
    """Run a trained checkpoint over scenes (default: the held-out scenes in its config) and write the outputs.

    Scenes may be local files, URLs (``https://``, ``s3://``, ``gs://``), GDAL paths or STAC Items (see
    :func:`resolve_scenes`). Every scene is checked (readable, band count) before any is predicted. With a
    ``.gpkg`` output the label rasters are vectorized into its ``labels`` layer with a ``scene`` column, written
    atomically at the end. While it predicts, the run holds ``out``'s lock (:func:`rs_deeplab.cli.locks.output_lock`):
    a second run on the same ``out`` stops with :class:`~rs_deeplab.cli.locks.OutputBusyError`.
    """
    start = time.perf_counter()
    opts = options or InferOptions()
    check_options(opts)
    ckpt = checkpoint if checkpoint is not None else newest_checkpoint()
    _check_out(out, [*(s for s in scenes if isinstance(s, Path) or not is_remote(s)), ckpt])
    # device and precision checked before any scene (a scheduler's workers are asked by predict_scene)
    here = torch.device("cpu") if opts.scheduler else pick_device(opts.device, option="--device")
    pick_amp(opts.amp, here, option="--amp")
    if opts.runtime == "torch" and model_kind(ckpt) == "exported":
        raise InputError(
            f"--runtime torch: {ckpt} is an exported model, which runs as it was exported; pass the "
            "training checkpoint (.pt) or drop the option"
        )
    # read once, where this process runs it (absolute path: Dask workers run elsewhere and read it themselves)
    # with PyTorch first: the checks need the card, the ONNX export (or int8 model) is made after them
    trained = TrainedModel(
        ckpt.resolve(),
        opts.output_stride,
        runtime=opts.runtime,
        precision=opts.precision,
        strict_device=str(opts.device).strip().lower().startswith("cuda"),
    )
    loaded = (
        replace(trained, runtime="torch", precision="fp32").load(here)
        if model_kind(ckpt) == "checkpoint"
        else trained.load(here)
    )
    loaded = replace(loaded, source=trained)
    card = loaded.card
    if opts.output_stride is None and card.infer.output_stride:  # trained at one output stride, to infer at another
        loaded = loaded.at_output_stride(card.infer.output_stride)
    todo = resolve_scenes(list(scenes) or [str(s) for s in card.infer.scenes], opts.assets, card.band_names)
    if not todo:
        raise InputError(f"no scenes given and {ckpt} records no held-out scenes (infer.scenes); pass SCENE paths")
    if opts.precision == "int8":  # calibrated on the first scene
        loaded = replace(loaded, source=replace(loaded.source, calibration=(str(todo[0]),)))
    crf = _crf_settings(opts, card, ckpt.resolve()) if opts.crf else None
    gsds, headers = [], []
    first: SceneInfo | None = None
    for scene in todo:
        header = scene_info(scene)
        headers.append(header)
        first = first or header
        if (header.count, header.dtype) != (first.count, first.dtype):
            raise InputError(
                f"{header.path} has {header.count} band(s) of {header.dtype} but {first.path} has "
                f"{first.count} of {first.dtype}: one job predicts scenes of one kind (the model's "
                "statistics are for one); run them separately"
            )
        select_bands(header, card.bands, card.in_channels)
        _check_crf_bands(crf, header)
        gsds.append(_scene_gsd(header.path, opts.gsd, card.gsd, header))
    size = opts.size if opts.size is not None else card.infer.size
    stride = opts.stride if opts.stride is not None else card.infer.stride
    check_size_stride(size, stride)
    batch_size = opts.batch_size if opts.batch_size is not None else card.infer.batch_size
    _positive("infer.batch_size", batch_size)
    tta = _tta(opts, card)
    result = InferResult(ckpt)
    rasters = raster_paths(out, todo)
    inputs = [s.resolve() for s in todo if isinstance(s, Path)]
    for r in rasters:
        if r.resolve() in inputs:
            raise InputError(f"--out {out}: the label raster {r} would overwrite the scene; choose another name")
    _check_rasters(rasters, opts, out, [*inputs, ckpt])
    region = len(todo) > 1 and not opts.separate
    if region:
        check_region(
            todo,
            headers,
            rasters,
            out,
            to_crs=opts.to_crs,
            res=opts.res,
            cog=opts.cog,
            classes=card.num_classes if opts.probs else None,
        )
    elif opts.res is not None:
        raise InputError("--res sets the mosaic's pixel size: it needs several scenes (and no --separate)")
    if opts.stac:
        from rs_deeplab.geo.stac_outputs import check_catalog, stac_folder  # pystac: only where a catalog is asked for

        check_catalog(stac_folder(out))
    # one run per --out (x.gpkg and x.tif write the same raster): a second one stops here, before any prediction
    with output_lock(out.with_suffix(".tif") if out.suffix.lower() not in RASTER_SUFFIXES else out, shown=out):
        if not opts.scheduler:  # a scheduler's workers choose the runtime for their own device
            loaded = loaded.on_runtime(here)
        tasks = [
            SceneTask(scene, raster, probs_path(raster) if opts.probs else None, gsd)
            for scene, raster, gsd in zip(todo, rasters, gsds, strict=True)
        ]
        log.info(
            "predicting %d scene(s) → %s",
            len(tasks),
            ", ".join(str(r) for r in rasters[:3]) + (", ..." if len(rasters) > 3 else ""),
        )
        result.rasters = predict_scenes(
            loaded,
            tasks,
            size=size,
            stride=stride,
            batch_size=batch_size,
            window=card.infer.window,
            tta=tta,
            crf=crf,
            cog=opts.cog,
            device=opts.device,
            amp=opts.amp,
            resume=opts.resume,
            scheduler=opts.scheduler,
            quiet=quiet,
        )
        names = scene_names([r.scene for r in result.rasters]) if len(result.rasters) > 1 else [out.stem]
        if region:
            result.region = write_region(
                [r.labels for r in result.rasters],
                out.with_suffix(".vrt"),
                to_crs=opts.to_crs,
                res=opts.res,
                cog=opts.cog,
                probs=[r.probs for r in result.rasters if r.probs] or None,
            )
        if out.suffix.lower() == ".gpkg" and result.region is not None:
            result.polygons = out
            result.polygon_count = vectorize_region(
                result.region,
                names,
                out,
                class_names=card.class_names,
                min_area=opts.min_area,
                simplify=opts.simplify,
                workers=opts.workers,
                quiet=quiet,
            )
        elif out.suffix.lower() == ".gpkg":
            result.polygons, result.polygon_count = _vectorize_all(result.rasters, out, opts, quiet)
        if opts.stac:
            result.catalog = _catalog(result, names, out, card, ckpt)
    result.seconds = time.perf_counter() - start
    return result


def _scene_gsd(name: str, choice: str | float, model_gsd: float | None, header: Any) -> float | None:
    """The GSD to predict a scene at (None: its own pixels); one-line errors for a choice that cannot apply."""
    own = raster_gsd(header.transform, header.crs, (header.height, header.width))
    try:
        return working_gsd(choice, model_gsd, own, name)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _crf_settings(opts: InferOptions, card: ModelCard, model_path: Path) -> CRFSettings:
    """CRF bands (default: the model's first three), kernels, and 16-bit stretch ranges from the band statistics."""
    model_bands = list(card.bands) if card.bands is not None else list(range(1, card.in_channels + 1))
    bands = tuple(opts.crf_bands or model_bands[:3])
    kernels = _crf_params(opts, model_path)
    ranges = None
    if all(b in model_bands for b in bands):  # mean ± 2.5 std of the training tiles: one stretch for every window
        idx = [model_bands.index(b) for b in bands]
        ranges = tuple((card.mean[i] - 2.5 * card.std[i], card.mean[i] + 2.5 * card.std[i]) for i in idx)
    return replace(kernels, bands=bands, band_ranges=ranges, processes=None)  # processes: the cores where it runs


def _crf_params(opts: InferOptions, model_path: Path) -> CRFSettings:
    """The kernels (the rest default): each option given, else the setting the CRF search recorded, else DeepLab's."""
    base = CRFSettings()
    found = recorded_crf(model_path)
    if found is not None:
        base, record = found
        given = [
            o
            for o, v in (
                ("--crf-gaussian", opts.crf_gaussian),
                ("--crf-bilateral", opts.crf_bilateral),
                ("--crf-iterations", opts.crf_iterations),
            )
            if v is not None
        ]
        log.info(
            "CRF kernels searched for this model (%s): bilateral %g,%g,%g, gaussian %g,%g, %d iterations%s",
            record,
            base.bilateral_sxy,
            base.bilateral_srgb,
            base.bilateral_compat,
            base.gaussian_sxy,
            base.gaussian_compat,
            base.iterations,
            f"; given explicitly: {', '.join(given)}" if given else "",
        )
    g = opts.crf_gaussian or (base.gaussian_sxy, base.gaussian_compat)
    b = opts.crf_bilateral or (base.bilateral_sxy, base.bilateral_srgb, base.bilateral_compat)
    iterations = opts.crf_iterations if opts.crf_iterations is not None else base.iterations
    return CRFSettings(
        gaussian_sxy=g[0],
        gaussian_compat=g[1],
        bilateral_sxy=b[0],
        bilateral_srgb=b[1],
        bilateral_compat=b[2],
        iterations=iterations,
    )


def _tta(opts: InferOptions, card: ModelCard) -> TTA:
    scales = opts.scales or tuple(float(s) for s in card.infer.scales)
    if opts.tta or card.infer.tta:
        return TTA(scales=scales, hflip=True, vflip=card.scheme not in GROUND_SCHEMES)
    return TTA(scales=scales)


def _vectorize_all(rasters: Sequence[SceneResult], out: Path, opts: InferOptions, quiet: bool) -> tuple[Path, int]:
    """Each scene's polygons on its own into one GeoPackage, with the scene's name (one scene, or ``--separate``)."""
    from rs_deeplab.vectorize import vectorize

    count = 0
    names = scene_names([r.scene for r in rasters])  # as in the rasters' names
    with staged(out) as staging:
        for i, r in enumerate(rasters):
            summary = vectorize(
                r.labels,
                staging,
                class_names=list(r.class_names),
                min_area=opts.min_area,
                simplify=opts.simplify,
                layer="labels",
                extra_columns={"scene": names[i]},
                to_crs=opts.to_crs,
                mode="w" if i == 0 else "a",
                workers=opts.workers,
                quiet=quiet,
            )
            count += summary.polygons
    return out, count


def _catalog(result: InferResult, names: Sequence[str], out: Path, card: ModelCard, ckpt: Path) -> Path:
    """The run's STAC Collection and Items (:mod:`rs_deeplab.geo.stac_outputs`)."""
    from rs_deeplab.geo.stac_outputs import RegionAssets, SceneAssets, stac_folder, write_stac

    scenes = [SceneAssets(name, r.labels, r.probs, r.scene) for name, r in zip(names, result.rasters, strict=True)]
    region = result.region
    assets = RegionAssets(
        None if region is None else region.vrt, None if region is None else region.cog, result.polygons
    )
    model = f"{card.architecture.describe()} ({ckpt.parent.name}/{ckpt.name})"
    return write_stac(
        stac_folder(out),
        scenes,
        assets,
        class_names=card.class_names,
        colours=card.colormap,
        model=model,
        collection_id=out.stem,
    )
