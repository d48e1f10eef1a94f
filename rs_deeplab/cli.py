"""Shared command-line plumbing: one-line errors with exit code 2, logging and progress bars."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar, cast

from rs_deeplab.allocator import tune_malloc
from rs_deeplab.errors import RsDeeplabError

EXIT_USAGE = 2
T = TypeVar("T")
log = logging.getLogger("rs_deeplab")


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet`` (no progress bars, warnings only) and ``--verbose`` to a pipeline's parser."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars; warnings and errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def setup_logging(*, quiet: bool = False, verbose: bool = False, rank: int = 0) -> None:
    """Log to stderr as ``message`` lines; ranks other than 0 only log warnings."""
    level = logging.DEBUG if verbose else logging.WARNING if (quiet or rank != 0) else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    root = logging.getLogger("rs_deeplab")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


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


MainFunc = TypeVar("MainFunc", bound=Callable[..., int])


def cli_entry(func: MainFunc) -> MainFunc:
    """Decorate a pipeline ``main(argv)``: user errors become ``error: <message>`` on stderr and return 2.

    It also keeps torch's large CPU buffers on the heap (:func:`rs_deeplab.allocator.tune_malloc`).
    """

    @functools.wraps(func)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        tune_malloc()
        try:
            return func(argv)
        except RsDeeplabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("interrupted; re-run the same command to resume", file=sys.stderr)
            return 130

    return cast(MainFunc, wrapper)


def describe_outputs(outputs: dict[str, Any]) -> str:
    """Format ``{label: path}`` as aligned ``label: path`` lines for the end of a pipeline run."""
    width = max((len(k) for k in outputs), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in outputs.items())
