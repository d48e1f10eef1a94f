"""Many scenes as one job, with each scene's outputs opened (or resumed) when its first rows are due.

Locally one model runs scene after scene; on a Dask cluster every scene's row ranges go out as one stream of
tasks, so workers stay busy across scene boundaries. A scene's outputs are finished after its last rows.

A :class:`SceneRun` is one scene's share of the job: its grids, its
:class:`~rs_deeplab.inference.predicting.rows.RowJob`,
its outputs and its resume fingerprint. Only scenes with rows in flight hold open files and row buffers, so memory
does not grow with the number of scenes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rs_deeplab.cli.console import JobProgress
from rs_deeplab.geo.raster import RasterReadError
from rs_deeplab.inference.dask_jobs.runner import WorkerPlan, module_task, predict_rows, task_rows
from rs_deeplab.inference.predicting.blending import FinishedRows
from rs_deeplab.inference.predicting.predictor import Predictor
from rs_deeplab.inference.predicting.regrid import RowResampler, first_working_row
from rs_deeplab.inference.predicting.rows import Panel, RowJob, stream_panels, stream_rows
from rs_deeplab.inference.predicting.streams import BackgroundSink
from rs_deeplab.inference.reading.reader import SceneInfo
from rs_deeplab.inference.runtimes.trained import TrainedModel
from rs_deeplab.inference.writing.writer import OutputSpec, RowSink, RowWriter, partial_path, sidecar_path
from rs_deeplab.runtime.cluster_watch import Watch

log = logging.getLogger("rs_deeplab.inference")


@dataclass
class SceneRun:
    """One scene of a job: ``info`` is its own grid (the outputs'), ``job.info`` the grid the model sees."""

    info: SceneInfo
    job: RowJob
    spec: OutputSpec
    fingerprint: dict[str, Any]
    resume: bool = True
    start: int = 0
    """First row of ``job``'s grid this run computes (set by :meth:`open`)."""
    done: int = 0
    """Scene rows an earlier run had finished."""
    ran: int = 0
    """Windows run through the model for this scene."""
    total: int = 0
    """Windows (before nodata skipping) of the rows this run computes."""
    seconds: float = 0.0
    complete: bool = False
    earlier: bool = False
    """The outputs were complete already, from an earlier run with the same settings."""
    _writer: RowWriter | None = field(default=None, repr=False)
    _sink: RowSink | None = field(default=None, repr=False)
    _opened: float = 0.0

    def windows(self, first_row: int = 0) -> int:
        """Windows of the window rows starting at or after ``first_row`` of ``job``'s grid."""
        offs = [r for r in self.job.row_offs if r >= first_row]
        return self.job.reader().windows_in(offs)

    def open(self) -> int | None:
        """Open (or resume) the outputs; the first row of ``job``'s grid to compute, None when already complete."""
        self._opened = time.perf_counter()
        if not self.resume:
            for p in (self.spec.path, self.spec.probs_path):
                if p is not None:
                    partial_path(p).unlink(missing_ok=True)
            sidecar_path(self.spec.path).unlink(missing_ok=True)
        writer = RowWriter(self.spec, self.info, self.fingerprint)
        if self.resume and writer.complete():
            log.info("%s: already complete from an earlier run with the same settings", self.spec.path)
            self.done, self.complete, self.earlier = self.info.height, True, True
            return None
        self.done = writer.open()
        self._writer, self._sink = writer, writer
        self.start = self.done
        if self.job.info is not self.info:  # predicted on a resampled working grid: rows come back to the scene's
            self.start = first_working_row(self.done, self.info, self.job.info)
            self._sink = RowResampler(
                writer, self.info, self.job.info, self.done, keep_probs=self.spec.probs_path is not None
            )
        self.total = self.job.reader().windows_in(self.job.window_rows(self.start, self.job.info.height))
        return self.start

    def write(self, rows: FinishedRows) -> None:
        """Rows of ``job``'s grid, in order."""
        assert self._sink is not None, "open() first"
        self._sink.write(rows)

    def close(self) -> None:
        """Close the partial files (kept for a resume)."""
        if self._writer is not None:
            self._writer.close()

    def discard(self) -> None:
        """Drop the partial files: the scene turned out unreadable (fixing it changes its fingerprint)."""
        if self._writer is not None:
            self._writer.discard()
            self._writer = self._sink = None

    def finish(self) -> None:
        """Move the complete outputs to their final names."""
        assert self._writer is not None, "open() first"
        self._writer.close()
        self._writer.finish()
        self._writer = self._sink = None
        self.complete = True
        self.seconds = time.perf_counter() - self._opened


def run_local(module: torch.nn.Module, device: torch.device, runs: Iterable[SceneRun], bar: JobProgress) -> None:
    """Predict every scene of ``runs`` in this process, one after another, with one :class:`Predictor`."""
    predictor: Predictor | None = None
    for run in runs:
        start = _open(run, bar, lambda row: row)
        if start is None:
            continue
        if predictor is None:
            job = run.job
            predictor = Predictor(module, device, tta=job.tta, amp=job.amp, channels_last=job.channels_last)
        counted = _Count(bar)
        try:
            with BackgroundSink[FinishedRows](run.write) as sink:
                for part in _local_rows(run, predictor, start, counted.add):
                    sink.put(part)
        except RasterReadError:
            run.discard()
            raise
        finally:
            run.close()
        run.finish()
        run.ran = counted.n
        bar.update(run.windows(start) - counted.n)  # all-nodata windows, skipped: done all the same
        bar.part_done()


def _local_rows(
    run: SceneRun, predictor: Predictor, start: int, on_batch: Callable[[int], None]
) -> Iterator[FinishedRows]:
    """Rows ``start ..`` of a scene: streamed whole, or on a wide scene tier by tier, each tier panel by panel.

    Panels keep memory independent of the scene's width (:meth:`~rs_deeplab.inference.predicting.rows.RowJob.panels`);
    the
    writer commits a tier once all its panels are written. A scene predicted on a resampled grid, or refined by
    CRF, is streamed whole: both take whole rows.
    """
    job, height = run.job, run.job.info.height
    panels = job.panels() if job.info is run.info else [(0, job.info.width)]
    if len(panels) == 1:
        yield from stream_rows(job, predictor, start, height, on_batch=on_batch)
        return
    step = job.tier_rows()
    pieces = [
        Panel(a, min(a + step, height), cols, 0 if a == start else a)
        for a in range(start, height, step)
        for cols in panels
    ]
    yield from stream_panels(job, predictor, pieces, on_batch=on_batch)


def _open(run: SceneRun, bar: JobProgress, first_row: Callable[[int], int]) -> int | None:
    """Open a scene's outputs; take what an earlier run finished out of the bar (``first_row``: where work starts)."""
    before = run.windows()
    start = run.open()
    if start is None:
        bar.drop(before)
        bar.part_done()
        return None
    bar.drop(before - run.windows(first_row(start)))
    return start


def _step_start(row: int, step: int) -> int:
    return row - row % step


class _Count:
    """Windows run, passed on to the bar."""

    def __init__(self, bar: JobProgress) -> None:
        self.n, self.bar = 0, bar

    def add(self, k: int) -> None:
        self.n += k
        self.bar.update(k)


@dataclass
class _Task:
    run: SceneRun
    future: Any
    """None: a scene with no rows left to compute (only its outputs to finish)."""
    last: bool
    windows: int


def _tasks(runs: Iterable[SceneRun], submit: Any, bar: JobProgress) -> Iterator[_Task]:
    """Every scene's row ranges as tasks, in order; a scene's outputs are opened when its first task is due."""
    for run in runs:
        step = task_rows(run.job)
        start = _open(run, bar, functools.partial(_step_start, step=step))  # tasks start on whole steps
        if start is None:
            continue
        first, height = start - start % step, run.job.info.height
        ranges = [(a, min(a + step, height)) for a in range(first, height, step)]
        if not ranges:
            yield _Task(run, None, True, 0)
        for k, (a, b) in enumerate(ranges):
            windows = run.job.reader().windows_in([r for r in run.job.row_offs if a <= r < b])
            yield _Task(run, submit(run.job, a, b), k == len(ranges) - 1, windows)


def run_dask_stream(
    client: Any, plan: WorkerPlan, model: Any, runs: Sequence[SceneRun], device: str, bar: JobProgress
) -> None:
    """Submit every scene's rows as one stream of tasks, a few ahead of the writers, and write results in order.

    Args:
        client: A client on the scheduler.
        plan: What :func:`~rs_deeplab.inference.dask_jobs.runner.plan_workers` decided (resources every task requests).
        model: A :class:`TrainedModel` (each worker loads it once) or a CPU ``torch.nn.Module`` (sent once, as a
            task result: :func:`~rs_deeplab.inference.dask_jobs.runner.module_task`).
        runs: The scenes, in order.
        device: ``--device``, resolved by each worker for its own GPUs.
        bar: The job's progress.
    """
    watch = Watch(client, plan.address)  # waits that notice lost workers, one-line faults
    ref = model if isinstance(model, TrainedModel) else module_task(client, model)

    def submit(job: RowJob, a: int, b: int) -> Any:
        return client.submit(predict_rows, ref, job, a, b, device, pure=False, resources=plan.resources)

    pending: collections.deque[_Task] = collections.deque()
    ahead = max(2, 2 * plan.workers)
    opened: list[SceneRun] = []
    try:
        for task in _tasks(runs, submit, bar):
            if not opened or opened[-1] is not task.run:
                opened.append(task.run)
            pending.append(task)
            while len(pending) > ahead:
                _write_next(pending, watch, bar)
        while pending:
            _write_next(pending, watch, bar)
    finally:
        watch.cancel([t.future for t in pending if t.future is not None])
        for run in opened:
            if not run.complete:
                run.close()


def _write_next(pending: collections.deque[_Task], watch: Any, bar: JobProgress) -> None:
    task = pending.popleft()
    run = task.run
    if task.future is not None:
        try:
            rows = watch.wait(task.future)
        except RasterReadError:
            run.discard()
            raise
        run.write(rows)
        run.ran += task.windows
        bar.update(task.windows)
    if task.last:
        run.finish()
        bar.part_done()


@contextlib.contextmanager
def job_progress(runs: Sequence[SceneRun], quiet: bool) -> Iterator[JobProgress]:
    """One bar for the job: windows of every scene, scenes done."""
    total = sum(run.windows() for run in runs)
    bar = JobProgress(total, desc="inference", unit="window", parts=len(runs), part_name="scenes", quiet=quiet)
    try:
        yield bar
    finally:
        bar.close()
