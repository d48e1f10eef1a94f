"""Waiting for the futures of a Dask job without ever waiting forever: workers gone, scheduler lost, tasks killed.

A worker that dies is survived: Dask runs its tasks again on the others, and every task here writes its outputs
under temporary names and renames them, so a repeated task gives the same files. What cannot be survived ends the
wait with one line (:class:`~rs_deeplab.cli.errors.ClusterError`, exit 2 in the scripts): no worker connected for
:data:`WORKERS_GONE_SECONDS` (the environment variable ``RS_DEEPLAB_WORKERS_GONE_SECONDS`` changes it), the
scheduler's connection closed, or a task whose workers died again and again (Dask's ``KilledWorker``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import Iterator, Sequence
from typing import Any

from rs_deeplab.cli.errors import ClusterError, InputError

log = logging.getLogger("rs_deeplab.runtime.cluster")

WORKERS_GONE_SECONDS = 30.0
"""How long a job waits while its scheduler has no worker at all before it stops with one line (exit 2); the
environment variable :data:`WORKERS_GONE_ENV` changes it. Long enough for a nanny or a cluster manager to
replace workers, short enough not to leave a job hanging unseen."""

WORKERS_GONE_ENV = "RS_DEEPLAB_WORKERS_GONE_SECONDS"

POLL_SECONDS = 0.5
"""How often a waiting job looks at its cluster (workers left, scheduler connected)."""


class Watch:
    """Waits for a job's futures while watching the cluster that runs them; every wait ends.

    A worker that dies is survived (Dask runs its tasks again on the others). The wait stops with a
    :class:`~rs_deeplab.cli.errors.ClusterError` instead when no worker has been connected for ``patience`` seconds
    (:data:`WORKERS_GONE_SECONDS`, or :data:`WORKERS_GONE_ENV`), when the scheduler is lost, or when Dask gives up
    a task whose workers kept dying (``KilledWorker``). Errors of the tasks themselves come through as they are.

    Args:
        client: The client the futures belong to.
        address: The scheduler's address (for messages).
        local: The cluster is this process's own (messages say so).
        patience: Seconds without any worker before the job stops; :func:`workers_gone_seconds` when None.
    """

    def __init__(self, client: Any, address: str, *, local: bool = False, patience: float | None = None) -> None:
        self.client, self.address, self.local = client, address, local
        self.patience = workers_gone_seconds() if patience is None else patience
        self._alone_since: float | None = None

    def as_completed(self, futures: Sequence[Any]) -> Iterator[Any]:
        """Yield each future as it finishes (call :meth:`result` on it), checking the cluster while none does."""
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for future in futures:
            future.add_done_callback(finished.put)
        for _ in range(len(futures)):
            while True:
                try:
                    future = finished.get(timeout=POLL_SECONDS)
                    break
                except queue.Empty:
                    self.check()
            yield future

    def result(self, future: Any) -> Any:
        """The result of a finished future; the cluster's failures as a :class:`ClusterError`.

        A finished result can still be lost with the worker holding it (the future is pending again while Dask
        computes it once more): it is waited for with the cluster watched, as in :meth:`as_completed`.
        """
        from concurrent.futures import CancelledError

        from distributed import KilledWorker

        try:
            while True:
                try:
                    return future.result(timeout=POLL_SECONDS)
                except TimeoutError:
                    if future.status == "error":  # the task's own TimeoutError
                        raise
                    self.check()
        except KilledWorker as exc:
            task, worker = exc.args[0], getattr(exc.args[1], "address", exc.args[1])
            raise ClusterError(
                f"Dask workers at {self.address} died while running task {task}, {exc.args[2] + 1} time(s) (the "
                f"last: {worker}; out of memory, or killed); give them more memory or fewer threads and re-run the "
                "same command to resume"
            ) from None
        except CancelledError as exc:
            if getattr(exc, "reason", "") == "scheduler-connection-lost" or self.client.status != "running":
                raise self._scheduler_lost() from None
            raise

    def wait(self, future: Any) -> Any:
        """Wait for one future and return its result (see :meth:`result`)."""
        for done in self.as_completed([future]):
            return self.result(done)

    def cancel(self, futures: Sequence[Any]) -> None:
        """Cancel the futures not finished yet (nothing to ask a scheduler that is gone)."""
        pending = [f for f in futures if not f.done()]
        if pending and self.client.status == "running":
            with contextlib.suppress(Exception):
                self.client.cancel(pending)

    def check(self) -> None:
        """Raise a :class:`ClusterError` when the scheduler is lost or no worker has been there for too long."""
        if self.client.status != "running":
            raise self._scheduler_lost()
        try:
            workers = self.client.nthreads()
        except (OSError, TimeoutError):
            raise self._scheduler_lost() from None
        now = time.monotonic()
        if workers:
            self._alone_since = None
        elif self._alone_since is None:
            self._alone_since = now
            log.debug("no Dask worker at %s; waiting up to %g s for one", self.address, self.patience)
        elif now - self._alone_since >= self.patience:
            if self.local:
                raise ClusterError(
                    f"all local Dask workers died (none for {self.patience:g} s); re-run the same "
                    "command to resume (with fewer --workers if they ran out of memory)"
                )
            raise ClusterError(
                f"all Dask workers at {self.address} are gone (none for {self.patience:g} s; {WORKERS_GONE_ENV} "
                f"sets how long to wait); start workers (`dask worker {self.address}`) and re-run the same "
                "command to resume"
            )

    def _scheduler_lost(self) -> ClusterError:
        if self.local:
            return ClusterError("the local Dask scheduler stopped; re-run the same command to resume")
        return ClusterError(
            f"lost the Dask scheduler at {self.address} (connection closed); start a scheduler and workers and "
            "re-run the same command (with the new --scheduler address) to resume"
        )


def workers_gone_seconds() -> float:
    """:data:`WORKERS_GONE_SECONDS`, or the value of the environment variable :data:`WORKERS_GONE_ENV`.

    Raises:
        InputError: The variable is set but not a positive number of seconds.
    """
    text = os.environ.get(WORKERS_GONE_ENV)
    if text is None:
        return WORKERS_GONE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InputError(
            f"{WORKERS_GONE_ENV}={text!r} must be a positive number of seconds (default {WORKERS_GONE_SECONDS:g})"
        )
    return value
