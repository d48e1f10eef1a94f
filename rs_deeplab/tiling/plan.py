"""How the tiling work is cut: pending rows, tasks sized to a strip's bytes, workers, and train/val blocks."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.grid import window_grid, window_rows
from rs_deeplab.runtime.cluster import default_workers
from rs_deeplab.tiling.crops import (
    CropSettings,
    Record,
    SceneJob,
    load_part,
    window_blocks,
    window_split,
)
from rs_deeplab.tiling.executor import TaskSpec

log = logging.getLogger("rs_deeplab.tiling")

TASK_STRIP_BYTES = 1 << 30
"""Most bytes one task holds for its strip of rows (pixels, labels and decoding temporaries)."""


COMPRESSED_RATIO = 2
"""How much smaller a crop written with a codec is taken to be, for the free-space check (:func:`disk_bytes`)."""
FILE_OVERHEAD = 4096
"""Bytes a crop file takes beyond its pixels, about: TIFF header and directory, file system block rounding."""
PARALLEL_MIN_BYTES = 256 << 20
"""Below this many bytes of crops to write, the default runs in this process: starting worker processes costs
more than it saves (see bench/RESULTS.md, Tiler)."""


def pending_work(jobs: Sequence[SceneJob], settings: CropSettings) -> tuple[list[Record], dict[str, list[int]]]:
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


def row_bytes(job: SceneJob, settings: CropSettings) -> int:
    """Bytes of crops one row of windows of ``job`` writes."""
    crops = len(window_grid(1, job.width, settings.size, settings.stride))
    return crops * settings.size**2 * job.pixel_bytes


def disk_bytes(jobs: Sequence[SceneJob], todo: Mapping[str, Sequence[int]], settings: CropSettings) -> int:
    """About the disk space the crops still to cut take (checked against the free space before any is written).

    Uncompressed crops (the default) take their pixels plus a file system block of header and rounding each;
    with a codec they are taken as half that: aerial imagery deflates about 1.5-2.5×, label crops far more. Crops
    left out later (below ``--min-valid``, on a train/val border) make it an upper bound.
    """
    total = 0
    for job in jobs:
        rows = len(todo.get(job.key, ()))
        files = rows * len(window_grid(1, job.width, settings.size, settings.stride)) * (2 if job.label else 1)
        total += rows * row_bytes(job, settings) // (1 if settings.compress is None else COMPRESSED_RATIO)
        total += files * FILE_OVERHEAD
    return total


def choose_workers(workers: int | None, scheduler: str | None, pending_bytes: int) -> int | None:
    """Workers to start: as asked; else one per core, or none (this process) when the job is too small to pay
    for starting worker processes (less than ``PARALLEL_MIN_BYTES`` of crops to write).
    """  # noqa: D205
    if workers is not None or scheduler:
        return workers
    return 1 if pending_bytes < PARALLEL_MIN_BYTES else default_workers()


def plan_tasks(
    jobs: Sequence[SceneJob],
    todo: Mapping[str, Sequence[int]],
    in_strips: Mapping[str, bool],
    settings: CropSettings,
    workers: int,
) -> list[TaskSpec]:
    """Group the unfinished rows of windows into tasks: about two per worker, each a consecutive strip of rows.

    Few large tasks keep the rows read twice (where two tasks' strips overlap) rare; two per worker still lets a
    fast worker take over the work of a slow one.

    PNG/JPEG scenes are one task each (their decoders restart from the top for every strip).
    """
    total_rows = sum(len(rows) for rows in todo.values())
    per_task = max(1, math.ceil(total_rows / (2 * max(1, workers))))
    tasks = []
    for job in jobs:
        rows = list(todo.get(job.key, ()))
        if not rows:
            continue
        row_bytes = settings.stride * job.width * (job.pixel_bytes + 8)  # + colour labels and decoding temporaries
        step = len(rows) if not in_strips[job.key] else max(1, min(per_task, TASK_STRIP_BYTES // row_bytes))
        for i in range(0, len(rows), step):
            chunk = tuple(rows[i : i + step])
            crops = len(window_grid(1, job.width, settings.size, settings.stride)) * len(chunk)
            tasks.append(TaskSpec(job, chunk, settings, crops))
    return tasks


def _block_areas(frame: Affine, width: int, height: int, span: set[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Part of each block of ``span`` a ``width × height`` scene covers (``frame``: pixel → block coordinates)."""
    xs, ys = zip(*(frame @ (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))), strict=True)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return {(c, r): max(0.0, min(x1, c + 1) - max(x0, c)) * max(0.0, min(y1, r + 1) - max(y0, r)) for c, r in span}


