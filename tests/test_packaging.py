"""The declared dependency sets agree, the layout exists, and the README's quick start matches CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# PyPI name -> conda-forge name(s) where they differ
CONDA_NAMES = {
    "torch": ["pytorch"],
    "opencv-python-headless": ["py-opencv"],
    "dask[distributed]": ["dask", "distributed"],
    "types-pyyaml": ["types-pyyaml"],
}


def _split(req: str) -> tuple[str, str]:
    req = req.split(";")[0].split("#")[0].strip()
    match = re.match(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*(.*)$", req)
    assert match, req
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    out: dict[str, str] = {}
    for req in reqs:
        name, spec = _split(req)
        for conda_name in CONDA_NAMES.get(name, [name]):
            out[conda_name] = spec
    return out


def environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    out: dict[str, str] = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e") or item in ("pip",) or item.startswith("python"):
                continue
            name, spec = _split(item)
            out[name] = spec
    return out


def test_environment_yml_matches_pyproject() -> None:
    declared, conda = pyproject_requirements(), environment_requirements()
    assert sorted(set(declared) - set(conda)) == [], "in pyproject.toml but not environment.yml"
    assert sorted(set(conda) - set(declared)) == [], "in environment.yml but not pyproject.toml"
    assert {k: conda[k] for k in declared} == declared, "version bounds differ"


def test_every_dependency_pin_has_a_reason() -> None:
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]\n", 1)[0]
    dev = text.split("dev = [", 1)[1].split("]\n", 1)[0]
    lines = [ln.strip() for ln in (block + "\n" + dev).splitlines()]
    for before, line in zip(["", *lines], lines, strict=False):
        if line.startswith('"') and re.search(r"[<>=!]", line):
            assert "#" in line or before.startswith("#"), f"pin without a reason: {line}"


def test_required_packages_declared() -> None:
    names = set(pyproject_requirements())
    for needed in ["pytorch", "torchvision", "segmentation-models-pytorch", "rasterio", "geopandas", "shapely",
                   "pyogrio", "albumentations", "pydensecrf2", "dask", "distributed", "pytest", "hypothesis", "ruff",
                   "mypy"]:  # fmt: skip
        assert needed in names


@pytest.mark.parametrize(
    "path",
    ["rs_deeplab", "pipelines", "configs", "tests", "bench", "pyproject.toml", "environment.yml", "Makefile",
     "README.md", ".ci/run"],
)  # fmt: skip
def test_layout(path: str) -> None:
    assert (REPO / path).exists()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(make \w+)\s*$", quick, flags=re.M)
    assert commands == ["make demo", "make test"]
    ci = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()]
    run_lines = [ln for ln in ci if ln and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
    assert run_lines == ["make test"]


def test_library_never_imports_pipelines() -> None:
    for path in (REPO / "rs_deeplab").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+pipelines", path.read_text(), flags=re.M), path


def test_pipelines_expose_main() -> None:
    scripts = sorted((REPO / "pipelines").glob("*.py"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert re.search(r"^def main\(argv: Sequence\[str\] \| None = None\) -> int:", text, flags=re.M), script
        assert 'if __name__ == "__main__":' in text, script
