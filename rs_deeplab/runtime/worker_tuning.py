"""The Dask worker plugin that tunes worker processes: registered explicitly by whoever opens the client.

A Dask task runs in a worker process shared with every other task, so a task must not change process-wide state
(malloc thresholds, torch's thread count) itself. The caller that owns the cluster installs :class:`TuneWorker`
instead (``client.register_plugin(TuneWorker())``; :func:`rs_deeplab.runtime.cluster.scheduler_client` does it for the
inference runner): every current and future worker applies :func:`rs_deeplab.runtime.tuning.tune_process` once when it
starts. A worker that lives in the caller's own process (threads of this process, e.g. an in-process
``LocalCluster``) is left alone: that process's settings are its entry point's business.

This module imports ``distributed``; import it only where a Dask client is opened.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from rs_deeplab.runtime.tuning import tune_process

log = logging.getLogger("rs_deeplab.runtime.cluster")


class TuneWorker(WorkerPlugin):
    """Apply :func:`rs_deeplab.runtime.tuning.tune_process` in each Dask worker process when it starts.

    Args:
        threads: torch's intra-op threads in each worker; None: as many as the worker runs tasks at once (two
            single-threaded workers on two cores would otherwise run two OpenMP pools each, and oversubscribed
            OpenMP spin-waits slowed a CPU model ~10× here).
        malloc: Tune glibc's malloc thresholds (:func:`rs_deeplab.runtime.tuning.tune_malloc`).
    """

    name = "rs-deeplab-tune-worker"
    idempotent = True

    def __init__(self, *, threads: int | None = None, malloc: bool = True) -> None:
        self.threads = threads
        self.malloc = malloc
        self.owner_pid = os.getpid()

    def setup(self, worker: Any) -> None:
        """Tune the worker's process, unless it is the process that registered the plugin."""
        if os.getpid() == self.owner_pid:
            return
        threads = self.threads or int(getattr(getattr(worker, "state", worker), "nthreads", 0) or 0) or None
        tune_process(malloc=self.malloc, threads=threads)
        log.debug("worker %s tuned: malloc=%s threads=%s", getattr(worker, "address", "?"), self.malloc, threads)
