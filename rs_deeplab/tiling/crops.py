"""The tiler's unit of work: read one strip of window rows of a scene once and write its crops (runs on workers)."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from rs_deeplab.cli.diskspace import out_of_space, space_checked, space_errno
from rs_deeplab.cli.errors import RsDeeplabError
from rs_deeplab.geo.grid import CropWindow, crop_transform, window_grid, window_rows
from rs_deeplab.geo.raster import atomic_output, geotiff_profile, open_raster, quiet_georeferencing
from rs_deeplab.labels.classes import IGNORE_INDEX, SCHEMES, ClassScheme
from rs_deeplab.remote.reads import read_retrying
from rs_deeplab.remote.scenes import is_remote
from rs_deeplab.tiling.checks import reading, writing
from rs_deeplab.tiling.class_counts import StripCounts
from rs_deeplab.tiling.labels import LabelSource, custom_scheme, read_labels
from rs_deeplab.tiling.tiff_template import TemplateLearner

log = logging.getLogger("rs_deeplab.tiling.tiler")

IMAGES, LABELS, PARTS = "images", "labels", ".parts"
TEMPLATE_WRITES = True
"""Uncompressed crops are written from a proved template of GDAL's bytes, without GDAL (see
:mod:`rs_deeplab.tiling.tiff_template`); False writes every crop through GDAL (the same bytes, slower)."""
Record = dict[str, Any]


@dataclass(frozen=True)
class CropSettings:
    """Run-wide settings every task needs (plain values, picklable).

    Attributes:
        out: Output folder.
        size: Crop side in pixels.
        stride: Step between crops.
        min_valid: Crops whose valid fraction is below this are not written.
        compress: GeoTIFF codec of the crops (``None`` = uncompressed).
        scheme: Class scheme name used to decode labels and colour label crops, or None.
        classes: Class names of ids 0..n-1 without a scheme (``--classes`` or named vector values), or empty.
    """

    out: str
    size: int
    stride: int
    min_valid: float
    compress: str | None
    scheme: str | None
    classes: tuple[str, ...] = ()

    def class_scheme(self) -> ClassScheme | None:
        """The scheme decoding and colouring labels: the named one, one built from ``classes``, or None."""
        if self.scheme:
            return SCHEMES[self.scheme]
        return custom_scheme(self.classes) if self.classes else None


@dataclass(frozen=True)
class SceneJob:
    """One validated scene: a unique output key, its paths, its size and bytes per crop pixel (picklable).

    With a ``block_transform`` (scene pixel → block coordinates) the split comes from square blocks: crops inside
    ``val_blocks`` (``(block_col, block_row)`` pairs) are ``val``, crops inside other blocks ``train``, and crops
    touching both are dropped (see :func:`window_split`).
    """

    key: str
    image: str
    label: LabelSource | None
    split: str
    height: int
    width: int
    pixel_bytes: int = 1
    block_transform: tuple[float, ...] = ()
    val_blocks: tuple[tuple[int, int], ...] = ()


def window_blocks(window: CropWindow, block_transform: tuple[float, ...]) -> set[tuple[int, int]]:
    """The ``(block_col, block_row)`` squares the scene pixels of ``window`` fall in.

    ``block_transform`` maps scene pixel (col, row) to block coordinates (an :class:`Affine` as 6 numbers).
    """
    t = Affine(*block_transform[:6])
    c0, r0, c1, r1 = window.col_off, window.row_off, window.col_off + window.width, window.row_off + window.height
    xs, ys = zip(*(t @ (c, r) for c, r in ((c0, r0), (c1, r0), (c0, r1), (c1, r1))), strict=True)
    eps = 1e-9
    cols = range(math.floor(min(xs) + eps), math.floor(max(xs) - eps) + 1)
    rows = range(math.floor(min(ys) + eps), math.floor(max(ys) - eps) + 1)
    return {(c, r) for c in cols for r in rows}


def window_split(job: SceneJob, window: CropWindow, val: frozenset[tuple[int, int]] | None = None) -> str:
    """The split of a crop: the scene's, or by blocks ``val``/``train``, or ``""`` when it straddles both."""
    if not job.block_transform:
        return job.split
    held = val if val is not None else frozenset(job.val_blocks)
    inside = [b in held for b in window_blocks(window, job.block_transform)]
    return "val" if all(inside) else "train" if not any(inside) else ""


