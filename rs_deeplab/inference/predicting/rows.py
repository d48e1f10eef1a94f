"""The unit of work of inference: predict a range of scene rows (locally streamed, or as one Dask task).

Rows ``[start, stop)`` need every window row whose windows cover them; the accumulator starts at the first of
those. Because windows arrive in the same order and batches never span window rows, a range computed on its own
(a Dask task, a resumed run) holds exactly the values the whole-scene run computes for those rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rs_deeplab.geo.grid import axis_offsets
from rs_deeplab.geo.raster import open_raster, read_error
from rs_deeplab.inference.crf.dense import CRFSettings
from rs_deeplab.inference.crf.pool import CRFPool, crf_processes, strips_in_flight
from rs_deeplab.inference.predicting.blending import FinishedRows, StripAccumulator, WindowKind
from rs_deeplab.inference.predicting.predictor import TTA, Normaliser, Predictor
from rs_deeplab.inference.predicting.streams import OrderedWorker, prefetch
from rs_deeplab.inference.reading.reader import SceneInfo, WindowBatch, WindowReader
from rs_deeplab.inference.reading.strip_reader import StripReader, default_read_threads
from rs_deeplab.labels.classes import IGNORE_INDEX

PANEL_COLUMNS = 8192
"""Default width of the column panels of a wide scene (see :meth:`RowJob.panels`)."""
PANEL_ALIGN = 256
"""Panels and tiers start on output blocks (:data:`rs_deeplab.inference.writing.writer.BLOCK`)."""


@dataclass(frozen=True, kw_only=True)
class RowJob:
    """Everything needed to predict rows of a scene: plain values only (a Dask task argument); built by keyword."""

    info: SceneInfo
    size: int
    stride: int
    batch_size: int
    bands: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    window: WindowKind = "hann"
    tta: TTA = field(default_factory=TTA)
    crf: CRFSettings | None = None
    keep_probs: bool = False
    amp: str = "bf16"
    channels_last: bool = True
    read_threads: int = field(default_factory=default_read_threads, repr=False, compare=False)
    """Threads reading the scene (output does not depend on it, so it is left out of the run's fingerprint)."""
    panel_cols: int = field(default=PANEL_COLUMNS, repr=False, compare=False)
    """Columns predicted at a time on a wider scene (:func:`panels`); the output does not depend on it either."""

    @property
    def row_offs(self) -> tuple[int, ...]:
        """First scene row of every window row."""
        return axis_offsets(self.info.height, self.size, self.stride)

    def window_rows(self, start: int, stop: int) -> list[int]:
        """Offsets of the window rows that cover scene rows ``[start, stop)``."""
        return [r for r in self.row_offs if r < stop and r + self.size > start]

    def strip_bounds(self, start: int, stop: int) -> tuple[int, int]:
        """``[start, stop)`` widened to whole strips between window-row offsets (for CRF)."""
        offs = self.row_offs
        a = max(r for r in offs if r <= start)
        b = min([r for r in offs if r >= stop] + [self.info.height])
        return a, b

    def accumulator(
        self,
        device: torch.device,
        start_row: int,
        *,
        cols: tuple[int, int] | None = None,
        out: tuple[int, int] | None = None,
    ) -> StripAccumulator:
        """The blending accumulator of this job's rows from ``start_row``.

        For a panel, ``cols`` are the scene columns its windows cover and ``out`` its own. Probabilities are kept for
        a CRF or to be written, quantised when they are only written.
        """
        written = self.keep_probs and self.crf is None
        return StripAccumulator(
            self.num_classes,
            self.info.height,
            self.info.width,
            self.size,
            kind=self.window,
            device=device,
            keep_probs=self.keep_probs or self.crf is not None,
            start_row=start_row,
            quantise=written,
            cols=cols,
            out=out,
        )

    def reader(self, pin_memory: bool = False, cols: tuple[int, int] | None = None) -> WindowReader:
        """The window reader of this job (of the windows overlapping scene columns ``cols``, when given)."""
        return WindowReader(
            self.info,
            size=self.size,
            stride=self.stride,
            batch_size=self.batch_size,
            bands=self.bands,
            mean=self.mean,
            std=self.std,
            pin_memory=pin_memory,
            read_threads=self.read_threads,
            cols=cols,
        )

    def panels(self) -> list[tuple[int, int]]:
        """Column panels ``[first, stop)`` predicted one after another, or one panel of the whole width.

        A scene wider than ``panel_cols`` (plus a window) is cut into panels of ``panel_cols`` columns (rounded to
        whole output blocks), so that memory no longer grows with the width; windows that cross a panel's edge are
        run for both panels (about one window column more per panel: +3 % model work with 512/256 windows). CRF
        refines whole-width rows: one panel.
        """
        width = self.info.width
        step = max(PANEL_ALIGN, self.panel_cols // PANEL_ALIGN * PANEL_ALIGN)
        if self.crf is not None or width <= step + self.size:
            return [(0, width)]
        edges = [*range(0, width - self.size, step), width]  # no sliver of a panel at the right edge
        return list(itertools.pairwise(edges))

    def tier_rows(self) -> int:
        """Scene rows of a tier whose panels are predicted before the next tier's (whole output blocks).

        A tier re-runs the window row that crosses its top edge: with 16 window rows per tier, 1/16 more work.
        """
        return max(PANEL_ALIGN, math.ceil(16 * self.stride / PANEL_ALIGN) * PANEL_ALIGN)


def stream_rows(
    job: RowJob,
    predictor: Predictor,
    start: int,
    stop: int,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[FinishedRows]:
    """Predict scene rows ``[start, stop)``; yield them in order as they are finished (CRF-refined if asked).

    Reading runs one batch ahead in a background thread and hands over raw windows (pinned for a CUDA copy);
    they are normalised on the model's device (:class:`Normaliser`; on a CPU in the reading thread, so that it
    overlaps with the model). Kept probabilities are quantised to uint8 on
    the device unless CRF still needs them as floats. With CRF, rows are refined in strips between window-row
    offsets on a background thread (so the device does not wait for it); the strips that ``start`` and ``stop``
    cut are computed whole, so a range's refined rows equal those of the whole-scene run.
    """
    a, b = job.strip_bounds(start, stop) if job.crf is not None else (start, stop)
    rows = job.window_rows(a, b)
    if not rows:
        return
    device = predictor.device
    acc = job.accumulator(device, rows[0])
    normalise = Normaliser(job.mean, job.std, device)
    batches = job.reader(pin_memory=device.type == "cuda").batches(rows)
    if device.type == "cpu":  # the device is this CPU: normalise in the reader thread, overlapped with the model
        inputs = prefetch(_model_inputs(batches, normalise))
    else:  # hand raw pixels over: the copies and the normalisation queue on the device behind the model
        inputs = _model_inputs(prefetch(batches), normalise)
    with _Finisher(job, start, stop) as finished:
        for batch, x, valid in inputs:
            probs = predictor(x)
            for j, col in enumerate(batch.col_offs):
                yield from finished.put(acc.add(batch.row_off, col, probs[j], None if valid is None else valid[j]))
            if on_batch is not None:
                on_batch(len(batch.col_offs))
        yield from finished.put(acc.finish(b))
        yield from finished.drain()


@dataclass(frozen=True)
class Panel:
    """Scene rows ``[start, stop)`` of the columns ``cols``: one piece of :func:`stream_panels`."""

    start: int
    stop: int
    cols: tuple[int, int]
    counted_from: int = 0
    """Windows of window rows above this row are not counted (the tier above counted them)."""


def stream_panels(
    job: RowJob, predictor: Predictor, panels: Sequence[Panel], *, on_batch: Callable[[int], None] | None = None
) -> Iterator[FinishedRows]:
    """:func:`stream_rows` of each panel in turn (no CRF), read by one strip reader on one thread.

    Reusing the reader's buffers, threads and open datasets, and one accumulator's memory, keeps memory from
    growing panel after panel (a reader per panel grew it again at 200,000 columns).
    """
    if job.crf is not None:
        raise ValueError("CRF refines whole rows: predict them without column panels")
    device = predictor.device
    readers = [job.reader(pin_memory=device.type == "cuda", cols=p.cols) for p in panels]
    rows = [job.window_rows(p.start, p.stop) for p in panels]
    widest = max(r.span[1] - r.span[0] for r in readers)

    def batches() -> Iterator[tuple[int, WindowBatch]]:
        with StripReader(job.info, job.bands, job.size, job.read_threads, (0, widest)) as source:
            for k, (reader, offs) in enumerate(zip(readers, rows, strict=True)):
                for batch in reader.batches(offs, source):
                    yield k, batch

    normalise = Normaliser(job.mean, job.std, device)
    keyed = batches()
    if device.type == "cpu":  # as in stream_rows
        inputs = prefetch(_keyed_inputs(keyed, normalise))
    else:
        inputs = _keyed_inputs(prefetch(keyed), normalise)
    acc: StripAccumulator | None = None
    current = -1
    for k, batch, x, valid in inputs:
        while current < k:  # panels before this batch's (all-nodata ones included) are complete
            if acc is not None:
                yield from _clipped(acc.finish(panels[current].stop), panels[current])
                acc = None  # released before the next one is made, so that its memory is reused
            current += 1
            acc = job.accumulator(device, rows[current][0], cols=readers[current].span, out=panels[current].cols)
        assert acc is not None
        probs = predictor(x)
        for j, col in enumerate(batch.col_offs):
            yield from _clipped(acc.add(batch.row_off, col, probs[j], None if valid is None else valid[j]), panels[k])
        if on_batch is not None and batch.row_off >= panels[k].counted_from:
            on_batch(sum(c >= panels[k].cols[0] for c in batch.col_offs))
    for k in range(max(current, 0), len(panels)):  # the last one with windows, then those all nodata
        if k != current:
            acc = None
            acc = job.accumulator(device, rows[k][0], cols=readers[k].span, out=panels[k].cols)
        assert acc is not None
        yield from _clipped(acc.finish(panels[k].stop), panels[k])


def _clipped(parts: Iterable[FinishedRows], panel: Panel) -> Iterator[FinishedRows]:
    """``parts`` clipped to the panel's rows."""
    for part in parts:
        clipped = _clip(part, panel.start, panel.stop)
        if clipped is not None:
            yield clipped


def _keyed_inputs(
    batches: Iterable[tuple[int, WindowBatch]], normalise: Normaliser
) -> Iterator[tuple[int, WindowBatch, torch.Tensor, torch.Tensor | None]]:
    for k, batch in batches:
        valid = None if batch.valid is None else batch.valid.to(normalise.device, non_blocking=True)
        yield k, batch, normalise(batch.pixels, valid, batch.extent), valid


def _model_inputs(
    batches: Iterable[WindowBatch], normalise: Normaliser
) -> Iterator[tuple[WindowBatch, torch.Tensor, torch.Tensor | None]]:
    """Each batch with its normalised model input and valid mask on the normaliser's device."""
    for batch in batches:
        valid = None if batch.valid is None else batch.valid.to(normalise.device, non_blocking=True)
        yield batch, normalise(batch.pixels, valid, batch.extent), valid


class _Finisher:
    """Clip finished rows to ``[start, stop)``; with CRF, cut them into strips refined in the background (a thread,
    or worker processes: :func:`refine_strip`).
    """  # noqa: D205

    def __init__(self, job: RowJob, start: int, stop: int) -> None:
        self.start, self.stop, self.cuts = start, stop, job.row_offs
        self.worker: OrderedWorker[FinishedRows, FinishedRows] | None = None
        self.pool: CRFPool | None = None
        if job.crf is None:
            return
        processes = crf_processes(job.crf.processes)
        if processes == 1:  # a thread (pydensecrf holds the GIL while it refines)
            self.worker = OrderedWorker(partial(refine_strip, job, None), depth=2, name="rs-deeplab-crf")
            return
        self.pool = CRFPool(processes)
        # a thread per strip in flight reads its colour bands and waits for its blocks; the processes refine them
        depth = strips_in_flight(processes, math.ceil(job.info.width / job.size))
        self.worker = OrderedWorker(
            partial(refine_strip, job, self.pool), depth=depth, threads=depth, name="rs-deeplab-crf"
        )

    def __enter__(self) -> _Finisher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.worker is not None:
            self.worker.__exit__(*exc)
        if self.pool is not None:
            self.pool.__exit__(*exc)

    def put(self, parts: Iterable[FinishedRows]) -> Iterator[FinishedRows]:
        """The rows of ``parts`` that are ready (refined ones may come later, always in order)."""
        for part in parts:
            if self.worker is None:
                yield from self._clipped([part])
                continue
            for piece in _split(part, self.cuts):
                if piece.row_stop > self.start:
                    yield from self._clipped(self.worker.submit(piece))

    def drain(self) -> Iterator[FinishedRows]:
        """Every refined strip still in flight."""
        if self.worker is not None:
            yield from self._clipped(self.worker.drain())

    def _clipped(self, parts: Iterable[FinishedRows]) -> Iterator[FinishedRows]:
        for part in parts:
            clipped = _clip(part, self.start, self.stop)
            if clipped is not None:
                yield clipped


def _split(part: FinishedRows, cuts: Sequence[int]) -> Iterator[FinishedRows]:
    """Cut ``part`` at the given scene rows."""
    inner = [c for c in cuts if part.row_start < c < part.row_stop]
    for a, b in zip([part.row_start, *inner], [*inner, part.row_stop], strict=True):
        piece = _clip(part, a, b)
        if piece is not None:
            yield piece


def _clip(part: FinishedRows, start: int, stop: int) -> FinishedRows | None:
    a, b = max(part.row_start, start), min(part.row_stop, stop)
    if a >= b:
        return None
    i, j = a - part.row_start, b - part.row_start
    probs = None if part.probs is None else part.probs[:, i:j]
    return FinishedRows(a, part.labels[i:j], probs, part.col_start)


def concat_rows(parts: Sequence[FinishedRows], job: RowJob, start: int, stop: int) -> FinishedRows:
    """Join consecutive parts into rows ``[start, stop)`` (rows nothing covered are 255).

    Probabilities keep the parts' dtype (uint8 when quantised on the device, float32 after CRF).
    """
    labels = np.full((stop - start, job.info.width), IGNORE_INDEX, np.uint8)
    kinds = [p.probs.dtype for p in parts if p.probs is not None]
    dtype = kinds[0] if kinds else np.dtype(np.uint8)  # uint8 quantised on the device; float32 after CRF
    probs = np.zeros((job.num_classes, stop - start, job.info.width), dtype) if job.keep_probs else None
    for p in parts:
        labels[p.row_start - start : p.row_stop - start] = p.labels
        if probs is not None and p.probs is not None:
            probs[:, p.row_start - start : p.row_stop - start] = p.probs
    return FinishedRows(start, labels, probs)


def _strip_image(job: RowJob, part: FinishedRows) -> np.ndarray:
    """The CRF's colour bands of ``part``'s rows, whole width, on the working grid (resampled when not the file's)."""
    assert job.crf is not None
    width, rows = job.info.width, part.row_stop - part.row_start
    with open_raster(job.info.path) as src:
        window = job.info.file_window(Window(0, part.row_start, width, rows))
        try:
            return src.read(
                list(job.crf.bands),
                window=window,
                out_shape=(len(job.crf.bands), rows, width),
                resampling=Resampling.bilinear,
            )
        except (RasterioError, CPLE_BaseError) as exc:
            raise read_error(job.info.path, exc, f"rows {part.row_start}..{part.row_stop}") from None


def refine_strip(job: RowJob, pool: CRFPool | None, part: FinishedRows) -> FinishedRows:
    """Refine finished rows with DenseCRF in blocks of ``size`` columns (plus context margins).

    Blocks are refined here one after the other, or all at once by ``pool``'s processes: the same calls either way.
    """
    assert job.crf is not None and part.probs is not None
    crf = job.crf
    width, size = job.info.width, job.size
    valid = part.labels != IGNORE_INDEX
    if not valid.any():
        return part if job.keep_probs else replace(part, probs=None)
    image = _strip_image(job, part)
    ranges = None if image.dtype == np.uint8 else crf.band_ranges
    crf = replace(crf, bands=tuple(range(1, len(crf.bands) + 1)))  # the strip holds just those bands, in order
    spans = [(c, max(0, c - crf.margin), min(width, c + size + crf.margin)) for c in range(0, width, size)]
    spans = [(c, x0, x1) for c, x0, x1 in spans if valid[:, c : c + size].any()]
    blocks = [(part.probs[:, :, x0:x1], image[:, :, x0:x1], valid[:, x0:x1]) for _, x0, x1 in spans]
    if pool is None:
        refined: Iterable[np.ndarray] = (crf.refine(p, i, valid=v, band_ranges=ranges) for p, i, v in blocks)
    else:
        refined = pool.map(crf, blocks, ranges)
    probs = part.probs.copy()
    for (c, x0, _), out in zip(spans, refined, strict=True):
        probs[:, :, c : min(c + size, width)] = out[:, :, c - x0 : c - x0 + min(size, width - c)]
    labels = np.where(valid, probs.argmax(0), IGNORE_INDEX).astype(np.uint8)
    return FinishedRows(part.row_start, labels, probs if job.keep_probs else None)
