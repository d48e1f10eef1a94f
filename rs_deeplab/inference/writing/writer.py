"""Stream finished rows into the output GeoTIFF(s), resumably.

Rows go to a partial file beside the final one (``.<name>.partial.tif``) in whole rows of GeoTIFF blocks, so each
block is compressed and written once. After every block row the file is closed (GDAL flushes its directory) and
a small JSON sidecar records how many rows are safely on disk together with a fingerprint of the run (scene,
model, window settings). A run killed at any point and started again with the same fingerprint reopens the
partial file and continues from that row; a different fingerprint starts over. Only a complete raster is moved
to the final name (as a Cloud-Optimized GeoTIFF on request).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError

from rs_deeplab.cli.diskspace import check_free_space, space_checked
from rs_deeplab.cli.errors import InputError, RsDeeplabError
from rs_deeplab.geo.raster import geotiff_profile, quiet_georeferencing, write_error
from rs_deeplab.geo.tiff_writes import tiff_truncated
from rs_deeplab.inference.predicting.blending import FinishedRows, quantise_probs
from rs_deeplab.inference.reading.reader import SceneInfo
from rs_deeplab.labels.class_names import class_names_tag
from rs_deeplab.labels.classes import IGNORE_INDEX

log = logging.getLogger(__name__)

FINGERPRINT_TAG = "RS_DEEPLAB_INFERENCE"
"""Tag holding the JSON fingerprint of the run that wrote a raster (a re-run with the same one skips it)."""
BLOCK = 256
"""Block side of the output GeoTIFFs; rows are committed in multiples of it."""
LABEL_BYTES_PER_PIXEL = 1 / 8
"""Disk space a label raster is taken to need per pixel, for the free-space check before writing.

