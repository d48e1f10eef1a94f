"""Cut scenes into georeferenced training crops on a Dask cluster: validated paths in, crops and an index out."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rs_deeplab.cli.console import held_logs
from rs_deeplab.cli.diskspace import check_free_space, out_of_space
from rs_deeplab.cli.errors import DiskFullError, InputError
from rs_deeplab.cli.locks import output_lock
from rs_deeplab.geo.grid import check_size_stride
from rs_deeplab.labels.classes import IGNORE_INDEX
from rs_deeplab.remote.scenes import reads_remote, remote_env
from rs_deeplab.runtime.cluster import check_cluster_options
from rs_deeplab.tiling.checks import (
    check_label_fill_seed,
    check_output,
    check_positive,
    writing,
)
from rs_deeplab.tiling.crops import (
    IMAGES,
    LABELS,
    CropSettings,
    remove_stale_temporaries,
)
from rs_deeplab.tiling.executor import open_executor
from rs_deeplab.tiling.index import build_index, merge_index, read_index, write_index
from rs_deeplab.tiling.manifest import (
    INDEX_NAME,
    build_manifest,
    check_append,
    check_manifest,
    prepare_output,
    read_manifest,
)
from rs_deeplab.tiling.plan import (
    choose_workers,
    disk_bytes,
    hold_out_blocks,
    pending_work,
    plan_tasks,
    row_bytes,
)
from rs_deeplab.tiling.scenes import SceneSpec, prepare_jobs
from rs_deeplab.tiling.verify import paths_to_read

log = logging.getLogger("rs_deeplab.tiling.tiler")

DEFAULT_COMPRESS: str | None = None
"""Crop codec: uncompressed writes fastest here (see bench/RESULTS.md, Tiler)."""
COMPRESS_CHOICES = ("none", "deflate", "lzw", "zstd")
LOCAL_PROCESSES = True
"""Local workers are processes by default (see ``tile_scenes(processes=...)`` and bench/RESULTS.md, Tiler)."""


@dataclass(frozen=True)
class TileSummary:
    """What a tiling run produced.

    Attributes:
        out: Output folder. index: The GeoPackage index. images, labels: Crop folders (labels None without labels).
        scenes: Scenes tiled. windows: Crop windows over all scenes. crops: Crops in the index.
        skipped: Windows below ``min_valid`` (not written). resumed: Windows already done by an earlier run.
        seconds: Wall time. cluster: How the work ran. dropped: Windows on a train/val block border (not written).
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
    dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` with paths as text (for logs and JSON)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def _check_options(size: int, stride: int, min_valid: float, compress: str | None) -> None:
    check_size_stride(size, stride)
    if not 0.0 <= min_valid <= 1.0:
        raise InputError(f"--min-valid must be a fraction between 0 and 1, got {min_valid}")
    if (compress or "none") not in COMPRESS_CHOICES:
        raise InputError(f"unknown crop codec {compress!r}; choose one of {', '.join(COMPRESS_CHOICES)}")


def tile_scenes(
    scenes: Sequence[SceneSpec | str | Path],
    out: str | Path = "tiles",
    *,
    size: int = 512,
    stride: int | None = None,
    min_valid: float = 0.0,
    scheme: str | None = None,
    classes: Sequence[str] | None = None,
    label_field: str | None = None,
    label_map: Mapping[str, int] | None = None,
    label_fill: int = IGNORE_INDEX,
    val_fraction: float | None = None,
    block: int | None = None,
    seed: int = 0,
    append: bool = False,
    check_labels: bool = True,
    compress: str | None = DEFAULT_COMPRESS,
    workers: int | None = None,
    scheduler: str | None = None,
    processes: bool = LOCAL_PROCESSES,
    quiet: bool = False,
) -> TileSummary:
    """Cut scenes (and their labels) into ``size × size`` GeoTIFF crops every ``stride`` pixels, with an index.

    Writes ``out/images/<key>_<row>_<col>.tif``, ``out/labels/...`` (uint8 class ids, 255 ignore) and
    ``out/index.gpkg`` (layers ``tiles`` and ``classes``). Everything is checked before anything is written (block
    compressed scenes are decoded through, :mod:`rs_deeplab.tiling.verify`); each file is written under a
    temporary name and renamed, and re-running the same call skips finished work.

    Args:
        scenes: Scenes as :class:`SceneSpec` or bare image paths (no labels, split ``train``). A label file given
            to several scenes is shared (vector layers as always; a raster on another grid is warped per scene).
        out: Output folder (created).
        size: Crop side in pixels.
        stride: Step between crops; ``size // 2`` when None. At most ``size``.
        min_valid: Crops whose fraction of valid (non-nodata, non-padding) pixels is below this are skipped.
        scheme: Class scheme (``potsdam``, ``loveda``, ...) decoding colour labels and naming the classes.
        classes: Names of class ids 0..n-1 without a scheme; vector values may be these names. Without either,
            vector values that are not ids (``building``) name classes by themselves, in sorted order.
        label_field: Attribute holding the class of vector labels.
        label_map: Vector attribute value → class id (class names of ``scheme`` and ids map by themselves).
        label_fill: Class id of pixels no polygon covers (vector labels).
        val_fraction: Hold out about this fraction of square blocks as split ``val`` (the rest ``train``, crops on
            the border between them dropped); the scenes' own splits are then not used.
        block: Side of those blocks in pixels; when None, ``4 * size`` shrunk to fit small scenes (see
            :func:`rs_deeplab.tiling.plan.hold_out_blocks`).
        seed: Seed of the random choice of validation blocks.
        append: Add these scenes to the crops and index already in ``out`` (same settings, classes, bands and
            dtype); without it a folder of another run is refused.
        check_labels: Refuse a scene whose labels come out entirely ignore (255) before writing anything (a
            decimated read; dataset presets turn it off, where a few unlabelled images are normal).
        compress: Crop codec: None/``none``, ``deflate``, ``lzw`` or ``zstd``.
        workers: Local worker processes; one per core when None, and none (this process) when the job is too
            small to pay for starting them. Ignored with ``scheduler``.
        processes: Local workers as (forked) processes; threads of this process when False. Threads start at
            once but share the GIL, which rasterio holds for a good part of each crop (bench/RESULTS.md, Tiler).
        scheduler: Address of a running Dask scheduler (``tcp://host:8786``) to run the tasks on instead. It must
            answer within 5 s (:data:`rs_deeplab.runtime.cluster.CONNECT_SECONDS`) before anything is written; a worker
            killed mid-task is survived, and with no worker left for 30 s or the scheduler lost the run stops with
            a :class:`~rs_deeplab.cli.errors.ClusterError` (finished rows are kept: the same call resumes).
        quiet: No progress bar.

    Raises:
        InputError, RasterError: Bad arguments or inputs (nothing is written).
        OutputBusyError: Another run is writing ``out`` (:func:`rs_deeplab.cli.locks.output_lock`; nothing is read or
            written).
    """
    start = time.perf_counter()
    if stride is None:
        stride = max(1, size // 2) if isinstance(size, int) and size > 0 else size
    compress = None if compress in (None, "none") else compress
    _check_options(size, stride, min_valid, compress)
    check_cluster_options(workers, scheduler)
    check_positive(block=block)
    check_label_fill_seed(label_fill, seed)
    if scheme and classes:
        raise InputError("--classes names the classes of labels without a --scheme; give one of them")
    out = Path(out)
    specs = [s if isinstance(s, SceneSpec) else SceneSpec(s) for s in scenes]
    check_output(out, [p for s in specs for p in (s.image, s.label) if p is not None])
    with output_lock(out):  # one run per folder: a second one stops here, before it reads or writes anything
        if append and not classes and not scheme:
            classes = (read_manifest(out) or {}).get("classes")
        with held_logs():  # warnings about the inputs only once every check has passed
            vector = {"field": label_field, "mapping": label_map, "fill": label_fill}
            prepared = prepare_jobs(
                specs, scheme=scheme, vector=vector, classes=tuple(classes or ()), check_labels=check_labels
            )
            jobs, transforms, crss, in_strips = prepared.jobs, prepared.transforms, prepared.crss, prepared.in_strips
            if val_fraction is not None:
                jobs = hold_out_blocks(
                    jobs, transforms, crss, size=size, stride=stride, fraction=val_fraction, block=block, seed=seed
                )
            settings = CropSettings(
                str(out.resolve()), size, stride, float(min_valid), compress, scheme, prepared.classes
            )
            manifest = build_manifest(settings, jobs)
            if append:
                manifest = check_append(out, manifest, prepared)
            else:
                check_manifest(out, manifest)

        labelled = any(j.label is not None for j in jobs)
        records, todo = pending_work(jobs, settings)
        needed = disk_bytes(jobs, todo, settings)
        check_free_space(out, needed, "the crops")  # before the first file: a run that cannot fit writes nothing
        resumed = len(records)
        cluster = "nothing to do"
        remote = any(reads_remote(j.image) or (j.label is not None and reads_remote(j.label.path)) for j in jobs)
        try:
            with contextlib.ExitStack() as stack:
                executor = None
                if todo:  # the scheduler answers and every pending scene decodes before anything is written
                    pending_bytes = sum(len(todo.get(j.key, ())) * row_bytes(j, settings) for j in jobs)
                    n = choose_workers(workers, scheduler, pending_bytes)
                    executor = stack.enter_context(open_executor(n, scheduler, processes=processes))
                    stack.enter_context(remote_env() if remote else contextlib.nullcontext())
                    executor.read_through(paths_to_read([j for j in jobs if j.key in todo]))
                with writing(out):
                    prepare_output(out, manifest, labelled)
                if executor is not None:
                    cluster = executor.description
                    tasks = plan_tasks(jobs, todo, in_strips, settings, executor.workers)
                    records.extend(executor.run(tasks, quiet=quiet))
                    if scheduler:  # every task has finished: what remains was left by workers killed mid-write
                        remove_stale_temporaries(out)
        except BaseException as exc:
            if not scheduler:  # local workers are gone: their half-written files go now, not at the re-run
                remove_stale_temporaries(out)
            if isinstance(exc, DiskFullError) and exc.errno_code is not None and exc.path is not None:
                raise out_of_space(exc.path, exc.errno_code, needed, "the crops left") from None
            raise

        kept = [r for r in records if r["written"]]
        dropped = sum(1 for r in records if not r["split"])
        scheme_of = settings.class_scheme()
        tiles, table = build_index(kept, transforms=transforms, crss=crss, scheme=scheme_of, mapping=prepared.mapping)
        if append and (out / INDEX_NAME).exists():
            tiles, table = merge_index(*read_index(out / INDEX_NAME), tiles, table, replace=[j.key for j in jobs])
        with writing(out):
            index = write_index(out / INDEX_NAME, tiles, table)
        return TileSummary(
            out,
            index,
            out / IMAGES,
            out / LABELS if labelled else None,
            len(jobs),
            len(records),
            len(kept),
            len(records) - len(kept) - dropped,
            resumed,
            time.perf_counter() - start,
            cluster,
            dropped,
        )
