"""Pytest plugin: names the test that was running when the pytest process died (a crash dump lacks it).

``make unit`` loads it with ``-p tests.crashlog`` and, if pytest fails, prints the node id it left in
``.pytest-running`` with the process's peak memory and the free disk when that test started, so the last lines
of a CI log say where it died.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from pathlib import Path

import pytest

MARK = Path(os.environ.get("RS_DEEPLAB_RUNNING_FILE", ".pytest-running"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    MARK.write_text(f"{nodeid} (pytest peak RSS {peak:.1f} GiB, {free:.1f} GiB free in the temp folder)\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    MARK.unlink(missing_ok=True)
