"""The declared dependency sets agree, the layout exists, and the README's quick start matches CI."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from rs_deeplab.runtime import tuning
from tests.sources import parse

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


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*groups: str) -> set[str]:
    """Normalised distribution names of ``[project].dependencies`` (``"main"``) and the named optional groups."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(data["dependencies"]) if "main" in groups else []
    reqs += [r for g in groups if g != "main" for r in data["optional-dependencies"][g]]
    names = set()
    for req in reqs:
        name, _, extras = _split(req)[0].rstrip("]").partition("[")
        names.add(_normal(name))
        for extra in filter(None, extras.split(",")):  # dask[distributed] declares what its extra installs
            for dep in importlib.metadata.requires(name) or []:
                if re.search(rf"extra\s*==\s*[\"']{extra}[\"']", dep):
                    names.add(_normal(re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0]))
    return names


def third_party_imports(path: Path, source: str | None = None) -> set[str]:
    """Top-level names a file imports that are neither the standard library, the project, nor a file beside it."""
    tree = parse(path.read_text() if source is None else source, str(path))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level
    }
    own = {"rs_deeplab", "pipelines", "tests", "bench", "docs"}
    return {n for n in names - own if n not in sys.stdlib_module_names and not (path.parent / f"{n}.py").is_file()}


def undeclared(paths: list[Path], allowed: set[str], sources: dict[Path, str] | None = None) -> list[str]:
    """``file: name`` for each import that no declared distribution provides (as this environment installed it)."""
    providers = importlib.metadata.packages_distributions()
    out = []
    for path in paths:
        for name in sorted(third_party_imports(path, (sources or {}).get(path))):
            if not {_normal(d) for d in providers.get(name, [])} & allowed:
                out.append(f"{path.relative_to(REPO)}: {name}")
    return out


def test_every_imported_package_is_declared() -> None:
    """A fresh install has what the code imports: the library and scripts need only ``dependencies``; the tests,
    benches and doc generators ``dependencies`` and ``dev``. (Replaces a hand-kept list of required names.)"""
    library = [*(REPO / "rs_deeplab").rglob("*.py"), *(REPO / "pipelines").glob("*.py")]
    assert not undeclared(library, declared("main"))
    rest = [p for folder in ("tests", "bench", "docs") for p in (REPO / folder).rglob("*.py")]
    assert not undeclared(rest, declared("main", "dev"))
    # the check sees an import no declared package provides, and one that only the dev group provides
    probe = REPO / "rs_deeplab" / "probe.py"  # only parsed
    source = "import numpy\nfrom hypothesis import given\n\ndef f():\n    import not_a_package_anywhere\n"
    found = undeclared([probe], declared("main"), {probe: source})
    assert found == ["rs_deeplab/probe.py: hypothesis", "rs_deeplab/probe.py: not_a_package_anywhere"]


def run_ci_with_stubs(tmp_path: Path, make_test_exit: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``.ci/run`` as CI runs it, with ``make`` replaced by a recorder (exiting ``make_test_exit`` for ``test``) and a
    ``chromium`` on PATH: which targets it runs, in which order and environment, and what it prints."""
    calls = tmp_path / "calls.txt"
    stubs = tmp_path / "bin"
    stubs.mkdir(parents=True)
    (stubs / "make").write_text(
        f'#!/bin/sh\necho "$* browser=$RS_DEEPLAB_REQUIRE_BROWSER" >> {calls}\n'
        f'[ "$1" = test ] && exit {make_test_exit}\nexit 0\n'
    )
    (stubs / "chromium").write_text("#!/bin/sh\nexit 0\n")
    (stubs / "apt-get").write_text(f"#!/bin/sh\necho apt-get >> {calls}\nexit 1\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / ".ci/run")], env=env, capture_output=True, text=True, timeout=60)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_ci_runs_the_readme_test_command_and_says_how_long_it_took(tmp_path: Path) -> None:
    """The README's quick start is two make targets; ``.ci/run`` installs, then runs the second with the browser
    required, passes its exit status on and prints the suite's time either way."""
    quick = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\s*(make \w+)\s*$", quick, flags=re.M) == ["make demo", "make test"]
    done, calls = run_ci_with_stubs(tmp_path / "pass", 0)
    assert done.returncode == 0, done.stderr
    assert calls == ["install browser=1", "test browser=1"]  # a browser on PATH: no apt-get
    assert re.fullmatch(r"make test took \d+ min \d+ s \(exit 0\)", done.stdout.splitlines()[-1]), done.stdout
    done, calls = run_ci_with_stubs(tmp_path / "fail", 3)
    assert done.returncode == 3 and calls[-1] == "test browser=1"
    assert done.stdout.splitlines()[-1].endswith("(exit 3)"), done.stdout
    targets = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True).stdout
    assert "ruff check" in targets and "mypy" in targets and "pytest" in targets  # the Makefile's test target


def test_library_never_imports_pipelines() -> None:
    for path in (REPO / "rs_deeplab").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+pipelines", path.read_text(), flags=re.M), path


SCRIPTS = sorted(p.stem for p in (REPO / "pipelines").glob("*.py") if p.stem != "__init__")
EXIT_PROBE = """
import atexit, sys


def report():  # what the script left in its process, read as the interpreter exits
    tuning = sys.modules.get("rs_deeplab.runtime.tuning")
    sys.stderr.write(f"\\ntorch loaded: {'torch' in sys.modules}\\n")
    sys.stderr.write(f"malloc tuned: {bool(tuning and tuning.malloc_tuned())}\\n")


atexit.register(report)
"""
"""A ``sitecustomize`` module: the script runs as ``python pipelines/<name>.py``, and says at exit whether it tuned
malloc, and whether torch was loaded."""
HELP_WITHOUT_TORCH = {"crf_search", "demo", "evaluate", "tile", "train", "vectorize"}
"""Scripts whose ``--help`` (and a bad flag) answers before torch loads: they parse their arguments first. infer.py
and export.py list choices (runtimes, formats) that the inference package defines."""


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_main_runs_as_a_script_and_tunes_only_then(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each script's ``main(argv)`` answers --help in-process and leaves the caller's process alone; ``python
    pipelines/<name>.py --help`` gives the same answer and tunes malloc in its ``__main__`` block."""
    module = importlib.import_module(f"pipelines.{name}")
    tuned: list[bool] = []
    monkeypatch.setattr(tuning, "tune_malloc", lambda: tuned.append(True) or True)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and tuned == []  # a program calling main: its process is left alone
    in_process = capsys.readouterr().out
    assert in_process.startswith("usage:") and f"{name}.py" in in_process.splitlines()[0], in_process
    (tmp_path / "sitecustomize.py").write_text(EXIT_PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), tuning.ENV_SWITCH: "1"}
    script = REPO / "pipelines" / f"{name}.py"
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == in_process
    assert done.stderr.splitlines()[-1] == f"malloc tuned: {sys.platform.startswith('linux')}", done.stderr
    assert done.stderr.splitlines()[-2] == f"torch loaded: {name not in HELP_WITHOUT_TORCH}", done.stderr
