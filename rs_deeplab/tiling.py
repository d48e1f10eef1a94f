"""Cut scenes into georeferenced training crops on a Dask cluster: validated paths in, crops and an index out."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rs_deeplab.classes import IGNORE_INDEX, get_scheme
from rs_deeplab.crops import IMAGES, LABELS, CropSettings, Record, SceneJob, load_part, remove_stale_temporaries
from rs_deeplab.errors import InputError
from rs_deeplab.grid import check_size_stride, window_grid, window_rows
from rs_deeplab.labels import LabelSource, check_label_raster, is_vector, vector_source
from rs_deeplab.raster import absolute, atomic_output, open_raster
from rs_deeplab.scheduling import TaskSpec, check_executor_options, default_workers, open_executor
from rs_deeplab.tileindex import build_index, write_index

log = logging.getLogger("rs_deeplab.tiling")

DEFAULT_COMPRESS: str | None = None
"""Crop codec: uncompressed writes fastest here (see bench/RESULTS.md, Tiler)."""
COMPRESS_CHOICES = ("none", "deflate", "lzw", "zstd")
INDEX_NAME, MANIFEST_NAME = "index.gpkg", "tiling.json"
TASK_BAND_BYTES = 1 << 30
"""Most bytes one task holds for its band of rows (pixels, labels and decoding temporaries)."""
LOCAL_PROCESSES = True
"""Local workers are processes by default (see ``tile_scenes(processes=...)`` and bench/RESULTS.md, Tiler)."""
PARALLEL_MIN_BYTES = 256 << 20
"""Below this many bytes of crops to write, the default runs in this process: starting worker processes costs
more than it saves (see bench/RESULTS.md, Tiler)."""


@dataclass(frozen=True)
class SceneSpec:
    """A scene to tile: its image, optional labels, the split it belongs to and an optional output key.

    Attributes:
        image: Raster to cut (any GDAL raster; PNG/JPEG keep pixel coordinates).
        label: Labels on the same grid (colour-coded or class-index raster) or vector polygons, or None.
        split: Value of the index's ``split`` column (``train``, ``val``, ...).
        key: Prefix of the crop file names; the image's file stem when None. Must be unique in a run.
    """

    image: str | Path
    label: str | Path | None = None
    split: str = "train"
    key: str | None = None


@dataclass(frozen=True)
class TileSummary:
    """What a tiling run produced.

    Attributes:
        out: Output folder. index: The GeoPackage index. images, labels: Crop folders (labels None without labels).
        scenes: Scenes tiled. windows: Crop windows over all scenes. crops: Crops in the index.
        skipped: Windows below ``min_valid`` (not written). resumed: Windows already done by an earlier run.
        seconds: Wall time. cluster: How the work ran.
    """

    out: Path
    index: Path
    images: Path
    labels: Path | None
    scenes: int
    windows: int
    crops: int
    skipped: int
    resumed: int
    seconds: float
    cluster: str

    def as_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` with paths as text (for logs and JSON)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def _check_options(size: int, stride: int, min_valid: float, compress: str | None) -> None:
    check_size_stride(size, stride)
    if not 0.0 <= min_valid <= 1.0:
        raise InputError(f"--min-valid must be a fraction between 0 and 1, got {min_valid}")
    if (compress or "none") not in COMPRESS_CHOICES:
        raise InputError(f"unknown crop codec {compress!r}; choose one of {', '.join(COMPRESS_CHOICES)}")


def _label_source(spec: SceneSpec, src: Any, scheme_name: str | None, vector: Mapping[str, Any]) -> LabelSource | None:
    """Validate a scene's labels against the open scene dataset."""
    if spec.label is None:
        return None
    scheme = get_scheme(scheme_name) if scheme_name else None
    if is_vector(spec.label):
        return vector_source(spec.label, scheme=scheme, scene_crs=src.crs, **vector)
    with open_raster(spec.label) as lab:
        check_label_raster(src, lab, scheme)
    return LabelSource(absolute(spec.label))


