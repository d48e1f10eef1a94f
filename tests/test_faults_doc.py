"""docs/faults.md against the code: every test it names exists, every case it names is in that test's table, and
every setting it names is read by the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rs_deeplab.remote.http import HTTP_RETRIES, HTTP_RETRY_DELAY_S, HTTP_TIMEOUT_S
from rs_deeplab.runtime.cluster_watch import WORKERS_GONE_SECONDS
from tests.sources import parse

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "faults.md"


def test_the_faults_page_names_real_tests_cases_and_settings() -> None:
    text = DOC.read_text()
    refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(refs) >= 30, refs
    for path, name in refs:
        tree = parse(ROOT / path)
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{path}::{name} named in docs/faults.md does not exist"
    cases = re.findall(r"case `([\w-]+)` in `(tests/[\w/]+\.py)::", text)
    assert len(cases) >= 4
    for case, path in cases:
        assert f'"{case}"' in (ROOT / path).read_text(), f"case {case} is not in {path}"
    source = "".join(p.read_text() for p in (ROOT / "rs_deeplab").rglob("*.py"))
    settings = set(re.findall(r"RS_DEEPLAB_[A-Z_]+[A-Z]", text))
    assert {"RS_DEEPLAB_HTTP_TIMEOUT", "RS_DEEPLAB_WORKERS_GONE_SECONDS"} <= settings
    for name in settings:
        assert f'"{name}"' in source, f"{name} named in docs/faults.md is read nowhere"
    defaults = {
        "RS_DEEPLAB_HTTP_RETRIES": HTTP_RETRIES,
        "RS_DEEPLAB_HTTP_RETRY_DELAY": HTTP_RETRY_DELAY_S,
        "RS_DEEPLAB_HTTP_TIMEOUT": HTTP_TIMEOUT_S,
    }
    for name, value in defaults.items():
        assert re.search(rf"\| `{name}` \| {value:g} \|", text), f"docs/faults.md: the default of {name} is {value:g}"
    assert f"`RS_DEEPLAB_WORKERS_GONE_SECONDS` ({WORKERS_GONE_SECONDS:g} s)" in text
    assert "docs/faults.md" in (ROOT / "README.md").read_text()
