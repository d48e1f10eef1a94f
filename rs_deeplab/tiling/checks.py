"""Checks the tiler makes before the first crop is cut: output location, readable inputs, option ranges, warnings."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import RasterioError

from rs_deeplab.cli.errors import InputError, RasterError, RsDeeplabError
from rs_deeplab.cli.outputs import check_output_folder, same_path
from rs_deeplab.geo.raster import is_vsi, read_error, write_error
from rs_deeplab.labels.classes import IGNORE_INDEX, ClassScheme
from rs_deeplab.remote.scenes import is_url

log = logging.getLogger("rs_deeplab.tiling.tiler")

PLAIN_IMAGE_DRIVERS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP"})
"""Formats that hold pixel coordinates only by nature: a scene in them without a CRS is not warned about."""


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn a GDAL read error on ``path`` into a one-line error naming the file and what to do."""
    try:
        yield
    except RasterError:
        raise
    except (RasterioError, OSError) as exc:
        raise read_error(path, exc) from exc


@contextlib.contextmanager
def writing(folder: str | Path) -> Iterator[None]:
    """Turn an OS or GDAL error while writing into ``folder`` into a one-line :class:`RasterError` (or
    :class:`~rs_deeplab.cli.errors.DiskFullError` for lack of space); the library's own errors pass unchanged.
    """  # noqa: D205
    try:
        yield
    except RsDeeplabError:
        raise
    except (RasterioError, OSError) as exc:
        raise write_error(folder, exc) from exc


def check_readable(src: Any) -> None:
    """Read the first and the last pixel of every band of the open dataset ``src`` (a truncated file fails here).

    Raises:
        RasterError: GDAL cannot read them.
    """
    from rasterio.windows import Window

    if src.count < 1:
        raise RasterError(f"{src.name}: has no bands; pass an image with at least one band")
    with reading(src.name):
        src.read(window=Window(0, 0, 1, 1))
        src.read(window=Window(src.width - 1, src.height - 1, 1, 1))


def check_positive(**values: int | None) -> None:
    """Refuse a whole-number option (``--size``, ``--block``, ...) that is given but 0 or negative.

    Raises:
        InputError: One of them is not a whole number of at least 1.
    """
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")


def check_label_fill_seed(label_fill: int, seed: int) -> None:
    """Refuse a ``--label-fill`` outside 0..255 and a negative ``--seed``.

    Raises:
        InputError: Either is out of range.
    """
    if not 0 <= label_fill <= IGNORE_INDEX:
        raise InputError(f"--label-fill must be a class id 0..255 (255 = ignore), got {label_fill}")
    if seed < 0:
        raise InputError(f"--seed must be a whole number of at least 0, got {seed}")


def check_output(out: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output folder that is an input, a file, under a file, or where nothing can be written.

    Nothing is created: writability is tried with a temporary file in the nearest existing folder, removed again.

    Raises:
        InputError: ``out`` is an input, an existing file, has a file as a parent, or cannot be written.
    """
    for path in inputs:
        if not is_url(path) and not is_vsi(path) and same_path(out, Path(path)):
            raise InputError(f"--out {out} is an input of this run; choose another output folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; the output is a folder: choose another --out")
    for name, folder in (("images", True), ("labels", True), (".parts", True), ("index.gpkg", False)):
        inside = out / name
        if inside.exists() and inside.is_dir() != folder:
            kind = "a file where the crops' folder goes" if folder else "a folder where the index file goes"
            raise InputError(f"--out {out}: {inside} is {kind}; choose another --out or remove it")
    check_output_folder(out, what=f"--out {out}")


def warn_no_crs(scenes: Sequence[tuple[str, Any, str]]) -> None:
    """One warning line for scenes without a CRS (``(path, crs, driver)``); plain PNG/JPEG images are expected."""
    bare = [path for path, crs, driver in scenes if crs is None and driver not in PLAIN_IMAGE_DRIVERS]
    if bare:
        names = ", ".join(Path(p).name for p in bare[:3]) + (", ..." if len(bare) > 3 else "")
        log.warning(
            "%d of %d scenes have no CRS (%s); their crops and index footprints are in pixel coordinates only",
            len(bare),
            len(scenes),
            names,
        )


def outside_scheme(raw: np.ndarray, scheme: ClassScheme | None) -> np.ndarray:
    """Mask of label pixels (``(bands, H, W)`` as stored) whose value is neither a class nor a known ignore value.

    Known ignore values: 255; black in colour schemes (ISPRS boundaries) unless it is a class colour; 0 in LoveDA
    (no-data); Cityscapes ids without a train id.
    """
    from rs_deeplab.labels.decoding import decode_label

    ids = decode_label(raw, scheme)
    if raw.shape[0] >= 3:
        black = np.all(raw[:3] == 0, axis=0)
        known = black if scheme is not None and (0, 0, 0) not in scheme.colours else np.zeros_like(black)
        return (ids == IGNORE_INDEX) & ~known
    band = raw[0]
    known = band == IGNORE_INDEX
    if scheme is not None and scheme.encoding == "offset":
        known |= band == 0
    if scheme is not None and scheme.encoding == "labelids":
        known |= (band >= -1) & (band <= max(scheme.id_to_train, default=0))
    return np.asarray((ids == IGNORE_INDEX) & ~known)


def warn_outside_scheme(path: str, raw: np.ndarray, scheme: ClassScheme | None, total: int) -> None:
    """One warning line with counts when label pixels of ``raw`` (a read of ``total`` pixels, maybe decimated)
    hold values outside ``scheme`` (or, without one, values that are no class id).
    """  # noqa: D205
    bad = int(outside_scheme(raw, scheme).sum())
    if not bad:
        return
    sampled = raw.shape[1] * raw.shape[2]
    count = round(bad * total / sampled)
    what = f"the {scheme.name} scheme" if scheme is not None and scheme.name else "class ids 0..254"
    if scheme is not None and not scheme.name:
        what = "the classes of --classes"
    log.warning(
        "%s: %s%s label pixels (%.1f%%) have values outside %s; they are ignored (255)",
        path,
        "" if sampled == total else "about ",
        f"{count:,}",
        100.0 * bad / sampled,
        what,
    )
