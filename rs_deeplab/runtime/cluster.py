"""Where Dask tasks run, for every stage: an embedded ``LocalCluster``, an existing Dask scheduler, or this process.

Tiling (:mod:`rs_deeplab.tiling.executor`), the CRF search and Dask inference open their workers here. Nothing in
this module changes process-wide state for longer than the block that needs it: Dask's loggers are quietened
while a cluster or client is open and get their levels back afterwards (:func:`quiet_dask`), the fork warning of
a local cluster's start is ignored inside a ``warnings.catch_warnings()`` block, and Ctrl-C's handler is swapped
only while the local workers are forked. Worker processes are tuned only through a plugin the caller registers
explicitly (:class:`rs_deeplab.runtime.worker_tuning.TuneWorker`, see :func:`scheduler_client`).

On an existing scheduler a job never waits forever: the scheduler must answer within :data:`CONNECT_SECONDS`
before anything is written, and while the job runs (:class:`~rs_deeplab.runtime.cluster_watch.Watch`) it stops with one
line (:class:`~rs_deeplab.cli.errors.ClusterError`, exit 2) when no worker has been connected for 30 s
(:data:`~rs_deeplab.runtime.cluster_watch.WORKERS_GONE_SECONDS`; ``RS_DEEPLAB_WORKERS_GONE_SECONDS`` changes it), when
the
scheduler is lost, or when workers die again and again on one task. Finished work is kept, so the same command
resumes once the cluster is back.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rs_deeplab.cli.errors import ClusterError, InputError
from rs_deeplab.runtime.cluster_watch import WORKERS_GONE_ENV, WORKERS_GONE_SECONDS, Watch, workers_gone_seconds
from rs_deeplab.runtime.cores import usable_cores

log = logging.getLogger("rs_deeplab.runtime.cluster")

WORKER_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
"""How local worker processes start (see :func:`open_cluster`)."""

DASK_LOGGERS = ("distributed", "tornado", "asyncio")
"""The loggers :func:`quiet_dask` silences while a cluster is open."""

STOP_SECONDS = 0.5
"""How long a local worker process may take to stop after Ctrl-C or a failed task before it is killed."""

CONNECT_SECONDS = 5.0
"""Longest wait for an existing Dask scheduler to answer (at the start and for each later call to it); an address
that does not answer is one line after this long, before anything is written. Dask's
``distributed.comm.timeouts.connect`` setting shortens it."""

SCHEDULER_HELP = (
    f"it must answer within {CONNECT_SECONDS:g} s; a worker killed mid-task is survived, and the run stops with "
    f"one line when no worker is left for {WORKERS_GONE_SECONDS:g} s ({WORKERS_GONE_ENV}) or the scheduler is "
    "lost: the same command resumes"
)
"""What ``--scheduler`` of every script adds to its help: the stated timeouts."""


@dataclass
class Cluster:
    """What runs tasks: ``client`` (None: this process, one task at a time) and how many run at once.

    ``address`` is the scheduler's (None in this process) and ``local`` whether this process started the cluster.
    """

    description: str
    workers: int
    client: Any = None
    address: str | None = None
    local: bool = True

    def watch(self) -> Watch:
        """A :class:`Watch` over this cluster's client (which must exist)."""
        assert self.client is not None and self.address is not None
        return Watch(self.client, self.address, local=self.local)


def default_workers() -> int:
    """One worker per core this process can keep busy (affinity and cgroup quota: :mod:`rs_deeplab.runtime.cores`)."""
    return usable_cores()


