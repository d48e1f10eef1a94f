"""Cut scenes into georeferenced training crops on a Dask cluster: validated paths in, crops and an index out."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

from rs_deeplab.classes import IGNORE_INDEX, ClassScheme, get_scheme
from rs_deeplab.cluster import check_cluster_options, default_workers
from rs_deeplab.errors import InputError, RasterError
from rs_deeplab.grid import check_size_stride, window_grid, window_rows
from rs_deeplab.raster import absolute, atomic_output, open_raster
from rs_deeplab.remote import is_remote, reads_remote, remote_env, scene_stem, stat_remote
from rs_deeplab.tiling.checks import (
    check_label_fill_seed,
    check_output,
    check_positive,
    check_readable,
    reading,
    warn_no_crs,
    writing,
)  # fmt: skip
from rs_deeplab.tiling.crops import (
    IMAGES,
    LABELS,
    CropSettings,
    Record,
    SceneJob,
    load_part,
    remove_stale_temporaries,
    window_blocks,
    window_split,
)  # fmt: skip
from rs_deeplab.tiling.executor import TaskSpec, open_executor
from rs_deeplab.tiling.index import build_index, merge_index, read_index, write_index
from rs_deeplab.tiling.labels import (
    LabelSource,
    auto_class_names,
    check_label_coverage,
    check_label_raster,
    custom_scheme,
    is_vector,
    resolve_mapping,
    vector_values,
)  # fmt: skip

log = logging.getLogger("rs_deeplab.tiling.tiler")

DEFAULT_COMPRESS: str | None = None
"""Crop codec: uncompressed writes fastest here (see bench/RESULTS.md, Tiler)."""
COMPRESS_CHOICES = ("none", "deflate", "lzw", "zstd")
INDEX_NAME, MANIFEST_NAME = "index.gpkg", "tiling.json"
TASK_STRIP_BYTES = 1 << 30
"""Most bytes one task holds for its strip of rows (pixels, labels and decoding temporaries)."""
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


@dataclass(frozen=True)
class _Scene:
    """What the checks learnt about one scene (its open dataset is closed again)."""

    spec: SceneSpec
    key: str
    height: int
    width: int
    transform: Any
    crs: Any
    in_strips: bool
    pixel_bytes: int
    bands: tuple[int, str]


def _raster_label(spec: SceneSpec, src: Any, scheme: ClassScheme | None, shared: bool) -> LabelSource:
    """A label raster on the scene grid, or (shared by several scenes) one warped onto each scene's grid."""
    assert spec.label is not None
    with open_raster(spec.label) as lab:
        check_readable(lab)
        try:
            check_label_raster(src, lab, scheme)
            return LabelSource(absolute(spec.label))
        except RasterError:
            if not shared:
                raise
        if lab.crs is None or src.crs is None:
            raise InputError(f"{spec.label}: labels shared by several scenes need a CRS, and so does {spec.image}")
        if lab.count != 1:
            raise InputError(
                f"{spec.label}: shared labels on another grid must be one band of class ids, got {lab.count} bands"
            )
    return LabelSource(absolute(spec.label), "warp")


def _open_scenes(specs: Sequence[SceneSpec]) -> list[_Scene]:
    """Open every scene once: unique keys, one data type, and georeferenced or not all together."""
    if not specs:
        raise InputError("no scenes to tile; pass at least one raster or a dataset folder with --preset")
    scenes: list[_Scene] = []
    drivers: list[tuple[str, Any, str]] = []
    for spec in specs:
        with open_raster(spec.image) as src:
            key = spec.key or scene_stem(spec.image)
            if any(s.key == key for s in scenes):
                raise InputError(f"two scenes would both write crops named {key}_*; give them different file names")
            if len(set(src.dtypes)) > 1:
                raise InputError(f"{spec.image}: bands of different data types {src.dtypes}; convert to one type")
            pixel_bytes = src.count * np.dtype(src.dtypes[0]).itemsize + (spec.label is not None)
            in_strips = src.driver in ("GTiff", "VRT")
            bands = (src.count, str(src.dtypes[0]))
            check_readable(src)
            drivers.append((str(spec.image), src.crs, src.driver))
            scenes.append(
                _Scene(spec, key, src.height, src.width, src.transform, src.crs, in_strips, pixel_bytes, bands)
            )
    if len({s.crs is None for s in scenes}) > 1:
        raise InputError("some scenes are georeferenced and some are not; tile them into separate --out folders")
    warn_no_crs(drivers)
    return scenes


