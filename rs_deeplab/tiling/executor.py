"""Where tiling tasks run: an embedded Dask ``LocalCluster``, an existing Dask scheduler, or in this process."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rs_deeplab.cli import progress
from rs_deeplab.errors import InputError
from rs_deeplab.tiling.crops import CropSettings, Record, SceneJob, tile_rows

log = logging.getLogger("rs_deeplab.tiling.tiler")

WORKER_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
"""How local worker processes start (see :func:`_local_cluster`)."""


@dataclass(frozen=True)
class TaskSpec:
    """One Dask task: rows of windows of one scene (paths and numbers only), and how many crops they hold."""

    job: SceneJob
    rows: tuple[int, ...]
    settings: CropSettings
    crops: int


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Executor:
    """Runs task lists; ``workers`` is how many tasks can run at once (used to size tasks)."""

    description: str
    workers: int
    client: Any = None

    def run(self, tasks: Sequence[TaskSpec], *, quiet: bool = False) -> list[Record]:
        """Run every task, showing crops done / total, and return all records (in no particular order)."""
        records: list[Record] = []
        ticks = self._dask_ticks(tasks, records) if self.client is not None else self._serial_ticks(tasks, records)
        total = sum(t.crops for t in tasks)
        for _ in progress(ticks, total=total, desc="tiling", unit="crop", quiet=quiet):
            pass
        return records

    @staticmethod
    def _serial_ticks(tasks: Sequence[TaskSpec], records: list[Record]) -> Iterator[None]:
        for t in tasks:
            records.extend(tile_rows(t.job, t.rows, t.settings))
            yield from (None for _ in range(t.crops))

    def _dask_ticks(self, tasks: Sequence[TaskSpec], records: list[Record]) -> Iterator[None]:
        from distributed import as_completed

        run_id = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(tile_rows, t.job, t.rows, t.settings, key=f"tile-{run_id}-{i}", pure=False)
            for i, t in enumerate(tasks)
        ]
        crops = {f.key: t.crops for f, t in zip(futures, tasks, strict=True)}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                records.extend(future.result())
                yield from (None for _ in range(crops[future.key]))
        finally:
            self.client.cancel([f for f in futures if not f.done()])


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Keep distributed's INFO/WARNING chatter (ports, scratch folders, closing comms) off the user's terminal."""
    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_executor_options(workers: int | None, scheduler: str | None) -> None:
    """Validate ``--workers`` and ``--scheduler`` before anything starts.

    Raises:
        InputError: ``workers`` is not a whole number ≥ 1, or ``scheduler`` is not a Dask address.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if scheduler is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+", scheduler):
        raise InputError(f"scheduler address {scheduler!r} is not like tcp://host:8786")


def _connect(address: str) -> Any:
    """A client on an existing scheduler, or a one-line error saying how to get one."""
    import dask
    from distributed import Client

    timeout = dask.config.get("distributed.comm.timeouts.connect")
    log.info("connecting to the Dask scheduler at %s (timeout %s)", address, timeout)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(
            f"cannot reach the Dask scheduler at {address} ({reason}); start one with `dask scheduler` "
            "and `dask worker ADDRESS`, or leave out --scheduler"
        ) from None


@contextlib.contextmanager
def open_executor(
    workers: int | None = None, scheduler: str | None = None, *, processes: bool = True
) -> Iterator[Executor]:
    """Start (or connect to) what runs the tasks, and close it afterwards.

    Args:
        workers: Local workers (processes, or threads without ``processes``); one per core when None. ``1`` runs the
            tasks in this process: a one-worker cluster would only add start-up time.
        scheduler: Address of an existing Dask scheduler; its workers run the tasks (must share the file system).
        processes: Local workers as processes instead of threads of this process.
    """
    check_executor_options(workers, scheduler)
    with _quiet_dask():
        if scheduler:
            client = _connect(scheduler)
            try:
                count = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
                yield Executor(f"Dask scheduler {scheduler} ({count} worker threads)", max(1, count), client)
            finally:
                client.close()
            return
        n = workers or default_workers()
        if n == 1:
            yield Executor("this process (1 worker)", 1)
            return
        yield from _local_cluster(n, processes)


@contextlib.contextmanager
def _children_ignore_ctrl_c() -> Iterator[list[int]]:
    """Worker processes forked in this block leave Ctrl-C to this process, which closes them quietly.

    A terminal's Ctrl-C reaches every process of its group: an idle worker would print its event loop's
    KeyboardInterrupt traceback. While the workers are forked, SIGINT goes to a handler that only notes it in the
    list yielded; the forked workers keep that handler (a note in their own memory: the signal is ignored there),
    and this process gets its usual handler back afterwards: the caller raises a noted Ctrl-C once it can close
    what it started.
    """
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def _local_cluster(n: int, processes: bool) -> Iterator[Executor]:
    """A ``LocalCluster`` of ``n`` single-threaded worker processes, or one worker with ``n`` threads.

    Worker processes are forked: a spawned worker re-imports Python, Dask and GDAL, which costs about a second
    of both cores before any tile is cut (bench/RESULTS.md, Tiler). Forking is safe here because nothing else
    runs in this process while the workers start (scenes were checked and closed before).
    """
    import dask
    from distributed import Client, LocalCluster

    kind = "processes" if processes else "threads"
    method = {"distributed.worker.multiprocessing-method": WORKER_START_METHOD}
    with dask.config.set(method), warnings.catch_warnings(), _children_ignore_ctrl_c() as ctrl_c:
        warnings.filterwarnings("ignore", "This process .* is multi-threaded, use of fork", DeprecationWarning)
        cluster = LocalCluster(
            n_workers=n if processes else 1,
            threads_per_worker=1 if processes else n,
            processes=processes,
            dashboard_address=None,
            # no dashboard, and the scheduler's small HTTP server on a free port instead of 8787, which another
            # Dask cluster (a notebook's, a test's) may hold: that would print a port warning on every run
            scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
            silence_logs=logging.CRITICAL,  # task errors reach the client anyway; shutdown races stay quiet
        )
    try:
        if ctrl_c:
            raise KeyboardInterrupt  # pressed while the workers started
        with Client(cluster, set_as_default=False) as client:
            yield Executor(f"Dask local cluster ({n} {kind})", n, client)
    except BaseException:
        if processes:  # Ctrl-C or a failed task: stop the workers now, not after their current band of rows
            with contextlib.suppress(Exception):
                cluster.sync(_stop_workers, list(cluster.workers.values()))
        raise
    finally:
        cluster.close()


STOP_SECONDS = 0.5
"""How long a worker process may take to stop after Ctrl-C or a failed task before it is killed (its half-written
crops are removed by the tiler; finished rows are kept for the re-run)."""


async def _stop_workers(nannies: Sequence[Any]) -> None:
    import asyncio

    await asyncio.gather(*(w.close(timeout=STOP_SECONDS, reason="tiling stopped") for w in nannies),
                         return_exceptions=True)  # fmt: skip


@contextlib.contextmanager
def scheduler_client(address: str) -> Iterator[Any]:
    """A quiet client on the existing Dask scheduler at ``address`` (one-line errors), closed afterwards."""
    check_executor_options(None, address)
    with _quiet_dask():
        client = _connect(address)
        try:
            yield client
        finally:
            client.close()
