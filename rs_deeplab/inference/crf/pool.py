"""DenseCRF blocks refined in worker processes, handed back in the order they were submitted.

pydensecrf never releases the GIL: refined on a thread, each block stalled the thread that feeds the model (about
3 windows/s on a 16-core machine). Processes run side by side and leave the feed alone. A worker gets plain arrays
(a block's probabilities, colour bands and valid mask) and returns the refined probabilities, computed by the same
:meth:`~rs_deeplab.inference.crf.dense.CRFSettings.refine` as on a thread, so the labels are the same whatever the
number of processes. Workers start by ``fork`` while this process runs a single thread, else by ``spawn`` (see
:func:`rs_deeplab.runtime.cores.start_method`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from rs_deeplab.cli.errors import InputError, WorkerDiedError
from rs_deeplab.inference.crf.dense import CRFSettings
from rs_deeplab.runtime.cores import start_method

log = logging.getLogger(__name__)

PROCESSES_ENV = "RS_DEEPLAB_CRF_PROCESSES"
"""Number of DenseCRF worker processes of ``infer.py --crf`` (default: the cores this process may use; 1 refines
on a thread, as before)."""

AHEAD_PER_PROCESS = 2
"""Blocks in flight per worker process: enough to keep it busy, little memory."""

Block = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One block's ``(probabilities, image, valid mask)``."""


def resolve_processes(choice: int | None, *, cores: int, env: str | None, daemonic: bool) -> int:
    """How many processes refine: ``choice``, else :data:`PROCESSES_ENV` (``env``), else ``cores``; pure.

    A daemonic process (a Dask or multiprocessing worker) may not start processes: 1 (a thread).

    Raises:
        InputError: ``choice`` or the variable is not a whole number of at least 1.
    """
    if choice is None and env is not None and env.strip():
        try:
            choice = int(env)
        except ValueError:
            choice = 0
        if choice < 1:
            raise InputError(
                f"{PROCESSES_ENV}={env!r}: must be a whole number of at least 1 (DenseCRF processes; "
                "1 refines on a thread)"
            )
    if choice is not None and (isinstance(choice, bool) or not isinstance(choice, int) or choice < 1):
        raise InputError(f"CRF processes must be a whole number of at least 1, got {choice!r}")
    wanted = cores if choice is None else choice
    return 1 if daemonic else max(1, wanted)


def crf_processes(choice: int | None) -> int:
    """:func:`resolve_processes` for this process (its usable cores, its environment; said once if daemonic)."""
    from rs_deeplab.runtime.cores import usable_cores

    wanted = resolve_processes(choice, cores=usable_cores(), env=os.environ.get(PROCESSES_ENV), daemonic=False)
    if wanted > 1 and multiprocessing.current_process().daemon:
        log.info("DenseCRF on a thread: a daemonic process (a Dask or multiprocessing worker) cannot start processes")
        return 1
    return wanted


def strips_in_flight(processes: int, blocks_per_strip: int) -> int:
    """Strips refined at once so that about :data:`AHEAD_PER_PROCESS` blocks per process are in flight (>= 2)."""
    wanted = AHEAD_PER_PROCESS * processes
    return max(2, min(wanted, math.ceil(wanted / max(1, blocks_per_strip))))


def _start_worker() -> None:
    """Ctrl-C is the parent's to handle: it stops the pool, so a worker ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _refine(
    crf: CRFSettings,
    probs: np.ndarray,
    image: np.ndarray,
    valid: np.ndarray,
    ranges: Sequence[tuple[float, float]] | None,
) -> np.ndarray:
    return crf.refine(probs, image, valid=valid, band_ranges=ranges)


class CRFPool:
    """Worker processes that refine DenseCRF blocks; a context manager.

    Args:
        processes: Number of worker processes (at least 2; one refines on a thread without a pool).
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        method = start_method()
        log.debug("DenseCRF in %d worker processes (%s)", processes, method)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context(method), initializer=_start_worker
        )

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def warm_up(self) -> None:
        """Start every worker now (a spawned one imports for a few seconds), e.g. before timing."""
        for future in [self._pool.submit(os.getpid) for _ in range(2 * self.processes)]:
            self._result(future)

    def map(
        self, crf: CRFSettings, blocks: Sequence[Block], ranges: Sequence[tuple[float, float]] | None
    ) -> Iterator[np.ndarray]:
        """Submit every block now; the returned iterator yields the refined blocks in the order of ``blocks``.

        Raises:
            WorkerDiedError: (from the iterator) A worker process died (killed, or out of memory).
        """
        futures = [self._pool.submit(_refine, crf, p, i, v, ranges) for p, i, v in blocks]
        return self._results(futures)

    def _results(self, futures: list[concurrent.futures.Future[np.ndarray]]) -> Iterator[np.ndarray]:
        try:
            for future in futures:
                yield self._result(future)
        finally:
            for future in futures:
                future.cancel()

    def _result(self, future: concurrent.futures.Future[Any]) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise WorkerDiedError(
                f"a DenseCRF worker process died (killed, or out of memory); run again with fewer "
                f"processes ({PROCESSES_ENV}=1 refines on a thread)"
            ) from None