def _vector_mapping(
    scenes: Sequence[_Scene], scheme: ClassScheme | None, vector: Mapping[str, Any]
) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """One class mapping for every vector label file of the run, and the class names it implies (automatic)."""
    values: dict[str, list[Any]] = {}
    for s in scenes:
        if s.spec.label is not None and is_vector(s.spec.label) and str(s.spec.label) not in values:
            values[str(s.spec.label)] = vector_values(s.spec.label, field=vector["field"], scene_crs=s.crs)
    if not values:
        return (), ()
    auto = vector["mapping"] is None and scheme is None
    where = f"{', '.join(values)} attribute {vector['field']!r}"
    every = [v for vals in values.values() for v in vals]
    entries = resolve_mapping(every, vector["mapping"], scheme, where=where, auto=auto)
    if scheme is not None and not scheme.name:
        beyond = sorted({k for k, cid in entries if scheme.num_classes <= cid < IGNORE_INDEX})
        if beyond:
            raise InputError(
                f"{where}: values {beyond[:5]} have class ids beyond the {scheme.num_classes} names of --classes; "
                "give one name per class id"
            )
    return entries, auto_class_names(entries) if auto else ()


@dataclass(frozen=True)
class Prepared:
    """Checked scenes: jobs sorted by key; per key the transform, CRS, whether the scene can be read in strips of
    rows (GeoTIFF; PNG/JPEG decode from the top and are read whole) and ``(band count, dtype)``; and the class
    names of ids 0..n-1 (``--classes``, or those named by vector values), empty when a scheme or plain ids name
    them.
    """  # noqa: D205

    jobs: list[SceneJob]
    transforms: dict[str, Any]
    crss: dict[str, Any]
    in_strips: dict[str, bool]
    bands: dict[str, tuple[int, str]]
    classes: tuple[str, ...]
    mapping: tuple[tuple[str, int], ...] = ()


def prepare_jobs(
    scenes: Sequence[SceneSpec],
    *,
    scheme: str | None,
    vector: Mapping[str, Any],
    classes: Sequence[str] = (),
    check_labels: bool = True,
) -> Prepared:
    """Open and check every scene and label before anything is written.

    A label file given for several scenes is shared: vector layers are cut per crop as always, and a raster on
    another grid is warped onto each scene's grid (nearest neighbour). With ``check_labels`` every scene's labels
    are checked not to come out entirely ignore.
    """
    opened = _open_scenes(scenes)
    class_scheme = get_scheme(scheme) if scheme else custom_scheme(classes) if classes else None
    entries, auto_names = _vector_mapping(opened, class_scheme, vector)
    names = tuple(classes) or auto_names
    decode = class_scheme or (custom_scheme(names) if names else None)
    uses = Counter(str(s.spec.label) for s in opened if s.spec.label is not None)
    jobs = []
    for s in opened:
        label = None
        if s.spec.label is not None:
            with open_raster(s.spec.image) as src:
                if is_vector(s.spec.label):
                    label = LabelSource(absolute(s.spec.label), "vector", vector["field"], entries, vector["fill"])
                else:
                    label = _raster_label(s.spec, src, class_scheme, uses[str(s.spec.label)] > 1)
                if check_labels:
                    with reading(label.path):
                        check_label_coverage(label, src, decode)
        jobs.append(SceneJob(s.key, absolute(s.spec.image), label, s.spec.split, s.height, s.width, s.pixel_bytes))
    jobs.sort(key=lambda j: j.key)
    info = {s.key: s for s in opened}
    return Prepared(
        jobs, {j.key: info[j.key].transform for j in jobs}, {j.key: info[j.key].crs for j in jobs},
        {j.key: info[j.key].in_strips for j in jobs}, {j.key: info[j.key].bands for j in jobs}, names, entries,
    )  # fmt: skip


