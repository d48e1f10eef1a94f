"""Keep glibc's malloc from returning torch's large CPU buffers to the kernel after every use.

torch allocates CPU tensors with ``malloc``. glibc serves requests above its mmap threshold (at most 32 MiB
when it adjusts the threshold by itself) with a fresh ``mmap`` and gives them back with ``munmap`` when they are
freed. A convolution's activations at 512² windows are tens of MiB, so every forward pass maps new memory and
faults it in page by page: on this project's 2-core machines that made a small CNN 3-4× and DeepLab v3+ R18
1.4-1.5× slower (``bench/malloc_bench.py``). Raising the mmap threshold keeps those buffers on the heap, where
the next batch reuses them; a trim threshold still hands large free tails back to the system.

Linux with glibc only; elsewhere (or with ``RS_DEEPLAB_MALLOC_TUNING=0``) nothing changes.

These settings belong to the whole process, so library code never applies them by itself: a script's entry point
calls :func:`tune_process` (``pipelines/*.py`` do, under ``if __name__ == "__main__"``), and Dask workers get them
through the :class:`rs_deeplab.runtime.worker_tuning.TuneWorker` plugin the caller registers on its client.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 1 << 30
"""Requests below 1 GiB come from the heap (a whole-scene array above it still gets its own mapping)."""
TRIM_THRESHOLD = 256 << 20
"""Free memory at the top of the heap beyond 256 MiB goes back to the system."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h
ENV_SWITCH = "RS_DEEPLAB_MALLOC_TUNING"

_applied: bool | None = None


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds for this process once; return whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has set the thresholds in this process (it cannot be undone)."""
    return bool(_applied)


def tune_process(*, malloc: bool = True, threads: int | None = None) -> bool:
    """Process-wide tuning of a script or a worker process: for entry points only, never for library code.

    Args:
        malloc: Keep torch's large CPU buffers on the heap (:func:`tune_malloc`).
        threads: torch's intra-op threads (``torch.set_num_threads``); None leaves torch's choice. torch is only
            imported when this is given.

    Returns:
        Whether the malloc thresholds are in effect.
    """
    applied = tune_malloc() if malloc else malloc_tuned()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return applied
