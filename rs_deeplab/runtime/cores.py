"""How many cores a process can keep busy (its CPU affinity, capped by its cgroup's CPU quota) and how its worker
processes start.

Torch-free, so the GIS stages (tiling, vectorizing) size their worker pools with it as inference sizes its
threads: in a container given 2 CPUs on a 64-core host, every stage starts 2 workers, not 64.
"""  # noqa: D205

from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cores() -> int:
    """Cores this process may be scheduled on (``os.sched_getaffinity``; the CPU count where that is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_cpu_quota(quota: str, period: str | None = None) -> float | None:
    """CPUs a cgroup quota allows: cgroup v2 ``cpu.max`` (``"150000 100000"``, ``"max 100000"``), or v1's
    ``cpu.cfs_quota_us`` with ``period`` from ``cpu.cfs_period_us`` (quota ``-1``); None: no limit or unreadable.
    """  # noqa: D205
    parts = quota.split()
    if period is not None:
        parts = parts[:1] + period.split()[:1]
    if len(parts) < 2 or parts[0] in ("max", "-1"):
        return None
    try:
        cpus = float(parts[0]) / float(parts[1])
    except (ValueError, ZeroDivisionError):
        return None
    return cpus if math.isfinite(cpus) and cpus > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs this process's cgroup (and every cgroup above it) allows; None: no quota found.

    Reads cgroup v2 ``cpu.max`` or v1 ``cpu/cpu.cfs_quota_us`` + ``cpu.cfs_period_us`` from the process's own
    cgroup (``/proc/self/cgroup``) up to ``root``; the smallest quota on that path is the one that binds.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    own = {"v2": "/", "v1": "/"}
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":
            own["v2"] = path or "/"
        elif "cpu" in controllers.split(","):
            own["v1"] = path or "/"
    limits = []
    for base, kind in ((root, "v2"), (root / "cpu", "v1"), (root / "cpu,cpuacct", "v1")):
        folder = base / own[kind].strip("/")
        for level in (folder, *folder.parents):
            if not level.is_relative_to(base):
                break
            limits.append(_read_quota(level, kind))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _read_quota(folder: Path, kind: str) -> float | None:
    try:
        if kind == "v2":
            return parse_cpu_quota((folder / "cpu.max").read_text())
        return parse_cpu_quota((folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text())
    except OSError:
        return None


def usable_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Cores this process can keep busy: its CPU affinity, capped by its cgroup's CPU quota (rounded up)."""
    cores = affinity_cores()
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return cores


def start_method() -> str:
    """How worker processes start: ``fork`` on Linux while this process runs a single thread, else ``spawn``.

    A fork is immediate and shares the loaded libraries. Forked beside other threads (inference's readers and
    writers, a Dask client), a worker could inherit a lock one of them held (GDAL's, the allocator's) and hang:
    then a fresh interpreter starts instead (a second or more of imports per worker, once per pool).
    """
    return "fork" if sys.platform.startswith("linux") and threading.active_count() == 1 else "spawn"
