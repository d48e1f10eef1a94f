"""Where tiling tasks run: a :class:`~rs_deeplab.runtime.cluster.Cluster` (local cluster, scheduler, or here).

On Dask the tasks are waited for through a :class:`rs_deeplab.runtime.cluster_watch.Watch`: a worker killed mid-task is
survived (its tasks run again elsewhere and write the same files), while no worker left for 30 s or a lost
scheduler ends the run with one line; finished rows are kept for the re-run.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rs_deeplab.cli.console import progress
from rs_deeplab.runtime.cluster import Cluster, open_cluster
from rs_deeplab.tiling.crops import CropSettings, Record, SceneJob, tile_rows
from rs_deeplab.tiling.verify import read_every_block

log = logging.getLogger("rs_deeplab.tiling.tiler")


@dataclass(frozen=True)
class TaskSpec:
    """One Dask task: rows of windows of one scene (paths and numbers only), and how many crops they hold."""

    job: SceneJob
    rows: tuple[int, ...]
    settings: CropSettings
    crops: int


@dataclass
class Executor:
    """Runs tiling task lists on a cluster; ``workers`` is how many tasks can run at once (used to size tasks)."""

    cluster: Cluster

    @property
    def description(self) -> str:
        """Where the tasks run, for logs."""
        return self.cluster.description

    @property
    def workers(self) -> int:
        """How many tasks run at once."""
        return self.cluster.workers

    @property
    def client(self) -> Any:
        """The Dask client, or None to run in this process."""
        return self.cluster.client

    def read_through(self, paths: Sequence[str]) -> int:
        """Decode every block of the compressed rasters among ``paths`` (:mod:`rs_deeplab.tiling.verify`) on the
        workers; returns how many were read. The first that cannot be decoded raises its one-line error.
        """  # noqa: D205
        if self.client is None or not paths:
            return sum(read_every_block(p) for p in paths)
        watch = self.cluster.watch()
        run_id = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(read_every_block, p, key=f"read-through-{run_id}-{i}", pure=False)
            for i, p in enumerate(paths)
        ]
        try:
            return sum(watch.result(f) for f in watch.as_completed(futures))
        finally:
            watch.cancel(futures)

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
        watch = self.cluster.watch()
        run_id = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(tile_rows, t.job, t.rows, t.settings, key=f"tile-{run_id}-{i}", pure=False)
            for i, t in enumerate(tasks)
        ]
        crops = {f.key: t.crops for f, t in zip(futures, tasks, strict=True)}
        try:
            for future in watch.as_completed(futures):
                records.extend(watch.result(future))
                yield from (None for _ in range(crops[future.key]))
        finally:
            watch.cancel(futures)


LOCAL_DASK_SETTINGS = {"distributed.worker.profile.enabled": False}
"""Dask settings of the local workers this process starts (forked inside the block, they keep them): no
statistical profiler sampling each task's stack every 10 ms, which cost ~10 % of a tiling task's CPU
(bench/RESULTS.md, tiling near the floor). Workers of an existing scheduler keep their own settings."""


@contextlib.contextmanager
def open_executor(
    workers: int | None = None, scheduler: str | None = None, *, processes: bool = True
) -> Iterator[Executor]:
    """Start (or connect to) what runs the tiling tasks (:func:`~rs_deeplab.runtime.cluster.open_cluster`); close after.

    Args:
        workers: Local workers (processes, or threads without ``processes``); one per core when None. ``1`` runs the
            tasks in this process.
        scheduler: Address of an existing Dask scheduler; its workers run the tasks (must share the file system).
        processes: Local workers as processes instead of threads of this process.
    """
    import dask
    import distributed  # noqa: F401  (its defaults first: the block's end restores the settings as they were)

    with dask.config.set(LOCAL_DASK_SETTINGS), open_cluster(workers, scheduler, processes=processes) as cluster:
        yield Executor(cluster)
