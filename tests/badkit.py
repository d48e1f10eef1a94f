"""Shared by the bad-input tables: run a script's cases as subprocesses a few at a time, check the one-line error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.trainkit import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RS_DEEPLAB_NO_PROGRESS": "1"}
"""A user's environment for the scripts: the checkout importable, one thread each, no progress bars."""

Args = Callable[[dict[str, Path], Path], list[str]]
"""A case's arguments from the module's inputs (``world``) and the case's own (empty) folder."""
Run = tuple[subprocess.CompletedProcess[str], list[str], Path]
"""A case's finished process, what its folder held before it ran, and the folder."""


def listing(folder: Path) -> list[str]:
    """Everything under ``folder`` (relative paths, sorted): a case must leave it as it found it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_in(folder: Path, command: Sequence[str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``command`` in ``folder``; the process and what the folder held before."""
    before = listing(folder)
    proc = subprocess.run(list(command), cwd=folder, env=ENV, capture_output=True, text=True, timeout=300)
    return proc, before


def run_table(
    cases: Sequence[tuple[str, Any, str]],
    run_case: Callable[[Path, Any], tuple[subprocess.CompletedProcess[str], list[str]]],
    base: Path,
    workers: int,
) -> dict[str, Run]:
    """Every case ``(name, make_args, words)`` run by ``run_case(folder, make_args)`` in a new folder
    ``base/name``, ``workers`` at a time (each subprocess pays seconds of imports)."""
    assert len({name for name, _, _ in cases}) == len(cases), "case names must be distinct"
    base.mkdir()

    def one(folder: Path, make: Any) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        folder.mkdir()  # before the case's arguments are made: some put files in it
        return run_case(folder, make)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(one, base / name, make) for name, make, _ in cases}
    return {name: (*future.result(), base / name) for name, future in futures.items()}


def check_one_line(proc: subprocess.CompletedProcess[str], code: int = 2, start: str = "error: ") -> str:
    """Exit ``code``, exactly one non-empty stderr line starting with ``start``, no traceback; that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr
    return lines[0]
