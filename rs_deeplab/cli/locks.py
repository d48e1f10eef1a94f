"""One run per output: an advisory lock on a file beside the output, held while a run writes it.

The lock is ``fcntl.flock`` on ``.<name>.lock`` next to the output, held through an open file descriptor for as long
as the run writes: the kernel releases it when the process ends, however it ends (SIGKILL included), so a killed
run never leaves a stale lock behind. The file holds the holder's pid, host and start time, for the message a
second run gets; it is removed when the run is done (the lock is the flock, not the file's existence). Forked
children (Dask workers, DataLoader workers) close their copy of the descriptor, so the lock goes with the process
that took it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rs_deeplab.cli.errors import InputError

log = logging.getLogger("rs_deeplab.cli.locks")

_HELD: set[int] = set()
"""Descriptors of the locks this process holds (closed in forked children)."""
_HELD_LOCK = threading.Lock()
_FORK_HOOK: list[bool] = []
"""Whether :func:`_close_in_child` is registered (once, when the first lock is taken)."""


class OutputBusyError(InputError):
    """Another run (alive, holding the lock) is writing the same output."""


def lock_path(output: Path) -> Path:
    """The lock file of ``output`` (a file or a folder): ``.<name>.lock`` in the same folder."""
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(
    output: str | os.PathLike[str], *, shown: str | os.PathLike[str] | None = None, option: str = "--out"
) -> Iterator[Path]:
    """Hold the lock of ``output`` for the block; yields the lock file.

    Args:
        output: The file or folder a run writes (its folder is created if missing, as the run would).
        shown: The path named in the error (the user's ``--out``); ``output`` by default.
        option: The option the user changes to write elsewhere.

    Raises:
        OutputBusyError: Another process holds the lock: one line naming its pid, host and start time.
    """
    path = lock_path(Path(output))
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    with contextlib.suppress(OSError):  # a file where a folder goes: the run's own checks say so, in their words
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path, Path(shown if shown is not None else output), option)
        try:
            yield path
        finally:
            _release(path, fd)
    finally:
        for folder in created:  # folders made for the lock file only: gone again unless the run wrote into them
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(path: Path, shown: Path, option: str) -> int:
    """The locked descriptor of ``path``; -1 where no lock file can be made (no such folder, no permission: the
    run's own checks refuse that output in their words).
    """  # noqa: D205
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children (Python's default)
        except OSError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if holder is None:  # no locking on this file system (some network mounts): go on unguarded
                log.warning("%s: cannot be locked (%s); make sure no other run writes it", shown, exc.strerror)
                return -1
            raise OutputBusyError(
                f"{shown} is being written by another run ({holder}); wait for it or choose another {option}"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its last holder had just removed: lock the one now there
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    with _HELD_LOCK:
        if not _HELD and not _FORK_HOOK:
            os.register_at_fork(after_in_child=_close_in_child)
            _FORK_HOOK.append(True)
        _HELD.add(fd)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _holder(fd: int) -> str:
    """Who holds the lock, as ``pid N on host H, started T``, read from the file (given a moment to be written)."""
    for _ in range(50):
        try:
            record = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            record = None
        if isinstance(record, dict):
            return f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
        time.sleep(0.01)
    return "its pid is not recorded yet"


def _release(path: Path, fd: int) -> None:
    if fd < 0:
        return
    with _HELD_LOCK:
        _HELD.discard(fd)
    with contextlib.suppress(FileNotFoundError):
        if _same_file(fd, path):
            path.unlink()  # still locked: a run that opened this file meanwhile sees it gone and takes a new one
    os.close(fd)


def _close_in_child() -> None:
    """A forked child (a Dask or DataLoader worker) does not keep its parent's locks alive."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()
