"""One Dask worker per GPU: ``python -m rs_deeplab.inference.dask_jobs.gpu_workers SCHEDULER_ADDRESS [--gpus 0,1,...]``.

Each worker is a single-threaded ``dask worker`` process that sees one GPU (``CUDA_VISIBLE_DEVICES``) and
advertises the resource ``GPU=1``; inference tasks request that resource, so each GPU holds one model and runs one
task at a time. Arguments it does not know (``--host``, ``--local-directory``, ``--memory-limit``...) are passed
on to every ``dask worker``. It runs until interrupted, or until a worker exits, and then stops them all.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

from rs_deeplab.cli.console import ArgumentParser, cli_entry, setup_logging
from rs_deeplab.cli.errors import InputError
from rs_deeplab.inference.dask_jobs.runner import GPU_RESOURCE
from rs_deeplab.runtime.cluster import check_cluster_options

log = logging.getLogger("rs_deeplab.inference")


def parse_gpus(text: str) -> list[int]:
    """``0,1,3`` → ``[0, 1, 3]``.

    Raises:
        InputError: Not comma-separated whole numbers ≥ 0, or one listed twice.
    """
    try:
        gpus = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        gpus = []
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise InputError(f"--gpus {text!r}: expected distinct GPU indices like 0,1,2")
    return gpus


def visible_devices(gpus: Sequence[int], parent: str | None) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each worker: GPU indices as this process sees them, mapped through its own.

    Args:
        gpus: Indices among the GPUs visible here (``cuda:N``).
        parent: This process's ``CUDA_VISIBLE_DEVICES`` (None: every GPU of the machine is visible).

    Raises:
        InputError: An index beyond the GPUs ``parent`` makes visible.
    """
    if not parent:
        return [str(g) for g in gpus]
    ids = [v.strip() for v in parent.split(",") if v.strip()]
    for g in gpus:
        if g >= len(ids):
            raise InputError(f"--gpus {g}: CUDA_VISIBLE_DEVICES={parent} makes only {len(ids)} GPU(s) visible here")
    return [ids[g] for g in gpus]


def worker_command(address: str, name: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``dask worker`` command of one GPU worker: one process, one thread, resource ``GPU=1``."""
    return [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        address,
        "--nworkers",
        "1",
        "--nthreads",
        "1",
        "--resources",
        f"{GPU_RESOURCE}=1",
        "--name",
        name,
        *extra,
    ]


def start_gpu_workers(
    address: str, gpus: Sequence[int], extra: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start one worker per GPU in ``gpus``, each seeing only its GPU; return the processes (not waited for).

    Raises:
        InputError: A malformed scheduler address, or GPUs outside this process's ``CUDA_VISIBLE_DEVICES``.
    """
    check_cluster_options(None, address)
    base = dict(os.environ if env is None else env)
    ids = visible_devices(gpus, base.get("CUDA_VISIBLE_DEVICES"))
    host = socket.gethostname()
    procs = []
    for g, cuda in zip(gpus, ids, strict=True):
        cmd = worker_command(address, f"{host}-gpu{g}", extra)
        procs.append(subprocess.Popen(cmd, env={**base, "CUDA_VISIBLE_DEVICES": cuda}))
        log.info("worker for GPU %d (CUDA_VISIBLE_DEVICES=%s) started, pid %d", g, cuda, procs[-1].pid)
    return procs


def supervise(procs: Sequence[subprocess.Popen[bytes]]) -> int:
    """Wait until one worker exits (or SIGTERM/Ctrl-C arrives), stop the others; the first exit status."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        pid, status = os.wait()  # the first worker to end
    except KeyboardInterrupt:  # the workers got the terminal's Ctrl-C too
        pid, status = 0, 130 << 8
    finally:
        stop(signal.SIGTERM, None)
        for p in procs:
            p.wait()
        signal.signal(signal.SIGTERM, previous)
    log.info("worker pid %d ended; stopped the others", pid)
    return os.waitstatus_to_exitcode(status)


def build_parser() -> ArgumentParser:
    """Arguments of the launcher (unknown ones go to ``dask worker``)."""
    p = ArgumentParser(
        prog="python -m rs_deeplab.inference.dask_jobs.gpu_workers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scheduler", help="the Dask scheduler's address, e.g. tcp://host:8786")
    p.add_argument("--gpus", help="GPU indices, e.g. 0,1 (default: every GPU torch sees here)")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Start the workers and wait for them."""
    args, extra = build_parser().parse_known_args(argv)
    setup_logging()
    if args.gpus is not None:
        gpus = parse_gpus(args.gpus)
    else:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError("no GPU is visible to torch here; pass --gpus, or start CPU workers with `dask worker`")
        gpus = list(range(count))
    return supervise(start_gpu_workers(args.scheduler, gpus, extra))


if __name__ == "__main__":
    sys.exit(main())
