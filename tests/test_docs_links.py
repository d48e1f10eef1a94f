"""The README and docs/ stay true: relative links and anchors resolve, the layout names what exists, pictures are shown.

The README is the front door (what it is, the two commands, the pipeline, where to go next); each stage's manual is
a page under docs/. These checks keep the pages joined up as files move.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted([README, *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
SCREENSHOTS = ["demo_prediction.png", "demo_training_page.png", "demo_prediction_page.png", "demo_evaluation_page.png"]
STAGE_PAGES = ["tile", "train", "infer", "vectorize", "export", "evaluate"]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def anchors(page: Path) -> set[str]:
    """GitHub's ids of the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            title = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            out.add(title.replace(" ", "-"))
    return out


def test_link_pattern_reads_links_not_code() -> None:
    text = 'see [a](docs/a.md) and ![b](b.png "t") but not `[c](c.md)`\n```\n[d](d.md)\n```\n'
    assert LINK.findall(prose(text)) == ["docs/a.md", "b.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_an_existing_file_and_heading(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


def test_readme_is_a_front_door_that_links_every_stage_manual() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "the README grew back into a manual: move the detail to a docs/ page"
    targets = set(links(README))
    for stage in STAGE_PAGES:
        assert f"docs/{stage}.md" in targets, stage
        assert (ROOT / "docs" / f"{stage}.md").read_text(encoding="utf-8").startswith("# ")
    for page in [
        "recipes",
        "configuration",
        "models",
        "datasets",
        "development",
        "usage",
        "own_data",
        "region",
        "faults",
        "architecture",
    ]:
        assert f"docs/{page}.md" in targets, page
    assert "docs/demo_prediction.png" in targets  # the README shows a picture


def test_every_screenshot_is_shown_somewhere() -> None:
    shown = {Path(t).name for page in PAGES for t in links(page)}
    for name in SCREENSHOTS:
        assert (ROOT / "docs" / name).is_file(), name
        assert name in shown, f"docs/{name} is shown on no page"


def layout_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Project layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```text", 1)[1].split("```", 1)[0].strip("\n").splitlines()


def test_project_layout_matches_the_tree() -> None:
    lines = layout_block()
    named: dict[str, str] = {}  # path → its description
    parent = ""
    for line in lines:
        word, indent = line.split()[0], len(line) - len(line.lstrip())
        if indent > 2 or not word.endswith("/"):
            continue  # a description's second line, or the shared ``*.py``
        path = parent + word if indent else word
        parent = parent if indent else word
        named[path.rstrip("/")] = line
    for path in named:
        assert (ROOT / path).exists(), f"the README's layout names {path}, which does not exist"
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "rs_deeplab").glob("*/__init__.py")}
    assert packages <= set(named), f"packages missing from the README's layout: {sorted(packages - set(named))}"
    scripts = sorted(p.name for p in (ROOT / "pipelines").glob("*.py") if p.name != "__init__.py")
    assert sorted(named["pipelines"].split()[1:]) == scripts
    tracked_dirs = {"rs_deeplab", "pipelines", "configs", "docs", "tests", "bench"}
    assert tracked_dirs <= set(named)
    assert not (ROOT / "rs_deeplab" / "training" / "recipes.py").exists()  # recipe data lives under docs/