def _manifest(settings: CropSettings, jobs: Sequence[SceneJob]) -> dict[str, Any]:
    """Everything that decides the output files, as plain JSON values (written to ``tiling.json``)."""
    manifest = {
        "version": 1, "size": settings.size, "stride": settings.stride, "min_valid": settings.min_valid,
        "compress": settings.compress or "none", "scheme": settings.scheme,
        "scenes": [dataclasses.asdict(j) for j in jobs],
    }  # fmt: skip
    if settings.classes:
        manifest["classes"] = list(settings.classes)
    remote = remote_versions(jobs)
    if remote:
        manifest["remote"] = remote
    result: dict[str, Any] = json.loads(json.dumps(manifest))
    return result


def remote_versions(jobs: Sequence[SceneJob]) -> dict[str, Any]:
    """What the servers report about the run's remote images and labels (size, ETag, Last-Modified), and the
    content hash of local VRTs with remote sources (a STAC Item's, which records its assets' versions): a scene
    replaced on its server makes the manifest differ, so its old crops are not resumed.
    """  # noqa: D205
    versions: dict[str, Any] = {}
    for job in jobs:
        for path in (job.image, None if job.label is None else job.label.path):
            if path is None or path in versions or not reads_remote(path):
                continue
            if is_remote(path):
                versions[path] = stat_remote(path).fingerprint()
            else:
                versions[path] = {"vrt_sha1": hashlib.sha1(Path(path).read_bytes()).hexdigest()}
    return versions


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        old: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        old = {}
    return old


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to mix crops of a different tiling run into ``out``."""
    old = _read_manifest(out)
    if old is None:
        return
    diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    if diff:
        raise InputError(
            f"{out} holds crops of a different tiling run ({', '.join(diff)} differ); "
            "choose another --out, delete that folder, or add scenes to it with --append"
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
    jobs: Sequence[SceneJob], todo: Mapping[str, Sequence[int]], in_strips: Mapping[str, bool], settings: CropSettings,
    workers: int,
) -> list[TaskSpec]:  # fmt: skip
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


def assign_val_blocks(
    jobs: Sequence[SceneJob], transforms: Mapping[str, Any], crss: Mapping[str, Any], *, size: int, stride: int,
    fraction: float, block: int, seed: int,
) -> list[SceneJob]:  # fmt: skip
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
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--val-fraction must be a fraction strictly between 0 and 1, got {fraction}")
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


def _check_append(out: Path, manifest: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    """The manifest of ``out`` with this run's scenes added; refuses other settings, classes, bands or dtype."""
    old = _read_manifest(out)
    if old is None:
        return manifest
    diff = sorted(k for k in (set(old) | set(manifest)) - {"scenes", "remote"} if old.get(k) != manifest.get(k))
    if diff:
        was = ", ".join(f"{k} {old.get(k)} here vs {manifest.get(k)}" for k in diff)
        raise InputError(f"cannot append to {out}: its crops were cut with other settings ({was}); use another --out")
    previous = {s["key"]: s for s in old.get("scenes", [])}
    if previous and any(s["label"] for s in previous.values()) != any(j.label for j in prepared.jobs):
        raise InputError(f"cannot append to {out}: its scenes and these differ in having labels; use another --out")
    for scene in manifest["scenes"]:
        if scene["key"] in previous and previous[scene["key"]] != scene:
            raise InputError(
                f"cannot append to {out}: it already holds a scene {scene['key']} ({previous[scene['key']]['image']}); "
                "rename the new scene's file"
            )
    index = out / INDEX_NAME
    if index.exists():
        tiles, _ = read_index(index)
        if len(tiles):
            with open_raster(out / tiles["image"].iloc[0]) as crop:
                have = (crop.count, str(crop.dtypes[0]))
            for key, bands in prepared.bands.items():
                if bands != have:
                    raise InputError(
                        f"cannot append to {out}: its crops have {have[0]} {have[1]} bands, scene {key} has "
                        f"{bands[0]} {bands[1]}; use another --out"
                    )
    merged = {**previous, **{s["key"]: s for s in manifest["scenes"]}}
    result = {**manifest, "scenes": [merged[k] for k in sorted(merged)]}
    remote = _merged_remote(out, old.get("remote", {}), manifest.get("remote", {}))
    if remote:
        result["remote"] = remote
    return result