def part_path(out: str | Path, key: str, row_off: int) -> Path:
    """Where the records of one row of windows are kept once all its crops are written."""
    return Path(out) / PARTS / key / f"{row_off}.json"


def load_part(out: str, job: SceneJob, row_off: int) -> list[Record] | None:
    """The saved records of a finished window row, or None when missing or when one of its files is gone."""
    path = part_path(out, job.key, row_off)
    try:
        part = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    records: list[Record] = part.get("records", [])
    if part.get("image") != job.image:
        return None
    for rec in records:
        for rel in (rec["image"], rec["label"]):
            if rec["written"] and rel and not (Path(out) / rel).exists():
                return None
    return records


def _save_part(out: str, job: SceneJob, row_off: int, records: list[Record]) -> None:
    path = part_path(out, job.key, row_off)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"image": job.image, "row_off": row_off, "records": records}, sort_keys=True))


def _valid_mask(src: Any, data: np.ndarray, window: Window) -> np.ndarray | None:
    """Per-pixel validity of a block: not nodata in every band, or set in an internal mask (None: all valid).

    Alpha bands count as data: 4-band RGBIR GeoTIFFs are often tagged RGBA, and their NIR is no mask.
    """
    if src.nodata is not None:
        nodata = src.nodata
        invalid = np.isnan(data) if np.isnan(nodata) else data == np.asarray(nodata).astype(data.dtype)
        return ~np.all(invalid, axis=0)
    flags = src.mask_flag_enums[0]
    if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        return np.asarray(src.read_masks(1, window=window) > 0)
    return None


