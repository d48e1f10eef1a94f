"""Parse the project's own source for tests that check its structure.

``ast.parse`` on CPython 3.11 keeps its depth count in one per-interpreter place. If the cyclic garbage collector runs
during a parse and a finalizer parses too (an asyncio Task left behind by an earlier test logs "Task exception was
never retrieved", and 3.11's traceback formatting calls ``ast.parse`` for its carets), the outer parse fails with
``SystemError: AST constructor recursion depth mismatch``. CI hit exactly that. The collector is off for the
parse, so no finalizer can run inside it.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse(source: str | Path, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse`` of a file or a text, with no garbage collection (and so no finalizer) in the middle of it."""
    if isinstance(source, Path):
        filename, source = str(source), source.read_text(encoding="utf-8")
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename)
    finally:
        if enabled:
            gc.enable()
