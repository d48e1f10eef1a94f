"""Checks a training or evaluation run makes before its first expensive step, each failing in one line.

Nothing here writes anything that stays: the writability probe removes its file at once.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.cli.outputs import check_output_folder
from rs_deeplab.geo.raster import open_raster
from rs_deeplab.training.datasets.base import SegmentationSource


def first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (``path`` itself, or an ancestor); None if it exists."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return missing
        missing = candidate
    return missing


def check_output_dir(path: Path, option: str) -> None:
    """Fail in one line unless ``path`` is (or can be created as) a folder this process can write in.

    Args:
        path: The output folder.
        option: How the user named it (``work_dir``, ``--out``), for the message.

    Raises:
        InputError: ``path`` or an ancestor is a file, or the folder is not writable.
    """
    check_output_folder(path, what=f"{option} {path}")


@contextlib.contextmanager
def removed_on_failure(path: Path, keep: Path) -> Iterator[None]:
    """On a failure while ``keep`` does not exist, remove the folders of ``path`` that the block created.

    So a run that failed (or was interrupted) before its first checkpoint leaves no run folder behind.

    A folder that existed before (an earlier run's, perhaps holding checkpoints) is never removed.
    """
    created = first_missing(path)
    try:
        yield
    except BaseException:
        if created is not None and created.is_dir() and not keep.exists():
            shutil.rmtree(created, ignore_errors=True)
        raise


def scene_samples(source: SegmentationSource) -> list[Path]:
    """One image per scene of a tiles source (every crop of a scene has its band count); else the first image."""
    scenes: Sequence[str] | None = getattr(source, "scenes", None)
    if scenes is None:
        return source.images[:1]
    first: dict[str, Path] = {}
    for scene, image in zip(scenes, source.images, strict=True):
        first.setdefault(scene, image)
    return list(first.values())


def check_bands(sources: Sequence[SegmentationSource], bands: Sequence[int] | None) -> None:
    """Fail in one line if the crops have mixed band counts (without a ``data.bands`` selection) or lack a band.

    Reads one header per scene of each source: cheap, and done before the band statistics and the model.
    """
    counts: dict[int, Path] = {}
    for source in sources:
        for image in scene_samples(source):
            with open_raster(image) as src:
                counts.setdefault(int(src.count), image)
    if bands:
        fewest = min(counts)
        if max(bands) > fewest:
            raise InputError(
                f"data.bands asks for band {max(bands)} but {counts[fewest]} has {fewest} band"
                f"{'s' if fewest > 1 else ''}; choose bands between 1 and {fewest}"
            )
    elif len(counts) > 1:
        shown = ", ".join(f"{n} bands ({path})" for n, path in sorted(counts.items()))
        raise InputError(
            f"crops have mixed band counts: {shown}; tile every scene with the same bands, or pick common ones "
            "with data.bands"
        )


def check_labelled(source: SegmentationSource, split: str) -> None:
    """Fail in one line when a tiles split has no labelled pixel (every label is 255, ignore)."""
    counts = getattr(source, "class_counts", None)
    if counts is not None and len(counts) and int(counts.sum()) == 0:
        raise InputError(
            f"tiles: every label pixel of split {split!r} is ignore (255), so there is nothing to learn; check the "
            "labels' encoding (--scheme, --labels) and tile again"
        )


def check_scheme(sources: Sequence[SegmentationSource], scheme: str | None) -> None:
    """Refuse tiles with class ids beyond ``data.scheme``'s classes (they would silently widen the model).

    Crops cut without ``--scheme`` keep every value as a class id: a label value of 200 under ``data.scheme:
    potsdam`` would make a 201-class model whose ids 6..199 never occur.

    Raises:
        InputError: Class ids beyond the scheme, with their pixel counts where the index has them.
    """
    from rs_deeplab.labels.classes import SCHEMES

    known = SCHEMES.get(scheme or "")
    names = sources[0].class_names if sources else []
    if known is None or len(names) <= known.num_classes:
        return
    counts = np.zeros(len(names), np.int64)
    for source in sources:
        table = getattr(source, "class_counts", None)
        if table is not None and table.shape[1] == len(names):
            counts += table.sum(axis=0)
    beyond = [i for i in range(known.num_classes, len(names)) if counts[i] or not names[i].startswith("class_")]
    shown = ", ".join(f"{i} ({counts[i]:,} px)" if counts[i] else str(i) for i in beyond[:5])
    more = f" and {len(beyond) - 5} more" if len(beyond) > 5 else ""
    raise InputError(
        f"data.scheme {scheme} has {known.num_classes} classes (ids 0-{known.num_classes - 1}) but the crops' labels "
        f"hold ids {shown}{more}; tile again with --scheme {scheme} (other values become ignore, 255), or remove "
        "data.scheme to train on every id"
    )