def check_val_fraction(fraction: float) -> None:
    """Refuse a held-out fraction outside (0, 1)."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--val-fraction must be a fraction strictly between 0 and 1, got {fraction}")


DEFAULT_BLOCK_SIDES = (4, 3, 2, 1)
"""Held-out block sides tried without ``--block``, in crop sizes: the largest that leaves crops in both splits."""


def hold_out_blocks(
    jobs: Sequence[SceneJob],
    transforms: Mapping[str, Any],
    crss: Mapping[str, Any],
    *,
    size: int,
    stride: int,
    fraction: float,
    block: int | None,
    seed: int,
) -> list[SceneJob]:
    """:func:`assign_val_blocks` with ``block``; without one, blocks of 4 crop sizes, shrunk to fit small scenes.

    Large blocks keep most crops whole (a crop on a train/val border is dropped); scenes smaller than two such
    blocks get the largest side of :data:`DEFAULT_BLOCK_SIDES` that leaves crops in both splits.

    Raises:
        InputError: As :func:`assign_val_blocks`; without ``block``, when no side down to the crop size works.
    """
    if block is not None:
        return assign_val_blocks(
            jobs, transforms, crss, size=size, stride=stride, fraction=fraction, block=block, seed=seed
        )
    check_val_fraction(fraction)
    for factor in DEFAULT_BLOCK_SIDES:
        try:
            held = assign_val_blocks(
                jobs, transforms, crss, size=size, stride=stride, fraction=fraction, block=factor * size, seed=seed
            )
        except InputError:
            continue
        if factor != DEFAULT_BLOCK_SIDES[0]:
            side = factor * size
            log.info(
                "--val-fraction: the scenes are too small for blocks of %d pixels (4 x --size); held-out "
                "blocks are %d pixels (--block %d)",
                DEFAULT_BLOCK_SIDES[0] * size,
                side,
                side,
            )
        return held
    raise InputError(
        f"--val-fraction {fraction}: no block side from {DEFAULT_BLOCK_SIDES[0] * size} down to {size} pixels (the "
        "crop size) leaves crops in both splits of these scenes; give a smaller --size or more scenes"
    )


def assign_val_blocks(
    jobs: Sequence[SceneJob],
    transforms: Mapping[str, Any],
    crss: Mapping[str, Any],
    *,
    size: int,
    stride: int,
    fraction: float,
    block: int,
    seed: int,
) -> list[SceneJob]:
    """Hold out about ``fraction`` of the scene area as ``val`` in seeded random square ``block``-pixel blocks.

    Blocks are taken in a random order until they hold ``fraction`` of the area (partial blocks at scene edges
    count for the part they cover); at least one block goes to each split, the rest is ``train``.

    Blocks lie on the pixel grid of the first scene (by key) of each CRS, so scenes that overlap on the ground
    share them; scenes without a CRS each have their own. Crops touching blocks of both splits are dropped (see
    :func:`rs_deeplab.tiling.crops.window_split`), so no pixel is in both.

    Raises:
        InputError: ``fraction`` not strictly between 0 and 1, ``block`` smaller than ``size``, fewer than two
            blocks, or a split left without crops.
    """
    check_val_fraction(fraction)
    if block < size:
        raise InputError(f"--block {block} is smaller than the crop size {size}; give a block of at least {size}")
    origin: dict[str, Any] = {}
    frames, spans = {}, {}
    for job in jobs:
        crs = crss[job.key]
        group = crs.to_string() if crs is not None else f"scene:{job.key}"
        first = origin.setdefault(group, transforms[job.key])
        frame = Affine.scale(1 / block) @ ~first @ transforms[job.key]
        frames[job.key] = (group, frame)
        spans[job.key] = window_blocks(Window(0, 0, job.width, job.height), tuple(frame)[:6])
    blocks = sorted({(frames[k][0], c, r) for k, span in spans.items() for c, r in span})
    if len(blocks) < 2:
        raise InputError(
            f"--val-fraction needs at least two blocks but the scenes fit in one block of {block} pixels; "
            "give a smaller --block"
        )
    area: dict[tuple[str, int, int], float] = {}
    for job in jobs:
        group, frame = frames[job.key]
        for (c, r), covered in _block_areas(frame, job.width, job.height, spans[job.key]).items():
            area[(group, c, r)] = area.get((group, c, r), 0.0) + covered
    order = np.random.default_rng(seed).permutation(len(blocks))
    held = np.cumsum([area.get(blocks[i], 0.0) for i in order])
    k = min(len(blocks) - 1, max(1, int(np.searchsorted(held, fraction * held[-1])) + 1))
    chosen = {blocks[i] for i in order[:k]}
    out, counts = [], Counter[str]()
    for job in jobs:
        group, frame = frames[job.key]
        val = tuple(sorted((c, r) for c, r in spans[job.key] if (group, c, r) in chosen))
        new = dataclasses.replace(job, split="", block_transform=tuple(frame)[:6], val_blocks=val)
        counts.update(window_split(new, w, frozenset(val)) for w in window_grid(job.height, job.width, size, stride))
        out.append(new)
    for split in ("train", "val"):
        if not counts[split]:
            raise InputError(
                f"--val-fraction {fraction} with --block {block} leaves no {split} crops (every {split} block is "
                "too small or bordered by the other split); give a smaller --block or more scenes"
            )
    return out