def prepare_jobs(
    scenes: Sequence[SceneSpec], *, scheme: str | None, vector: Mapping[str, Any]
) -> tuple[list[SceneJob], dict[str, Any], dict[str, Any], dict[str, bool]]:
    """Open and check every scene and label before anything is written.

    Returns:
        Jobs sorted by key, and per key: the scene transform, its CRS and whether it can be read in bands of
        rows (GeoTIFF) or must be read whole by one task (PNG/JPEG decode from the top).
    """
    if not scenes:
        raise InputError("no scenes to tile; pass at least one raster or a dataset folder with --preset")
    jobs, transforms, crss, banded = [], {}, {}, {}
    for spec in scenes:
        with open_raster(spec.image) as src:
            key = spec.key or Path(spec.image).stem
            if key in transforms:
                raise InputError(f"two scenes would both write crops named {key}_*; give them different file names")
            if len(set(src.dtypes)) > 1:
                raise InputError(f"{spec.image}: bands of different data types {src.dtypes}; convert to one type")
            label = _label_source(spec, src, scheme, vector)
            pixel_bytes = src.count * np.dtype(src.dtypes[0]).itemsize + (label is not None)
            image = absolute(spec.image)
            jobs.append(SceneJob(key, image, label, spec.split, src.height, src.width, pixel_bytes))
            transforms[key], crss[key], banded[key] = src.transform, src.crs, src.driver in ("GTiff", "VRT")
    if len({crs is None for crs in crss.values()}) > 1:
        raise InputError("some scenes are georeferenced and some are not; tile them into separate --out folders")
    jobs.sort(key=lambda j: j.key)
    return jobs, {j.key: transforms[j.key] for j in jobs}, {j.key: crss[j.key] for j in jobs}, banded


