"""Scenes as the tiler sees them: validated specs opened once, label sources resolved, one job per scene."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.raster import absolute, open_raster
from rs_deeplab.labels.classes import IGNORE_INDEX, ClassScheme, get_scheme
from rs_deeplab.remote.scenes import scene_stem
from rs_deeplab.tiling.checks import (
    check_readable,
    reading,
    warn_no_crs,
)
from rs_deeplab.tiling.crops import (
    SceneJob,
)
from rs_deeplab.tiling.labels import (
    LabelSource,
    auto_class_names,
    check_label_coverage,
    check_label_raster,
    custom_scheme,
    is_vector,
    resolve_mapping,
    vector_values,
)


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


def open_scenes(specs: Sequence[SceneSpec]) -> list[_Scene]:
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
    opened = open_scenes(scenes)
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
        jobs,
        {j.key: info[j.key].transform for j in jobs},
        {j.key: info[j.key].crs for j in jobs},
        {j.key: info[j.key].in_strips for j in jobs},
        {j.key: info[j.key].bands for j in jobs},
        names,
        entries,
    )