def _pad(block: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Pad the last two axes of ``block`` at the bottom/right to ``size``."""
    if block.shape[-2:] == (size, size):
        return block
    out = np.full((*block.shape[:-2], size, size), fill, dtype=block.dtype)
    out[..., : block.shape[-2], : block.shape[-1]] = block
    return out


def crop_profiles(src: Any, size: int, compress: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """GeoTIFF profiles (without transform) of the image and label crops of scene dataset ``src``.

    Image crops keep the scene's data type, band count, CRS and nodata; label crops are uint8 with nodata 255.
    Uncompressed crops are band-interleaved: GDAL then copies each band as is (faster to write and to read).
    """
    image = geotiff_profile(
        width=size,
        height=size,
        count=src.count,
        dtype=src.dtypes[0],
        crs=src.crs,
        nodata=src.nodata,
        compress=compress,
    )
    label = geotiff_profile(
        width=size, height=size, count=1, dtype="uint8", crs=src.crs, nodata=IGNORE_INDEX, compress=compress
    )
    if compress is None:
        image["interleave"] = "band"
    return image, label


class _Writer:
    """Writes the crops of one scene; holds the output profiles built once from the source dataset."""

    def __init__(self, src: Any, job: SceneJob, settings: CropSettings) -> None:
        self.job, self.settings = job, settings
        self.out = Path(settings.out)
        self.transform: Affine = src.transform
        self.image_profile, self.label_profile = crop_profiles(src, settings.size, settings.compress)
        self.image_fill = 0 if src.nodata is None else src.nodata
        self.descriptions = src.descriptions if any(src.descriptions) else None
        self.colorinterp = src.colorinterp
        scheme = settings.class_scheme()
        self.colormap = scheme.colormap() if scheme else None
        self.val = frozenset(job.val_blocks)
        fast = TEMPLATE_WRITES and settings.compress is None  # compressed crops vary in layout: GDAL writes them
        self.templates = {IMAGES: TemplateLearner(src.nodata, fast), LABELS: TemplateLearner(IGNORE_INDEX, fast)}
        self.from_template = self.by_gdal = 0

    def write(self, window: CropWindow, image: np.ndarray, label: np.ndarray | None, stats: StripCounts) -> Record:
        """Write one crop (skipping files already complete) and return its index record."""
        size = self.settings.size
        name = window.name(self.job.key)
        valid = stats.valid_pixels(window)
        rec: Record = {
            "scene": self.job.key,
            "scene_path": self.job.image,
            "split": window_split(self.job, window, self.val),
            "row_off": window.row_off,
            "col_off": window.col_off,
            "width": window.width,
            "height": window.height,
            "valid_fraction": valid / (size * size),
            "image": f"{IMAGES}/{name}.tif",
            "label": f"{LABELS}/{name}.tif" if label is not None else "",
            "counts": stats.class_counts(window, IGNORE_INDEX),
        }
        rec["written"] = rec["valid_fraction"] >= self.settings.min_valid and rec["split"] != ""
        if not rec["written"]:
            return rec
        transform = crop_transform(self.transform, window)
        self._write(self.out / rec["image"], _pad(image, size, self.image_fill), self.image_profile, transform)
        if label is not None:
            self._write(self.out / rec["label"], _pad(label[np.newaxis], size, IGNORE_INDEX), None, transform)
        return rec

    def _write(self, path: Path, data: np.ndarray, profile: dict[str, Any] | None, transform: Affine) -> None:
        """Write one crop file under a temporary name and rename it; a file already there is complete: kept.

        Once the crops' template has proved itself (:mod:`rs_deeplab.tiling.tiff_template`), a crop is written from
        it without GDAL (the same bytes); before that, and for crops it cannot write, GDAL writes it.
        """
        if path.exists():
            return
        learner = self.templates[IMAGES if profile is not None else LABELS]
        origin = (transform.c, transform.f)
        pieces = None
        if learner.template is not None and not transform.is_identity:
            pieces = learner.template.render(data, origin)
        tmp = _temporary(path)
        try:
            if pieces is not None:
                _write_pieces(path, tmp, pieces)
                self.from_template += 1
            else:
                self._write_gdal(path, tmp, data, profile, transform)
                self.by_gdal += 1
                if not transform.is_identity and learner.wants(origin):
                    learner.learn(Path(tmp).read_bytes(), data, origin, self._check(path, data, profile, transform))
            os.replace(tmp, path)
            if pieces is None and os.path.exists(f"{tmp}.aux.xml"):  # GDAL side-car (nothing we write needs one)
                os.replace(f"{tmp}.aux.xml", f"{path}.aux.xml")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _check(
        self, path: Path, data: np.ndarray, profile: dict[str, Any] | None, transform: Affine
    ) -> tuple[tuple[float, float], Callable[[], bytes]]:
        """Another origin (the next crop down and right) and what writes ``data`` there with GDAL, returning the
        bytes (a template is checked on them).
        """  # noqa: D205
        size = self.settings.size
        other = transform @ Affine.translation(size, size)

        def write() -> bytes:
            tmp = _temporary(path)
            try:
                self._write_gdal(path, tmp, data, profile, other)
                return Path(tmp).read_bytes()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

        return (other.c, other.f), write

    def _write_gdal(
        self, path: Path, tmp: str, data: np.ndarray, profile: dict[str, Any] | None, transform: Affine
    ) -> None:
        options = dict(profile if profile is not None else self.label_profile, transform=transform)
        # lack of space as one line, also when GDAL only tells libtiff (blocks flushed as the file closes)
        with (
            space_checked(path, written=tmp),
            _quiet_if(transform.is_identity),
            rasterio.open(tmp, "w", **options) as dst,
        ):
            dst.write(data)
            if profile is not None:
                dst.colorinterp = self.colorinterp
                for i, desc in enumerate(self.descriptions or (), start=1):
                    if desc:
                        dst.set_band_description(i, desc)
            elif self.colormap is not None:
                dst.write_colormap(1, self.colormap)


def _write_pieces(path: Path, tmp: str, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write a crop's bytes to ``tmp``; lack of space is one :class:`DiskFullError` naming ``path``."""
    try:
        with open(tmp, "wb") as fh:
            for piece in pieces:
                fh.write(piece)
    except OSError as exc:
        code = space_errno(exc)
        if code is None:
            raise
        raise out_of_space(path, code) from None


_TAGS: dict[int, str] = {}
_COUNTER = itertools.count()


def _temporary(path: Path) -> str:
    """A temporary sibling of ``path`` unique to this process (host-unique tag, then a counter).

    Cheaper than a fresh UUID per file; matches :func:`remove_stale_temporaries`'s ``.*.tmp-*`` pattern.
    """
    tag = _TAGS.get(os.getpid())
    if tag is None:
        tag = _TAGS[os.getpid()] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return str(path.with_name(f".{path.stem}.tmp-{tag}-{next(_COUNTER)}{path.suffix}"))


def _quiet_if(condition: bool) -> contextlib.AbstractContextManager[None]:
    """Silence rasterio's not-georeferenced warning for crops at (0, 0) of pixel-coordinate scenes only.

    (``warnings.catch_warnings`` is process-global, so it is not entered around every write of every thread.)
    """
    return quiet_georeferencing() if condition else contextlib.nullcontext()


def _read_label(job: SceneJob, settings: CropSettings, src: Any, window: Window) -> np.ndarray | None:
    """Class ids of ``window`` of the scene's labels (decoded raster, warped raster or rasterized polygons)."""
    if job.label is None:
        return None
    return read_labels(job.label, src, window, settings.class_scheme())


def tile_rows(job: SceneJob, row_offs: Sequence[int], settings: CropSettings) -> list[Record]:
    """Dask task: write every crop of the given rows of windows of one scene and return their index records.

    The strip of scene rows the windows span is read once (image and labels). Each crop file is written under a
    temporary name and renamed, files already complete are kept, and a row's records are saved only once all its
    crops exist, so a killed run resumes where it stopped.
    """
    try:
        with rasterio.Env(CHECK_DISK_FREE_SPACE=False):  # one GDAL environment for all files, not one per open
            return _tile_rows(job, row_offs, settings)
    except RsDeeplabError as exc:
        error = exc
    # raised again without its GDAL cause (its message holds it): a Dask worker pickles an error with its causes,
    # and GDAL's do not unpickle, which would turn this one into a bare Exception (and a traceback) on the client
    error.__cause__ = error.__context__ = None
    raise error


def _read_strip(
    job: SceneJob, settings: CropSettings, window: Window
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, _Writer]:
    """The image, valid mask and labels of ``window``, and the crop writer of the scene (opened here, closed)."""
    with open_raster(job.image) as src:
        with reading(job.image):
            image = src.read(window=window)
            mask = _valid_mask(src, image, window)
        with reading(job.label.path if job.label else job.image):
            label = _read_label(job, settings, src, window)
        return image, mask, label, _Writer(src, job, settings)


def _tile_rows(job: SceneJob, row_offs: Sequence[int], settings: CropSettings) -> list[Record]:
    rows = window_rows(window_grid(job.height, job.width, settings.size, settings.stride))
    top = min(row_offs)
    window = Window(0, top, job.width, min(job.height, max(row_offs) + settings.size) - top)
    # a remote scene's server that hiccups is read again; one that stopped answering is named (resumable)
    remote = job.image if is_remote(job.image) or job.label is None else job.label.path
    image, mask, label, writer = read_retrying(remote, lambda: _read_strip(job, settings, window))
    stats = StripCounts([w for r in row_offs for w in rows[r]], top, label, mask)
    records: list[Record] = []
    with writing(settings.out):
        for r in row_offs:
            row_records = []
            for w in rows[r]:
                sl = np.s_[w.row_off - top : w.row_off - top + w.height, w.col_off : w.col_off + w.width]
                crop_label = None if label is None else label[sl]
                row_records.append(writer.write(w, image[(slice(None), *sl)], crop_label, stats))
            _save_part(settings.out, job, r, row_records)
            records.extend(row_records)
    log.debug(
        "%s rows %d-%d: %d crop files written from a template, %d by GDAL",
        job.key,
        top,
        max(row_offs),
        writer.from_template,
        writer.by_gdal,
    )
    return records


def remove_stale_temporaries(out: str | Path) -> int:
    """Delete temporary files a killed run left in the output folders; returns how many were removed."""
    base = Path(out)
    found = [*base.glob(".*.tmp-*"), *(base / IMAGES).glob(".*.tmp-*"), *(base / LABELS).glob(".*.tmp-*")]
    found += (base / PARTS).rglob(".*.tmp-*")
    for path in found:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return len(found)