def _merged_remote(out: Path, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Remote versions of an appended run; a remote scene that changed on its server since its crops were cut is
    refused (its finished rows would be resumed from the old version).
    """  # noqa: D205
    changed = [path for path in new if path in old and old[path] != new[path]]
    if changed:
        raise InputError(f"cannot append to {out}: {changed[0]} changed on its server since its crops were cut; "
                         "use another --out")  # fmt: skip
    return {**old, **new}


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
    ``out/index.gpkg`` (layers ``tiles`` and ``classes``). Everything is checked before anything is written; each
    file is written under a temporary name and renamed, and re-running the same call skips finished work.

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
        block: Side of those blocks in pixels; ``4 * size`` when None.
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
    check_cluster_options(workers, scheduler)
    check_positive(block=block)
    check_label_fill_seed(label_fill, seed)
    if scheme and classes:
        raise InputError("--classes names the classes of labels without a --scheme; give one of them")
    out = Path(out)
    if append and not classes and not scheme:
        classes = (_read_manifest(out) or {}).get("classes")
    specs = [s if isinstance(s, SceneSpec) else SceneSpec(s) for s in scenes]
    check_output(out, [p for s in specs for p in (s.image, s.label) if p is not None])
    vector = {"field": label_field, "mapping": label_map, "fill": label_fill}
    prepared = prepare_jobs(
        specs, scheme=scheme, vector=vector, classes=tuple(classes or ()), check_labels=check_labels
    )
    jobs, transforms, crss, in_strips = prepared.jobs, prepared.transforms, prepared.crss, prepared.in_strips
    if val_fraction is not None:
        block = 4 * size if block is None else block
        jobs = assign_val_blocks(
            jobs, transforms, crss, size=size, stride=stride, fraction=val_fraction, block=block, seed=seed
        )
    settings = CropSettings(str(out.resolve()), size, stride, float(min_valid), compress, scheme, prepared.classes)
    manifest = _manifest(settings, jobs)
    if append:
        manifest = _check_append(out, manifest, prepared)
    else:
        _check_manifest(out, manifest)

    labelled = any(j.label is not None for j in jobs)
    with writing(out):
        _prepare_output(out, manifest, labelled)
    records, todo = _pending(jobs, settings)
    resumed = len(records)
    cluster = "nothing to do"
    if todo:
        pending_bytes = sum(len(todo.get(j.key, ())) * _row_bytes(j, settings) for j in jobs)
        n = choose_workers(workers, scheduler, pending_bytes)
        remote = any(reads_remote(j.image) or (j.label is not None and reads_remote(j.label.path)) for j in jobs)
        try:
            with (
                open_executor(n, scheduler, processes=processes) as executor,
                remote_env() if remote else contextlib.nullcontext(),
            ):
                cluster = executor.description
                tasks = plan_tasks(jobs, todo, in_strips, settings, executor.workers)
                records.extend(executor.run(tasks, quiet=quiet))
        except BaseException:
            if not scheduler:  # local workers are gone: their half-written files go now, not at the re-run
                remove_stale_temporaries(out)
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
        out, index, out / IMAGES, out / LABELS if labelled else None, len(jobs), len(records), len(kept),
        len(records) - len(kept) - dropped, resumed, time.perf_counter() - start, cluster, dropped,
    )  # fmt: skip
