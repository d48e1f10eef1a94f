"""Shared by the bad-input tables: run a script's cases a few at a time, each in a process of its own, and check the
one-line error.

A table's cases go to a case server (:mod:`tests.case_server`) per script: it pays the script's imports once and
forks a fresh process for each case, so exit codes, stderr, crashes and ``os._exit`` stay real and nothing leaks from
one case to the next. ``RS_DEEPLAB_CASE_SUBPROCESS=1`` runs every case as a plain ``python script ...`` subprocess
instead (the old way, seconds of imports each); ``test_case_server`` keeps the two ways giving the same result.
"""

from __future__ import annotations

import json
import locale
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.trainkit import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RS_DEEPLAB_NO_PROGRESS": "1"}
"""A user's environment for the scripts: the checkout importable, one thread each, no progress bars."""

PLAIN = "RS_DEEPLAB_CASE_SUBPROCESS"
"""Set to 1: the tables run each case as a plain subprocess, without a case server."""
TIMEOUT = 300
"""Seconds a case may run."""

Args = Callable[[dict[str, Path], Path], list[str]]
"""A case's arguments from the module's inputs (``world``) and the case's own (empty) folder."""
Run = tuple[subprocess.CompletedProcess[str], list[str], Path]
"""A case's finished process, what its folder held before it ran, and the folder."""


def listing(folder: Path) -> list[str]:
    """Everything under ``folder`` (relative paths, sorted): a case must leave it as it found it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def decoded(data: bytes) -> str:
    """``data`` as ``subprocess.run(..., text=True)`` decodes a stream."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


class CaseServer:
    """A running ``python -m tests.case_server SCRIPT``: :meth:`run` is ``subprocess.run([python, SCRIPT, *args],
    cwd=.., env=ENV, capture_output=True, text=True)`` in a forked child. Thread-safe: calls in flight at once run at
    once."""

    def __init__(self, script: str) -> None:
        self.script = script
        self._spool = tempfile.TemporaryDirectory(prefix="case_server_")
        self._log = open(Path(self._spool.name) / "server.log", "w+b")  # noqa: SIM115 - closed by close()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.case_server", script, self._spool.name],
            cwd=REPO,
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, Future[dict[str, Any]]] = {}
        self._reader = threading.Thread(target=self._read, name=f"case-server {Path(script).name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self._lock:
                future = self._waiting.pop(message["id"])
            future.set_result(message)
        self._proc.wait()
        with self._lock:  # the server ended: every case still waiting fails with its log
            waiting, self._waiting = list(self._waiting.values()), {}
        for future in waiting:
            future.set_exception(RuntimeError(f"the case server of {self.script} ended: {self.log()}"))

    def log(self) -> str:
        """What the server wrote on its stderr (imports' warnings, or why it stopped)."""
        self._log.flush()
        return (Path(self._spool.name) / "server.log").read_text(errors="replace")

    def run(self, folder: Path, args: Sequence[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """The script run with ``args`` in ``folder``, in a process of its own."""
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the case server of {self.script} ended: {self.log()}")
            self._next += 1
            key = self._next
            self._waiting[key] = future
            request = {"id": key, "cwd": str(folder), "argv": list(args), "timeout": timeout}
            assert self._proc.stdin is not None
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        reply = future.result()
        command = [sys.executable, self.script, *args]
        out, err = (Path(reply[k]) for k in ("stdout", "stderr"))
        stdout, stderr = decoded(out.read_bytes()), decoded(err.read_bytes())
        out.unlink()
        err.unlink()
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
        return subprocess.CompletedProcess(command, reply["returncode"], stdout, stderr)

    def close(self) -> None:
        """End the server (after its cases) and remove its files."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._reader.join(timeout=10)
            self._log.close()
            self._spool.cleanup()


class CaseServers:
    """One :class:`CaseServer` per script, started at a script's first case."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, CaseServer] = {}

    def get(self, script: str) -> CaseServer:
        with self._lock:
            if script not in self._servers:
                self._servers[script] = CaseServer(script)
            return self._servers[script]

    def close(self) -> None:
        for server in self._servers.values():
            server.close()


_SERVERS: CaseServers | None = None
"""The servers of the table now running (:func:`run_table` with ``server=True``)."""


@contextmanager
def case_servers() -> Iterator[CaseServers]:
    """:func:`run_in` sends a script's cases to a case server while this is open."""
    global _SERVERS
    assert _SERVERS is None, "one table at a time"
    _SERVERS = CaseServers()
    try:
        yield _SERVERS
    finally:
        servers, _SERVERS = _SERVERS, None
        servers.close()


def script_of(command: Sequence[str]) -> str | None:
    """The script ``command`` runs (``python path/script.py ...``), else None."""
    if len(command) >= 2 and command[0] == sys.executable and command[1].endswith(".py"):
        return command[1]
    return None


def run_in(folder: Path, command: Sequence[str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``command`` in ``folder`` (by a case server when a table opened them and it runs a script); the process
    and what the folder held before."""
    before = listing(folder)
    script = script_of(command)
    if _SERVERS is not None and script is not None:
        return _SERVERS.get(script).run(folder, command[2:]), before
    proc = subprocess.run(list(command), cwd=folder, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    return proc, before


def plain() -> bool:
    """Whether cases run as plain subprocesses (``RS_DEEPLAB_CASE_SUBPROCESS=1``), without case servers."""
    return os.environ.get(PLAIN) == "1"


@contextmanager
def serving(script: str) -> Iterator[CaseServer | None]:
    """A case server for ``script`` for the ``with`` block (None when :func:`plain`), for :func:`run_command`."""
    if plain():
        yield None
        return
    server = CaseServer(script)
    try:
        yield server
    finally:
        server.close()


def run_command(server: CaseServer | None, command: Sequence[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, cwd=folder, env=ENV, capture_output=True, text=True)``, by ``server`` (a case
    server of ``command``'s script) unless it is None."""
    if server is None:
        return subprocess.run(list(command), cwd=folder, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert script_of(command) == server.script, (command, server.script)
    return server.run(folder, command[2:])


def run_table(
    cases: Sequence[tuple[str, Any, str]],
    run_case: Callable[[Path, Any], tuple[subprocess.CompletedProcess[str], list[str]]],
    base: Path,
    workers: int,
    server: bool = False,
) -> dict[str, Run]:
    """Every case ``(name, make_args, words)`` run by ``run_case(folder, make_args)`` in a new folder
    ``base/name``, ``workers`` at a time; with ``server`` (unless ``RS_DEEPLAB_CASE_SUBPROCESS=1``), each script's
    cases are forks of one case server that paid the imports once, else each a subprocess paying them."""
    assert len({name for name, _, _ in cases}) == len(cases), "case names must be distinct"
    base.mkdir()

    def one(folder: Path, make: Any) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        folder.mkdir()  # before the case's arguments are made: some put files in it
        return run_case(folder, make)

    def table() -> dict[str, Run]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {name: pool.submit(one, base / name, make) for name, make, _ in cases}
        return {name: (*future.result(), base / name) for name, future in futures.items()}

    if not server or plain():
        return table()
    with case_servers():
        return table()


def check_one_line(proc: subprocess.CompletedProcess[str], code: int = 2, start: str = "error: ") -> str:
    """Exit ``code``, exactly one non-empty stderr line starting with ``start``, no traceback; that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr
    return lines[0]
