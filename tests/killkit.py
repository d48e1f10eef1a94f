"""Kill a training run once it has written a checkpoint (evidence the work started), never after a fixed sleep."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kill_after_checkpoint(config: Path, last: Path, env: dict[str, str], timeout: float = 300) -> None:
    """Start ``pipelines/train.py config``, SIGKILL it as soon as ``last`` exists (or it ends), and reap it."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "pipelines" / "train.py"), str(config), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
