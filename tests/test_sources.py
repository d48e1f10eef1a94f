"""tests/sources.parse holds when a finalizer parses in the middle of a parse (what failed CI on CPython 3.11)."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

from tests.sources import parse

PACKAGE = Path(__file__).resolve().parents[1] / "rs_deeplab"


class _ParsesWhenCollected:
    """A cycle whose finalizer parses, as an abandoned asyncio Task's log line does through 3.11's tracebacks."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        ast.parse("x = (1 +\n 2)")


def test_parse_survives_finalizers_that_parse() -> None:
    files = sorted(PACKAGE.rglob("*.py"))[:40]
    for path in files:
        for _ in range(50):
            _ParsesWhenCollected()
        tree = parse(path)
        assert isinstance(tree, ast.Module) and tree.body, path
    gc.collect()
    assert gc.isenabled()


def test_parse_of_text_names_the_file_in_a_syntax_error() -> None:
    with pytest.raises(SyntaxError) as caught:
        parse("def broken(:\n", "broken.py")
    assert caught.value.filename == "broken.py"
    assert gc.isenabled()