def check_cluster_options(workers: int | None, scheduler: str | None) -> None:
    """Validate ``--workers`` and ``--scheduler`` before anything starts.

    Raises:
        InputError: ``workers`` is not a whole number ≥ 1, or ``scheduler`` is not a Dask address.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if scheduler is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+", scheduler):
        raise InputError(f"scheduler address {scheduler!r} is not like tcp://host:8786")
    if scheduler is not None:
        workers_gone_seconds()  # a bad RS_DEEPLAB_WORKERS_GONE_SECONDS is refused before any work


@contextlib.contextmanager
def quiet_dask() -> Iterator[None]:
    """Keep distributed's INFO/WARNING chatter (ports, scratch folders, closing comms) off the user's terminal.

    The levels of :data:`DASK_LOGGERS` (and of their children that have levels of their own) are raised for the
    block only and restored on exit.
    """
    import distributed  # noqa: F401  (its loggers exist, with the levels Dask's config gives them)

    loggers = [logging.getLogger(n) for n in DASK_LOGGERS]
    known = list(logging.root.manager.loggerDict.items())
    # children with a level of their own (``distributed.client``, ``tornado.application``) would still print
    loggers += [
        lg
        for name, lg in known
        if isinstance(lg, logging.Logger)
        and lg.level != logging.NOTSET
        and name.startswith(tuple(f"{n}." for n in DASK_LOGGERS))
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def connect(address: str) -> Any:
    """A client on an existing scheduler, or a one-line error saying how to get one.

    The scheduler must answer within :data:`CONNECT_SECONDS`; a refused TCP connection (nothing listens there)
    fails at once instead of being retried for that long, and so does an address that is no scheduler's
    (:func:`_probe`).

    Raises:
        InputError: The scheduler cannot be reached.
    """
    import dask
    from dask.utils import parse_timedelta
    from distributed import Client

    configured = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s")
    timeout = min(CONNECT_SECONDS, configured or CONNECT_SECONDS)
    log.debug("connecting to the Dask scheduler at %s (timeout %g s)", address, timeout)
    try:
        _probe(address, timeout)
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(
            f"cannot reach the Dask scheduler at {address} ({reason}); start one with `dask scheduler` "
            "and `dask worker ADDRESS`, or leave out --scheduler"
        ) from None


def _probe(address: str, timeout: float) -> None:
    """Fail fast where a ``tcp://`` address cannot be a Dask scheduler (the client would retry or misread it).

    A Dask server greets every connection with its handshake (8 bytes of message length first): a refused
    connection (nothing listens there) fails at once, and a server that sends no such greeting within ``timeout``
    (an HTTP port, the dashboard's) is named as not a scheduler. Other failures are left to the Dask client.

    Raises:
        ConnectionError: Refused, or not a Dask scheduler.
    """
    import socket
    import struct
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        return
    try:
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    except ConnectionRefusedError:
        raise ConnectionRefusedError(f"connection refused by {parts.hostname}:{parts.port}") from None
    except OSError:
        return  # unreachable, no such host, timed out...: the Dask client says it in its own words
    with sock:
        greeting = b""
        with contextlib.suppress(OSError):
            while len(greeting) < 8 and (chunk := sock.recv(8 - len(greeting))):
                greeting += chunk
    if len(greeting) < 8 or struct.unpack("<Q", greeting)[0] > 1 << 24:
        raise ConnectionError(
            f"{parts.hostname}:{parts.port} answers, but not as a Dask scheduler (its port is "
            "8786 by default; 8787 is the dashboard's)"
        )


@contextlib.contextmanager
def open_cluster(
    workers: int | None = None, scheduler: str | None = None, *, processes: bool = True
) -> Iterator[Cluster]:
    """Start (or connect to) what runs the tasks, and close it afterwards.

    Args:
        workers: Local workers (processes, or threads without ``processes``); one per core when None. ``1`` runs the
            tasks in this process: a one-worker cluster would only add start-up time.
        scheduler: Address of an existing Dask scheduler; its workers run the tasks (must share the file system).
        processes: Local workers as processes instead of threads of this process.
    """
    check_cluster_options(workers, scheduler)
    with quiet_dask():
        if scheduler:
            client = connect(scheduler)
            try:
                count = sum(client.nthreads().values())
                if not count:
                    raise ClusterError(
                        f"the Dask scheduler at {scheduler} has no workers; start `dask worker {scheduler}` first"
                    )
                yield Cluster(f"Dask scheduler {scheduler} ({count} worker threads)", count, client, scheduler, False)
            finally:
                close_client(client)
            return
        n = workers or default_workers()
        if n == 1:
            yield Cluster("this process (1 worker)", 1)
            return
        yield from _local_cluster(n, processes)


@contextlib.contextmanager
def scheduler_client(address: str, *, tune_workers: bool = False) -> Iterator[Any]:
    """A quiet client on the existing Dask scheduler at ``address`` (one-line errors), closed afterwards.

    Args:
        address: The scheduler's address.
        tune_workers: Register :class:`rs_deeplab.runtime.worker_tuning.TuneWorker` on the scheduler: its current and
            future worker processes tune malloc and match torch's threads to their own (the caller asks for it:
            it changes the workers' processes for every later task, which is what a torch workload there wants).
    """
    check_cluster_options(None, address)
    with quiet_dask():
        client = connect(address)
        try:
            if tune_workers:
                from rs_deeplab.runtime.worker_tuning import TuneWorker

                client.register_plugin(TuneWorker())
            yield client
        finally:
            close_client(client)


def close_client(client: Any) -> None:
    """Close a client; one that lost its scheduler is closed without waiting to reconnect."""
    if client.status != "running":  # lost its scheduler: closing must not wait out a reconnection
        with contextlib.suppress(Exception):
            client.close(timeout=CONNECT_SECONDS)
        return
    client.close()


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


def _local_cluster(n: int, processes: bool) -> Iterator[Cluster]:
    """A ``LocalCluster`` of ``n`` single-threaded worker processes, or one worker with ``n`` threads.

    Worker processes are forked: a spawned worker re-imports Python, Dask and GDAL, which costs about a second
    of both cores before any task runs (bench/RESULTS.md, Tiler). Forking is safe here because nothing else
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
            yield Cluster(f"Dask local cluster ({n} {kind})", n, client, cluster.scheduler_address)
    except BaseException:
        if processes:  # Ctrl-C or a failed task: stop the workers now, not after their current task
            with contextlib.suppress(Exception):
                cluster.sync(_stop_workers, list(cluster.workers.values()))
        raise
    finally:
        cluster.close()


async def _stop_workers(nannies: Sequence[Any]) -> None:
    import asyncio

    await asyncio.gather(
        *(w.close(timeout=STOP_SECONDS, reason="tasks stopped") for w in nannies), return_exceptions=True
    )