Deflate packs class maps 10-40× (a coarse model's noisy 512² map: 17×); the raw byte per pixel would refuse runs
that fit by far, so 8× is assumed, leaving headroom for maps noisier than that. A run that still overflows stops
with the same one line mid-way and resumes once space is freed."""
PROBS_BYTES_PER_PIXEL = 1 / 2
"""The same per class for the 0-255 probability raster: smoother than noise but far from flat (the coarse model's:
5×), so 2× is assumed."""
COG_OVERVIEWS = 4 / 3
"""A Cloud-Optimized copy is its partial file again, plus overviews (each level a quarter of the one before)."""


class RowSink(Protocol):
    """Takes finished rows in order: a :class:`RowWriter`, or a resampler in front of one."""

    def write(self, rows: FinishedRows) -> None:
        """Take the next rows."""


@dataclass(frozen=True)
class OutputSpec:
    """Where and how the label raster (and optional probability raster) are written."""

    path: Path
    class_names: tuple[str, ...]
    colormap: Mapping[int, Sequence[int]] | None = None
    probs_path: Path | None = None
    cog: bool = False
    compress: str = "deflate"


def partial_path(final: Path) -> Path:
    """The name a raster has while it is being written."""
    return final.with_name(f".{final.stem}.partial.tif")


def sidecar_path(final: Path) -> Path:
    """The JSON file recording the rows of :func:`partial_path` that are complete."""
    return final.with_name(f".{final.stem}.partial.json")


@dataclass
class _Panel:
    """A column panel's rows in :class:`RowWriter`: its width, the rows it has written, those still pending."""

    width: int
    written: int
    pending: list[FinishedRows] = field(default_factory=list)


class RowWriter:
    """Write :class:`FinishedRows` in order; resume from the last committed block row.

    Args:
        spec: Output paths and metadata.
        info: The scene (grid, CRS, transform).
        fingerprint: JSON-able description of everything that determines the output.
    """

    def __init__(self, spec: OutputSpec, info: SceneInfo, fingerprint: Mapping[str, Any]) -> None:
        for p in (spec.path, spec.probs_path):
            if p is not None and not p.parent.is_dir():
                raise InputError(f"{p}: output folder {p.parent} does not exist; create it first")
        self.spec, self.info = spec, info
        self.fingerprint = json.loads(json.dumps(dict(fingerprint), default=str))
        self.targets = [spec.path] + ([spec.probs_path] if spec.probs_path is not None else [])
        self.committed = 0
        self._pending: list[FinishedRows] = []
        self._panels: dict[int, _Panel] = {}
        """Rows of each column panel not written yet, by its first column."""
        self._datasets: list[Any] = []

    def complete(self) -> bool:
        """Whether every target exists already, written by a run with this fingerprint."""
        try:
            for target in self.targets:
                with rasterio.open(target) as ds:
                    if json.loads(ds.tags().get(FINGERPRINT_TAG, "null")) != self.fingerprint:
                        return False
        except (rasterio.errors.RasterioError, ValueError):
            return False
        return True

    def disk_bytes(self) -> int:
        """About the disk space the rows not yet written take, plus the Cloud-Optimized copies of the whole
        rasters if asked (see :data:`LABEL_BYTES_PER_PIXEL`).
        """  # noqa: D205
        start = self.committed
        per_pixel = LABEL_BYTES_PER_PIXEL if self.spec.compress.lower() != "none" else 1.0
        if self.spec.probs_path is not None:
            ratio = PROBS_BYTES_PER_PIXEL if self.spec.compress.lower() != "none" else 1.0
            per_pixel += ratio * len(self.spec.class_names)
        rows = self.info.height - start + (self.info.height * COG_OVERVIEWS if self.spec.cog else 0)
        return int(per_pixel * self.info.width * rows)

    def open(self) -> int:
        """Create the partial rasters, or reopen those of an interrupted identical run; return its rows done.

        Raises:
            DiskFullError: The output's file system has less free space than the rows left need, about.
        """
        self.committed = self._resumable_rows()
        check_free_space(
            self.spec.path,
            self.disk_bytes(),
            "the label raster" + (" and probabilities" if self.spec.probs_path is not None else ""),
        )
        with self._translated():
            if self.committed == 0:
                self._create()
            else:
                log.info("%s: resuming at row %d of %d", self.spec.path, self.committed, self.info.height)
            self._reopen()
        return self.committed

    def discard(self) -> None:
        """Close and remove the partial files and the sidecar (a run whose input turned out unreadable)."""
        self.close()
        for target in self.targets:
            partial_path(target).unlink(missing_ok=True)
        sidecar_path(self.spec.path).unlink(missing_ok=True)

    def _resumable_rows(self) -> int:
        side = sidecar_path(self.spec.path)
        try:
            state = json.loads(side.read_text())
        except (OSError, ValueError):
            return 0
        if state.get("fingerprint") != self.fingerprint or not all(partial_path(p).exists() for p in self.targets):
            return 0
        rows = int(state.get("rows", 0))
        blocks = self._blocks(rows)
        try:
            for p in self.targets:
                with rasterio.open(partial_path(p)) as ds:
                    if (ds.height, ds.width) != (self.info.height, self.info.width):
                        return 0
                if tiff_truncated(partial_path(p), blocks):  # a crash or a full disk cut committed blocks short
                    return 0
        except rasterio.errors.RasterioError:
            return 0
        return rows

    def _partials(self) -> list[Path]:
        return [partial_path(p) for p in self.targets]

    def _blocks(self, rows: int) -> int:
        """How many blocks hold the first ``rows`` rows: they come first in the (pixel-interleaved) partial file."""
        return -(-self.info.width // BLOCK) * -(-rows // BLOCK)

    def _create(self) -> None:
        names = list(self.spec.class_names)

        def profile(count: int, nodata: int | None) -> dict[str, Any]:
            return geotiff_profile(
                width=self.info.width,
                height=self.info.height,
                count=count,
                dtype="uint8",
                crs=self.info.crs,
                transform=self.info.transform,
                nodata=nodata,
                compress=self.spec.compress,
                blocksize=BLOCK,
            )

        profiles = [profile(1, IGNORE_INDEX)]
        if self.spec.probs_path is not None:
            profiles.append(profile(len(names), None))
        for target, prof in zip(self.targets, profiles, strict=True):
            prof.pop("predictor", None)  # class ids are not a smooth signal
            partial_path(target).unlink(missing_ok=True)  # an earlier run's, damaged or of another fingerprint
            with quiet_georeferencing(), rasterio.open(partial_path(target), "w", **prof) as dst:
                dst.update_tags(**class_names_tag(names), **{FINGERPRINT_TAG: json.dumps(self.fingerprint)})
                if target == self.spec.path:
                    dst.set_band_description(1, "class")
                    if self.spec.colormap:
                        dst.write_colormap(1, self.spec.colormap)
                else:
                    for i, name in enumerate(names, start=1):
                        dst.set_band_description(i, f"probability of {name} (0-255)")
        self._commit(0)

    def _reopen(self) -> None:
        with quiet_georeferencing():
            self._datasets = [rasterio.open(partial_path(p), "r+") for p in self.targets]

    def _commit(self, rows: int) -> None:
        side = sidecar_path(self.spec.path)
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "rows": rows}))
        os.replace(tmp, side)
        self.committed = rows

    def write(self, rows: FinishedRows) -> None:
        """Queue rows (in order); write and commit whole block rows as they fill up.

        Rows of a column panel (narrower than the scene; see
        :meth:`~rs_deeplab.inference.predicting.rows.RowJob.panels`)
        come in order within their panel: whole block rows of a panel are written as they fill up, and rows are
        committed once every panel has written them.
        """
        if rows.row_stop <= self.committed:
            return
        if rows.col_start != 0 or rows.labels.shape[1] != self.info.width:
            self._write_panel(rows)
            return
        self._pending.append(rows)
        ready = self._ready(self.committed, self._pending[-1].row_stop)
        if ready > self.committed:
            with self._translated():
                self._flush(ready)

    def _ready(self, done: int, end: int) -> int:
        """Rows up to which whole block rows (or the scene's last rows) are pending, from ``done`` to ``end``."""
        return end if end >= self.info.height else done + (end - done) // BLOCK * BLOCK

    def _write_panel(self, rows: FinishedRows) -> None:
        panel = self._panels.setdefault(rows.col_start, _Panel(rows.labels.shape[1], self.committed))
        panel.pending.append(rows)
        ready = self._ready(panel.written, rows.row_stop)
        if ready <= panel.written:
            return
        with self._translated():
            panel.pending = self._write_rows(panel.pending, panel.written, ready, rows.col_start)
            panel.written = ready
            if sum(p.width for p in self._panels.values()) != self.info.width:
                return  # not every panel has come yet
            done = min(p.written for p in self._panels.values())
            if done > self.committed:
                self._close_commit(done)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """GDAL and OS failures while writing (disk full, folder removed) as one-line errors naming the file.

        Lack of space names the output and the space its rows left still need; it is caught also where GDAL only
        tells libtiff, as the partial file closes after each block row (:func:`rs_deeplab.cli.diskspace.space_checked`),
        so no row is committed that is not on disk.
        """
        try:
            with space_checked(
                self.spec.path, needed=self.disk_bytes(), written=self._partials(), blocks=self._blocks(self.committed)
            ):
                yield
        except (rasterio.errors.RasterioError, CPLE_BaseError, OSError) as exc:
            if isinstance(exc, RsDeeplabError):
                raise
            raise write_error(partial_path(self.spec.path), exc) from None

    def _flush(self, until: int) -> None:
        self._pending = self._write_rows(self._pending, self.committed, until, 0)
        self._close_commit(until)

    def _write_rows(self, pending: list[FinishedRows], start: int, until: int, col: int) -> list[FinishedRows]:
        """Write rows ``[start, until)`` of ``pending`` (starting at scene column ``col``); return what is left."""
        labels = np.concatenate([r.labels for r in pending], axis=0)
        first = pending[0].row_start
        a, b = start - first, until - first
        window = rasterio.windows.Window(col, start, labels.shape[1], until - start)
        self._datasets[0].write(labels[a:b], 1, window=window)
        if self.spec.probs_path is not None:
            probs = np.concatenate([quantise_probs(r.probs) for r in pending if r.probs is not None], axis=1)
            self._datasets[1].write(probs[:, a:b], window=window)
        keep = [r for r in pending if r.row_stop > until]
        if keep and keep[0].row_start < until:
            cut = until - keep[0].row_start
            head = keep[0]
            keep[0] = FinishedRows(until, head.labels[cut:], None if head.probs is None else head.probs[:, cut:], col)
        return keep

    def _close_commit(self, until: int) -> None:
        """Close the partial files (so that GDAL writes their blocks), record ``until`` rows as done, reopen."""
        with space_checked(
            self.spec.path, needed=self.disk_bytes(), written=self._partials(), blocks=self._blocks(until)
        ):
            for ds in self._datasets:
                ds.close()  # GDAL writes the blocks and the TIFF directory: what the sidecar promises is on disk
        self._commit(until)
        if until < self.info.height:
            self._reopen()
        else:
            self._datasets = []

    def finish(self) -> None:
        """Move the complete rasters to their final names (COG if asked) and drop the sidecar."""
        if self.committed < self.info.height:
            raise RuntimeError(f"{self.spec.path}: only {self.committed} of {self.info.height} rows were written")
        with self._translated():
            for target in self.targets:
                part = partial_path(target)
                if self.spec.cog:
                    tmp = target.with_name(f".{target.stem}.cog.tif")
                    needed = int(part.stat().st_size * COG_OVERVIEWS)
                    check_free_space(target, needed, "its Cloud-Optimized copy")
                    try:
                        with space_checked(target, needed=needed, written=tmp):
                            rasterio.shutil.copy(
                                part,
                                tmp,
                                driver="COG",
                                COMPRESS=self.spec.compress.upper(),
                                OVERVIEW_RESAMPLING="NEAREST" if target == self.spec.path else "AVERAGE",
                                BLOCKSIZE=512,
                            )
                        os.replace(tmp, target)
                    finally:
                        tmp.unlink(missing_ok=True)
                    part.unlink()
                else:
                    os.replace(part, target)
            sidecar_path(self.spec.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Close open datasets (the partial files and sidecar stay for a resume)."""
        for ds in self._datasets:
            with contextlib.suppress(Exception):
                ds.close()
        self._datasets = []