def _manifest(settings: CropSettings, jobs: Sequence[SceneJob]) -> dict[str, Any]:
    """Everything that decides the output files, as plain JSON values (written to ``tiling.json``)."""
    manifest = {
        "version": 1, "size": settings.size, "stride": settings.stride, "min_valid": settings.min_valid,
        "compress": settings.compress or "none", "scheme": settings.scheme,
        "scenes": [dataclasses.asdict(j) for j in jobs],
    }  # fmt: skip
    result: dict[str, Any] = json.loads(json.dumps(manifest))
    return result


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to mix crops of a different tiling run into ``out``."""
    path = out / MANIFEST_NAME
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        old = {}
    diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    if diff:
        raise InputError(
            f"{out} holds crops of a different tiling run ({', '.join(diff)} differ); "
            "choose another --out or delete that folder"
        )


def _prepare_output(out: Path, manifest: dict[str, Any], labelled: bool) -> None:
    """Create the output folders, drop a killed run's temporary files and record this run's settings."""
    for folder in (out, out / IMAGES, *([out / LABELS] if labelled else [])):
        folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    with atomic_output(out / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _pending(jobs: Sequence[SceneJob], settings: CropSettings) -> tuple[list[Record], dict[str, list[int]]]:
    """Records of window rows an earlier run finished, and the rows (per scene key) still to do."""
    records: list[Record] = []
    todo: dict[str, list[int]] = {}
    for job in jobs:
        for r in window_rows(window_grid(job.height, job.width, settings.size, settings.stride)):
            part = load_part(settings.out, job, r)
            if part is None:
                todo.setdefault(job.key, []).append(r)
            else:
                records.extend(part)
    return records, todo


def _row_bytes(job: SceneJob, settings: CropSettings) -> int:
    """Bytes of crops one row of windows of ``job`` writes."""
    crops = len(window_grid(1, job.width, settings.size, settings.stride))
    return crops * settings.size**2 * job.pixel_bytes


def choose_workers(workers: int | None, scheduler: str | None, pending_bytes: int) -> int | None:
    """Workers to start: as asked; else one per core, or none (this process) when the job is too small to pay
    for starting worker processes (less than ``PARALLEL_MIN_BYTES`` of crops to write).
    """  # noqa: D205
    if workers is not None or scheduler:
        return workers
    return 1 if pending_bytes < PARALLEL_MIN_BYTES else default_workers()


def plan_tasks(
    jobs: Sequence[SceneJob], todo: Mapping[str, Sequence[int]], banded: Mapping[str, bool], settings: CropSettings,
    workers: int,
) -> list[TaskSpec]:  # fmt: skip
    """Group the unfinished rows of windows into tasks: about two per worker, each a consecutive band of rows.

    Few large tasks keep the rows read twice (where two tasks' bands overlap) rare; two per worker still lets a
    fast worker take over the work of a slow one.

    PNG/JPEG scenes are one task each (their decoders restart from the top for every band).
    """
    total_rows = sum(len(rows) for rows in todo.values())
    per_task = max(1, math.ceil(total_rows / (2 * max(1, workers))))
    tasks = []
    for job in jobs:
        rows = list(todo.get(job.key, ()))
        if not rows:
            continue
        row_bytes = settings.stride * job.width * (job.pixel_bytes + 8)  # + colour labels and decoding temporaries
        step = len(rows) if not banded[job.key] else max(1, min(per_task, TASK_BAND_BYTES // row_bytes))
        for i in range(0, len(rows), step):
            chunk = tuple(rows[i : i + step])
            crops = len(window_grid(1, job.width, settings.size, settings.stride)) * len(chunk)
            tasks.append(TaskSpec(job, chunk, settings, crops))
    return tasks


def tile_scenes(
    scenes: Sequence[SceneSpec | str | Path],
    out: str | Path = "tiles",
    *,
    size: int = 512,
    stride: int | None = None,
    min_valid: float = 0.0,
    scheme: str | None = None,
    label_field: str | None = None,
    label_map: Mapping[str, int] | None = None,
    label_fill: int = IGNORE_INDEX,
    compress: str | None = DEFAULT_COMPRESS,
    workers: int | None = None,
    scheduler: str | None = None,
    processes: bool = LOCAL_PROCESSES,
    quiet: bool = False,
) -> TileSummary:
    """Cut scenes (and their labels) into ``size × size`` GeoTIFF crops every ``stride`` pixels, with an index.

    Writes ``out/images/<key>_<row>_<col>.tif``, ``out/labels/...`` (uint8 class ids, 255 ignore) and
    ``out/index.gpkg`` (layers ``tiles`` and ``classes``). Everything is checked before anything is written; each
    file is written under a temporary name and renamed, and re-running the same call skips finished work.

    Args:
        scenes: Scenes as :class:`SceneSpec` or bare image paths (no labels, split ``train``).
        out: Output folder (created).
        size: Crop side in pixels.
        stride: Step between crops; ``size // 2`` when None. At most ``size``.
        min_valid: Crops whose fraction of valid (non-nodata, non-padding) pixels is below this are skipped.
        scheme: Class scheme (``potsdam``, ``loveda``, ...) decoding colour labels and naming the classes.
        label_field: Attribute holding the class of vector labels.
        label_map: Vector attribute value → class id (class names of ``scheme`` and ids map by themselves).
        label_fill: Class id of pixels no polygon covers (vector labels).
        compress: Crop codec: None/``none``, ``deflate``, ``lzw`` or ``zstd``.
        workers: Local worker processes; one per core when None, and none (this process) when the job is too
            small to pay for starting them. Ignored with ``scheduler``.
        processes: Local workers as (forked) processes; threads of this process when False. Threads start at
            once but share the GIL, which rasterio holds for a good part of each crop (bench/RESULTS.md, Tiler).
        scheduler: Address of a running Dask scheduler (``tcp://host:8786``) to run the tasks on instead.
        quiet: No progress bar.

    Raises:
        InputError, RasterError: Bad arguments or inputs (nothing is written).
    """
    start = time.perf_counter()
    if stride is None:
        stride = max(1, size // 2) if isinstance(size, int) and size > 0 else size
    compress = None if compress in (None, "none") else compress
    _check_options(size, stride, min_valid, compress)
    check_executor_options(workers, scheduler)
    class_scheme = get_scheme(scheme) if scheme else None
    specs = [s if isinstance(s, SceneSpec) else SceneSpec(s) for s in scenes]
    vector = {"field": label_field, "mapping": label_map, "fill": label_fill}
    jobs, transforms, crss, banded = prepare_jobs(specs, scheme=scheme, vector=vector)
    out = Path(out)
    settings = CropSettings(str(out.resolve()), size, stride, float(min_valid), compress, scheme)
    manifest = _manifest(settings, jobs)
    _check_manifest(out, manifest)

    labelled = any(j.label is not None for j in jobs)
    _prepare_output(out, manifest, labelled)
    records, todo = _pending(jobs, settings)
    resumed = len(records)
    cluster = "nothing to do"
    if todo:
        pending_bytes = sum(len(todo.get(j.key, ())) * _row_bytes(j, settings) for j in jobs)
        n = choose_workers(workers, scheduler, pending_bytes)
        with open_executor(n, scheduler, processes=processes) as executor:
            cluster = executor.description
            tasks = plan_tasks(jobs, todo, banded, settings, executor.workers)
            records.extend(executor.run(tasks, quiet=quiet))

    kept = [r for r in records if r["written"]]
    tiles, classes = build_index(kept, transforms=transforms, crss=crss, scheme=class_scheme)
    index = write_index(out / INDEX_NAME, tiles, classes)
    return TileSummary(
        out, index, out / IMAGES, out / LABELS if labelled else None, len(jobs), len(records), len(kept),
        len(records) - len(kept), resumed, time.perf_counter() - start, cluster,
    )  # fmt: skip
