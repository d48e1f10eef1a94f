"""The case server (:mod:`tests.case_server`) that runs the bad-input tables must answer as a real run does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.badkit import ENV, TIMEOUT, CaseServer, check_one_line, listing
from tests.trainkit import REPO

VECTORIZE = str(REPO / "pipelines" / "vectorize.py")


def test_a_case_server_run_is_a_real_run(tmp_path: Path) -> None:
    """A good ``--help`` and a bad input give the same exit code, stdout and stderr by the server and by
    ``python pipelines/vectorize.py``, and the server leaves nothing in the case's folder."""
    cases = [["--help"], [str(tmp_path / "nope.tif"), "--out", str(tmp_path / "out.gpkg")]]
    server = CaseServer(VECTORIZE)
    try:
        served = [server.run(tmp_path, args) for args in cases]
    finally:
        server.close()
    plain = [
        subprocess.run(
            [sys.executable, VECTORIZE, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=TIMEOUT
        )
        for args in cases
    ]
    for mine, real in zip(served, plain, strict=True):
        assert (mine.returncode, mine.stdout, mine.stderr) == (real.returncode, real.stdout, real.stderr)
        assert mine.args == real.args
    assert served[0].returncode == 0 and "usage: vectorize.py" in served[0].stdout
    assert "file not found" in check_one_line(served[1])
    assert listing(tmp_path) == []


SCRIPT = """
import os
import signal
import sys


def main() -> int:
    what = sys.argv[1]
    print("out", os.getcwd() == sys.argv[2], sys.argv[0].endswith("odd.py"))
    print("err", file=sys.stderr)
    if what == "raise":
        raise ValueError("uncaught")
    if what == "os-exit":
        sys.stdout.flush()
        os._exit(5)
    if what == "kill":
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "message":
        sys.exit("a message")
    return int(what)


if __name__ == "__main__":
    sys.exit(main())
"""


def test_exit_codes_crashes_and_signals_are_those_of_a_real_run(tmp_path: Path) -> None:
    """Exit statuses, an uncaught exception's traceback, ``os._exit``, a signal and ``sys.exit(text)`` are the same by
    the server and by ``python odd.py``."""
    script = tmp_path / "odd.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "case"
    folder.mkdir()
    cases = [[what, str(folder)] for what in ("0", "3", "raise", "os-exit", "kill", "message")]
    server = CaseServer(str(script))
    try:
        served = [server.run(folder, args) for args in cases]
    finally:
        server.close()
    plain = [
        subprocess.run(
            [sys.executable, str(script), *args], cwd=folder, env=ENV, capture_output=True, text=True, timeout=TIMEOUT
        )
        for args in cases
    ]
    for mine, real in zip(served, plain, strict=True):
        assert (mine.returncode, mine.stdout, mine.stderr) == (real.returncode, real.stdout, real.stderr)
    assert [p.returncode for p in served] == [0, 3, 1, 5, -9, 1]
    assert "Traceback" in served[2].stderr and served[0].stdout == "out True True\n"


def test_the_server_refuses_to_fork_beside_a_thread(tmp_path: Path) -> None:
    """A fork copies only the calling thread: a script whose import starts one is refused, loudly."""
    script = tmp_path / "threaded.py"
    script.write_text(
        "import threading\nimport time\n\nthreading.Thread(target=time.sleep, args=(60,), daemon=True)"
        ".start()\n\nif __name__ == '__main__':\n    pass\n"
    )
    server = CaseServer(str(script))
    try:
        with pytest.raises(RuntimeError, match="cannot fork with 2 threads running"):
            server.run(tmp_path, [])
    finally:
        server.close()
