"""Shared command-line plumbing: one-line errors with exit code 2, Ctrl-C as exit 130, logging and progress bars."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar, cast

from rs_deeplab.cli.errors import RsDeeplabError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted; re-run the same command to resume"
T = TypeVar("T")
log = logging.getLogger("rs_deeplab")


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet``, ``--verbose`` and ``--debug`` (full tracebacks) to a pipeline's parser."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars; warnings and errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")


def setup_logging(*, quiet: bool = False, verbose: bool = False, rank: int = 0) -> None:
    """Log to stderr as ``message`` lines; ranks other than 0 only log warnings."""
    level = logging.DEBUG if verbose else logging.WARNING if (quiet or rank != 0) else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    root = logging.getLogger("rs_deeplab")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _Held(logging.Handler):
    """Keeps the records it is given (see :func:`held_logs`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_logs(name: str = "rs_deeplab") -> Iterator[Callable[[], None]]:
    """Hold the log lines of a run's checks until they have all passed.

    Inside the block, records of logger ``name`` (and its children) are kept instead of printed. The block gets a
    ``release`` callable: calling it (once every check passed) prints the records kept so far, in order, through
    the logger's own handlers, and lets later ones print as they come. When the block ends normally (or with a
    bug) before ``release`` was called, the records are printed then; when it ends with a user error
    (:class:`~rs_deeplab.cli.errors.RsDeeplabError`) or Ctrl-C they are dropped, so that error's one line is all the
    user sees. A logger without handlers (the library called from a program that set up no logging for it) is
    left alone.
    """
    logger = logging.getLogger(name)
    handlers = logger.handlers[:]
    held = _Held()
    released = not handlers

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        logger.handlers[:] = handlers
        for record in held.records:
            for handler in handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
        held.records.clear()

    if not released:
        logger.handlers[:] = [held]
    try:
        yield release
    except BaseException as exc:
        if interrupted(exc) or isinstance(exc, RsDeeplabError):
            held.records.clear()  # the error's one line is all the user sees
        release()
        raise
    release()


def progress_enabled(quiet: bool = False) -> bool:
    """Progress bars show only on an interactive terminal and when not ``--quiet``."""
    return not quiet and sys.stderr.isatty() and os.environ.get("RS_DEEPLAB_NO_PROGRESS") is None


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it"
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when :func:`progress_enabled`; otherwise yield it unchanged."""
    if not progress_enabled(quiet):
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class JobProgress:
    """One progress bar for a job of several parts (scenes): units done, their rate and ETA, parts done.

    Does nothing where :func:`progress_enabled` is false. ``total`` may shrink while the job runs (work found
    done by an earlier run is taken out, so the rate and ETA count only what this run computes).
    """

    def __init__(self, total: int, *, desc: str, unit: str, parts: int, part_name: str, quiet: bool = False) -> None:
        self.parts, self.part_name, self.parts_done = parts, part_name, 0
        self._bar: Any = None
        if progress_enabled(quiet):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
            self._note()

    def update(self, n: int) -> None:
        """``n`` more units done."""
        if self._bar is not None and n:
            self._bar.update(n)

    def drop(self, n: int) -> None:
        """``n`` units of the total need no computing (done by an earlier run)."""
        if self._bar is not None and n:
            self._bar.total = max(self._bar.n, self._bar.total - n)
            self._bar.refresh()

    def part_done(self) -> None:
        """One more part finished."""
        self.parts_done += 1
        self._note()

    def _note(self) -> None:
        if self._bar is not None and self.parts > 1:
            self._bar.set_postfix_str(f"{self.parts_done}/{self.parts} {self.part_name}")

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def one_line(message: object) -> str:
    """``message`` as one line: lines joined with ``; ``, runs of blanks collapsed.

    An error re-raised from a DataLoader worker carries the worker's traceback in its message; only the
    original message (the traceback's last line, without the exception's type) is kept.
    """
    text = str(message)
    if "Original Traceback (most recent call last):" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    parts = [" ".join(line.split()) for line in text.splitlines()]
    return "; ".join(p.rstrip(";") for p in parts if p) or "unknown error"


# OS errors on a path the user named: what went wrong and what to do about it
_OS_ADVICE: dict[type[OSError], str] = {
    PermissionError: "permission denied; choose a location you can write to (or read)",
    IsADirectoryError: "is a folder where a file is expected; name a file",
    NotADirectoryError: "a part of this path is a file where a folder is expected; fix the path",
    FileExistsError: "already exists; remove it or choose another name",
}


def user_error_message(exc: BaseException) -> str | None:
    """The one line for a user mistake (the error tree, an OS error naming its path, a full disk); None: a bug."""
    from rs_deeplab.cli.diskspace import os_space_error  # only an error needs it

    if isinstance(exc, RsDeeplabError):
        return one_line(exc)
    for kind, advice in _OS_ADVICE.items():
        if type(exc) is kind and isinstance(exc, OSError) and exc.filename is not None:
            return one_line(f"{exc.filename}: {advice}")
    full = os_space_error(exc)  # no space left, file too large, quota: also under a library's RuntimeError
    if full is not None:
        return one_line(full)
    if isinstance(exc, pickle.UnpicklingError):
        return one_line(f"not a readable file ({exc}); it may be truncated or of another kind")
    return None


def interrupted(exc: BaseException) -> bool:
    """True for a KeyboardInterrupt, also one masked by a library (found in ``__cause__``/``__context__``)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        stack += [current.__cause__, current.__context__]
    return False


MainFunc = TypeVar("MainFunc", bound=Callable[..., int])


def cli_entry(func: MainFunc) -> MainFunc:
    """Decorate a pipeline ``main(argv)``: the error boundary of every script.

    User errors (:class:`rs_deeplab.cli.errors.RsDeeplabError`, and OS errors that name their path) become one
    ``error: <message>`` line on stderr and return 2; Ctrl-C (also when a library wraps it in another exception)
    becomes one line and returns 130; any other exception is a bug and keeps its traceback. With ``--debug`` in
    the arguments every error shows its full traceback. It changes no process-wide setting: a script tunes its
    process itself, in its ``__main__`` block (:func:`rs_deeplab.runtime.tuning.tune_process`), so calling ``main`` from
    another program (or a test) leaves that program's malloc, threads, warnings and loggers as they were.

    A script's ``main`` parses its arguments first and imports the library after, inside this boundary: ``--help``
    and a bad flag answer before torch and GDAL load, and a Ctrl-C while they load is one line too.
    """

    @functools.wraps(func)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
        try:
            return func(argv)
        except BaseException as exc:
            if isinstance(exc, SystemExit | GeneratorExit):
                raise
            stop = interrupted(exc)
            message = None if stop else user_error_message(exc)
            if not stop and message is None:
                raise  # a bug: its traceback must stay visible
            if debug:
                traceback.print_exc(file=sys.stderr)
            print(INTERRUPTED if stop else f"error: {message}", file=sys.stderr)
            return EXIT_INTERRUPTED if stop else EXIT_USAGE

    return cast(MainFunc, wrapper)


def describe_outputs(outputs: dict[str, Any]) -> str:
    """Format ``{label: path}`` as aligned ``label: path`` lines for the end of a pipeline run."""
    width = max((len(k) for k in outputs), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in outputs.items())
