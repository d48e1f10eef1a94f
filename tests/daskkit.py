"""A real Dask cluster for tests: `dask scheduler` and `dask worker` command-line processes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")
TILE = [sys.executable, str(ROOT / "pipelines" / "tile.py")]
"""``python pipelines/tile.py`` with this interpreter."""


def tile_command(scene: Any, out: Path, *options: str) -> list[str]:
    """``pipelines/tile.py`` on a scene with its labels (a ``SceneSpec``), Potsdam classes, 32-pixel crops every 16."""
    labels = ["--labels", str(scene.label), "--scheme", "potsdam"]
    return [*TILE, str(scene.image), *labels, "--size", "32", "--stride", "16", "--out", str(out), *options]


def subprocess_env() -> dict[str, str]:
    """The environment for pipeline subprocesses: the repository importable, no progress bars."""
    env = dict(os.environ, RS_DEEPLAB_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def processes(folder: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], dict[str, Any]]]:
    """Keep started processes (each in its own session) and stop their whole process groups afterwards.

    Yields the list to append processes to and the ``Popen`` keywords to start them with (log to
    ``folder/dask.log``, the repository importable, a new session).
    """
    procs: list[subprocess.Popen[bytes]] = []
    log = (folder / "dask.log").open("a")
    common = {"env": subprocess_env(), "stdout": log, "stderr": log, "start_new_session": True}
    try:
        yield procs, common
    finally:  # each started in its own session: stop its whole process group (the worker's nanny children too)
        for proc in reversed(procs):  # workers before their scheduler: one whose scheduler is gone waits to close
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def start_scheduler(folder: Path, procs: list[subprocess.Popen[bytes]], common: dict[str, Any]) -> str:
    """Start ``dask scheduler`` on loopback (appended to ``procs``); return its address once it is listening."""
    info = folder / "scheduler.json"
    info.unlink(missing_ok=True)
    procs.append(
        subprocess.Popen(
            [
                str(DASK),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--scheduler-file",
                str(info),
                "--no-dashboard",
            ],
            **common,
        )
    )
    deadline = time.monotonic() + 60
    while procs[-1].poll() is None and time.monotonic() < deadline:
        address = _address(info)  # the scheduler writes the file in steps: wait for a whole one, not for the name
        if address is not None:
            return address
        time.sleep(0.1)
    raise AssertionError(f"dask scheduler gave no address in {info} (exit {procs[-1].poll()}; see {folder}/dask.log)")


def _address(info: Path) -> str | None:
    """The address in a scheduler file, or None while it is missing or half-written."""
    try:
        return str(json.loads(info.read_text())["address"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int = 2) -> Iterator[str]:
    """Start a scheduler and ``workers`` single-threaded worker processes; yield the scheduler address."""
    from distributed import Client

    with processes(folder) as (procs, common):
        address = start_scheduler(folder, procs, common)
        procs.append(
            subprocess.Popen(
                [
                    str(DASK),
                    "worker",
                    address,
                    "--nworkers",
                    str(workers),
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--local-directory",
                    str(folder),
                    "--no-dashboard",
                ],
                **common,
            )
        )
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address


def start_workers(
    address: str, folder: Path, procs: list[subprocess.Popen[bytes]], common: dict[str, Any], count: int = 2
) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` single-threaded workers, each its own ``dask worker --no-nanny`` process (appended to
    ``procs``), and return them once the scheduler counts ``count`` workers.

    Without a nanny the worker runs in the very process started here: a SIGKILL to it kills the process that holds
    its tasks, and nothing starts it again.
    """
    from distributed import Client

    command = [
        str(DASK),
        "worker",
        address,
        "--nthreads",
        "1",
        "--no-nanny",
        "--host",
        "127.0.0.1",
        "--local-directory",
        str(folder),
        "--no-dashboard",
    ]
    started = [subprocess.Popen(command, **common) for _ in range(count)]
    procs.extend(started)
    with Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=120)
    return started


def busy_workers(client: Any, prefix: str) -> list[str]:
    """Workers the scheduler lists as processing a task whose key starts with ``prefix``."""
    return [str(w) for w, keys in client.processing().items() if any(str(k).startswith(prefix) for k in keys)]


def wait_for(condition: Callable[[], bool], ended: Callable[[], bool], timeout: float = 120) -> None:
    """Poll ``condition`` until it holds; fail when ``ended()`` first (the job finished: give it more work)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert not ended(), "the job ended before the fault could be made; give it more work"
        assert time.monotonic() < deadline, f"no evidence of work within {timeout} s"
        time.sleep(0.02)


def kill_busy_worker(client: Any, prefix: str, evidence: Callable[[], bool], ended: Callable[[], bool]) -> str:
    """SIGKILL the process of a worker as soon as the scheduler lists a task whose key starts with ``prefix`` as
    processing on it and ``evidence()`` holds (the job has written something); return that worker's address.

    Workers must run without a nanny (:func:`start_workers`), so that the killed process is the one holding the
    tasks.
    """
    pids = client.run(os.getpid)
    busy: list[str] = []

    def ready() -> bool:
        busy[:] = busy_workers(client, prefix)
        return bool(busy) and evidence()

    wait_for(ready, ended)
    os.kill(pids[busy[0]], signal.SIGKILL)
    return busy[0]
