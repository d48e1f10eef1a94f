"""The declared dependency sets agree, the layout exists, and the README's quick start matches CI."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
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
    for needed in [
        "pytorch",
        "torchvision",
        "segmentation-models-pytorch",
        "rasterio",
        "geopandas",
        "shapely",
        "pyogrio",
        "albumentations",
        "pydensecrf2",
        "dask",
        "distributed",
        "pytest",
        "hypothesis",
        "ruff",
        "mypy",
    ]:
        assert needed in names


@pytest.mark.parametrize(
    "path",
    [
        "rs_deeplab",
        "pipelines",
        "configs",
        "tests",
        "bench",
        "pyproject.toml",
        "environment.yml",
        "Makefile",
        "README.md",
        ".ci/run",
    ],
)
def test_layout(path: str) -> None:
    assert (REPO / path).exists()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(make \w+)\s*$", quick, flags=re.M)
    assert commands == ["make demo", "make test"]
    ci = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()]
    run_lines = [ln for ln in ci if ln and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
    assert run_lines[-1] == "make test"
    setup = run_lines[:-1]  # only the browser of tests/report is installed before it, and required
    assert any("apt-get install -y -qq chromium" in ln for ln in setup), setup
    assert "export RS_DEEPLAB_REQUIRE_BROWSER=1" in setup
    assert all("chromium" in ln or "SUDO" in ln or "RS_DEEPLAB_REQUIRE_BROWSER" in ln for ln in setup), setup


def test_library_never_imports_pipelines() -> None:
    for path in (REPO / "rs_deeplab").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+pipelines", path.read_text(), flags=re.M), path


SCRIPTS = sorted(p.stem for p in (REPO / "pipelines").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_main_and_runs_as_a_script(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each script's ``main(argv)`` answers --help in-process, and ``python pipelines/<name>.py --help`` runs it."""
    module = importlib.import_module(f"pipelines.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    in_process = capsys.readouterr().out
    assert in_process.startswith("usage:") and f"{name}.py" in in_process.splitlines()[0], in_process
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = REPO / "pipelines" / f"{name}.py"
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == in_process
