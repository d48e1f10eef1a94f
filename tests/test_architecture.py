"""docs/architecture.md against the code: the paths it names exist, its import table covers every package and the
code keeps to it (checked statically with ``ast``), and the torch-free stages (tiling, vectorizing, scoring,
the sample generator) load no torch in a real run."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rs_deeplab.labels.class_names import class_names_tag
from rs_deeplab.labels.classes import SCHEMES
from tests.conftest import RasterFactory
from tests.sources import parse

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rs_deeplab"
DOC = ROOT / "docs" / "architecture.md"
TABLE_HEADING = "## What each package may import"
SHARED = "shared"
TORCH_STACK = {"torch", "torchvision", "albumentations", "segmentation_models_pytorch"}


@dataclass(frozen=True)
class Rule:
    """One row of the doc's import table."""

    key: str  # "shared", "rs_deeplab.tiling", "rs_deeplab.config.schema", "pipelines"
    allowed: tuple[str, ...]  # "shared" or dotted rs_deeplab modules / packages
    never: tuple[str, ...]  # third-party top-level names or rs_deeplab modules / packages


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def ticked(cell: str) -> tuple[str, ...]:
    return tuple(re.findall(r"`([^`]+)`", cell))


def import_table() -> dict[str, Rule]:
    """The first Markdown table after the import-rules heading, one rule per row."""
    text = doc_text()
    assert TABLE_HEADING in text, f"{DOC} lost its section {TABLE_HEADING!r}"
    lines = text.split(TABLE_HEADING, 1)[1].splitlines()
    rows = [line for line in lines if line.startswith("|")]
    start = lines.index(rows[0])
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert table[0][:3] == ["package", "may import from rs_deeplab", "never"], table[0]
    rules = {}
    for cells in table[2:]:
        (key,) = ticked(cells[0])
        rules[key] = Rule(key, ticked(cells[1]), ticked(cells[2]))
    return rules


def shared_rooms() -> tuple[str, ...]:
    """The rooms of the shared layer, as the doc's sentence "`shared` stands for the rooms ..." names them."""
    sentence = re.search(r"`shared` stands for the rooms of the shared layer,(.*?)\.\s", doc_text(), flags=re.S)
    assert sentence, f"{DOC.name} no longer says which rooms `shared` stands for"
    rooms = tuple(re.findall(r"`rs_deeplab/(\w+)/`", sentence.group(1)))
    assert rooms and all((PACKAGE / room / "__init__.py").is_file() for room in rooms), rooms
    return rooms


def is_shared(module: str) -> bool:
    """``rs_deeplab`` itself or a module in one of the shared layer's rooms (``rs_deeplab/geo/raster.py``)."""
    parts = module.split(".")
    return parts == ["rs_deeplab"] or (parts[0] == "rs_deeplab" and parts[1] in SHARED_ROOMS)


SHARED_ROOMS = shared_rooms()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(module: str, entry: str) -> bool:
    return module == entry or module.startswith(entry + ".")


def rule_for(module: str, rules: dict[str, Rule]) -> Rule:
    """The most specific row: the module's own, else its package's, else ``shared``."""
    keyed = [key for key in rules if key != SHARED and within(module, key)]
    if keyed:
        return rules[max(keyed, key=len)]
    assert is_shared(module), f"{module} is in no row of the import table in {DOC}"
    return rules[SHARED]


def resolve(module: str, name: str, modules: set[str] | None = None) -> str:
    """``from module import name``: the submodule when ``name`` is one (one of ``modules``, if given; else a file
    on disk), else the module."""
    candidate = f"{module}.{name}"
    if modules is not None:
        return candidate if candidate in modules else module
    path = ROOT / Path(*candidate.split("."))
    return candidate if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() else module


def imports(path: Path, source: str | None = None, modules: set[str] | None = None) -> Iterator[tuple[int, str]]:
    """Every module a file imports, at any depth (functions, ``TYPE_CHECKING`` blocks), relative ones resolved
    (``modules``: the modules that exist, for synthetic sources; default: the files on disk)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(parse(text, str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "rs_deeplab":
                for alias in node.names:
                    yield node.lineno, resolve(base, alias.name, modules)
            else:
                yield node.lineno, base


def allowed(target: str, rule: Rule, own: str) -> bool:
    if within(target, own):
        return True
    return any(is_shared(target) if entry == SHARED else within(target, entry) for entry in rule.allowed)


def own_package(module: str, rule: Rule) -> str:
    """What counts as the importer's own code: its stage package (``rs_deeplab.tiling``), or itself if shared."""
    if rule.key == SHARED:
        return module
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "rs_deeplab" else parts[0]


def module_exists(dotted: str) -> bool:
    path = ROOT / Path(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


# --- the doc cannot rot -----------------------------------------------------------------------------------------


def named_paths() -> set[str]:
    """Every ``rs_deeplab/...`` and ``pipelines/...`` file or folder path the doc names (tables, text, diagram)."""
    return set(re.findall(r"\b(?:rs_deeplab|pipelines)(?:/\w+)*(?:/\w+\.py|/)", doc_text()))


def test_every_path_the_doc_names_exists() -> None:
    paths = named_paths()
    assert len(paths) > 30, sorted(paths)  # the diagram and the stage table name the modules
    assert "rs_deeplab/tiling/tiler.py" in paths and "rs_deeplab/vectorize/core.py" in paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{DOC.name} names paths that do not exist: {missing}"


def test_every_shared_module_and_script_is_named() -> None:
    files = [*(p for room in SHARED_ROOMS for p in (PACKAGE / room).glob("*.py")), *(ROOT / "pipelines").glob("*.py")]
    assert not [p for p in PACKAGE.glob("*.py") if p.name != "__init__.py"], "a module outside the rooms"
    paths = {str(p.relative_to(ROOT)) for p in files if p.name != "__init__.py"}
    unnamed = sorted(paths - named_paths())
    assert not unnamed, f"{DOC.name} does not name {unnamed}"


def test_the_diagram_is_one_mermaid_flowchart_naming_modules() -> None:
    blocks = re.findall(r"```mermaid\n(.*?)```", doc_text(), flags=re.S)
    assert len(blocks) == 1 and blocks[0].lstrip().startswith("flowchart")
    named = set(re.findall(r"rs_deeplab/[\w/]+\.py", blocks[0]))
    stages = {p.split("/")[1] for p in named}
    assert {"tiling", "training", "inference", "vectorize", "evaluation"} <= stages, sorted(named)


def test_every_package_has_a_row_and_every_module_the_table_names_exists() -> None:
    rules = import_table()
    packages = sorted(f"rs_deeplab.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert len(packages) >= 7, packages
    stages = [p for p in packages if p.split(".")[1] not in SHARED_ROOMS]
    assert not [p for p in stages if p not in rules], f"packages without a row in {DOC.name}'s import table"
    assert SHARED in rules and "pipelines" in rules
    for rule in rules.values():
        for entry in (rule.key, *rule.allowed, *rule.never):
            if entry.startswith("rs_deeplab"):
                assert module_exists(entry), f"{DOC.name} import table: {entry} is no module or package"
        assert not set(rule.allowed) & set(rule.never), rule


# --- the import rules, statically -------------------------------------------------------------------------------


def file_violations(path: Path, rules: dict[str, Rule], source: str | None = None) -> list[str]:
    """Each import of one file against its row of the table, as ``path:line imports target: why``."""
    module = module_name(path)
    rule = rule_for(module, rules)
    own = own_package(module, rule)
    found = []
    for line, target in imports(path, source):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        top = target.split(".")[0]
        if top in {"pipelines", "tests"}:
            found.append(f"{where}: the library never imports the scripts or the tests")
        elif top in rule.never or any(within(target, never) for never in rule.never):
            found.append(f"{where}: row `{rule.key}` says never")
        elif top == "rs_deeplab" and not allowed(target, rule, own):
            found.append(f"{where}: row `{rule.key}` allows only {', '.join(rule.allowed)}")
    return found


def test_packages_import_only_what_the_architecture_table_allows() -> None:
    rules = import_table()
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 100, len(files)
    found = [problem for path in files for problem in file_violations(path, rules)]
    assert not found, f"imports against {DOC.name}:\n" + "\n".join(found)


def test_the_static_check_sees_lazy_relative_and_forbidden_imports() -> None:
    """The checker must see an import inside a function (the usual way a stage drags torch in) and a relative one."""
    source = (
        "from .crops import x\nfrom rs_deeplab.geo import raster\n\n"
        "def f():\n    import torch\n    from rs_deeplab.training import engine\n    from pipelines.tile import main\n"
    )
    probe = PACKAGE / "tiling" / "probe.py"  # only parsed: the module's name comes from its path
    found = [target for _, target in imports(probe, source)]
    forbidden = ["torch", "rs_deeplab.training.engine", "pipelines.tile"]
    assert found == ["rs_deeplab.tiling.crops", "rs_deeplab.geo.raster", *forbidden]
    problems = file_violations(probe, import_table(), source)
    assert [p.split(" imports ")[1].split(":")[0] for p in problems] == forbidden
    clean = "from rs_deeplab.geo.raster import open_raster\nfrom rs_deeplab.labels.decoding import decode_label\n"
    assert file_violations(PACKAGE / "evaluation" / "probe.py", import_table(), clean) == []
    other_stage = "from rs_deeplab.tiling.labels import read_labels\n"  # evaluation needs no tiler
    assert len(file_violations(PACKAGE / "evaluation" / "probe.py", import_table(), other_stage)) == 1


# --- no import cycles ----------------------------------------------------------------------------------------------
#
# The graph has one node per module of ``rs_deeplab`` (a package is its ``__init__``) and an edge for every import
# ``imports`` sees: at the top, inside a function (a lazy import still runs, only later) and inside an
# ``if TYPE_CHECKING:`` block. Type-only imports count: a type both sides name is a shared piece that belongs below
# both, and ``from __future__ import annotations`` only defers it (pydantic and ``get_type_hints`` resolve it at run
# time). ``from rs_deeplab.x import y`` is an edge to ``rs_deeplab.x``, or to ``rs_deeplab.x.y`` when that is a
# module. A module gets no edge to its own enclosing packages: Python runs a package's ``__init__`` before its
# modules, and an ``__init__`` that re-exports its modules would otherwise be a cycle with each of them.


def import_graph(sources: dict[Path, str | None]) -> dict[str, set[str]]:
    """Module → the ``rs_deeplab`` modules it imports, for the files ``sources`` (text None: read the file)."""
    names = {path: module_name(path) for path in sources}
    known = set(names.values())
    graph: dict[str, set[str]] = {name: set() for name in known}
    for path, source in sources.items():
        for _, target in imports(path, source, known):
            if target in known and target != names[path]:
                graph[names[path]].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module, each sorted, iteratively (no recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as ``[a, b, ..., a]`` (breadth-first inside it)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is no cycle")


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each knot of modules importing each other, named by one cycle ``a → b → a`` (plus the knot's other members)."""
    named = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component)
        rest = sorted(set(component) - set(cycle))
        named.append(" → ".join(cycle) + (f" (with {', '.join(rest)})" if rest else ""))
    return named


def test_no_import_cycles() -> None:
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    graph = import_graph(dict.fromkeys(files))
    assert len(graph) > 100 and "rs_deeplab.remote.paths" in graph["rs_deeplab.geo.raster"]  # the graph has the edges
    cycles = set(import_cycles(graph))
    found = "\n".join(sorted(cycles))
    assert not cycles, f"import cycles in rs_deeplab (move the piece both sides need down):\n{found}"


def test_the_cycle_check_sees_lazy_and_type_only_cycles() -> None:
    """Synthetic modules (only parsed: names come from paths): a three-module cycle closed by a lazy import, a
    two-module one closed by a ``TYPE_CHECKING`` import, and a package whose ``__init__`` re-exports a module."""
    sources: dict[Path, str | None] = {
        PACKAGE / "probe_a.py": "from rs_deeplab.probe_b import f\n",
        PACKAGE / "probe_b.py": "from rs_deeplab import probe_c\n",
        PACKAGE / "probe_c.py": "def g():\n    from rs_deeplab.probe_a import h\n",
        PACKAGE / "probe_d.py": "from rs_deeplab.probe_c import g\n",  # into the cycle, not part of it
        PACKAGE / "probepkg" / "__init__.py": "from rs_deeplab.probepkg.x import X\n",
        PACKAGE / "probepkg" / "x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .y import Y\n",
        PACKAGE / "probepkg" / "y.py": "from rs_deeplab.probepkg.x import X\n",
    }
    graph = import_graph(sources)
    assert graph["rs_deeplab.probepkg"] == {"rs_deeplab.probepkg.x"}
    assert import_cycles(graph) == [
        "rs_deeplab.probe_a → rs_deeplab.probe_b → rs_deeplab.probe_c → rs_deeplab.probe_a",
        "rs_deeplab.probepkg.x → rs_deeplab.probepkg.y → rs_deeplab.probepkg.x",
    ]
    sources[PACKAGE / "probe_a.py"] = "from rs_deeplab.probe_b import f\nfrom rs_deeplab.probe_d import d\n"
    assert import_cycles(import_graph(sources))[0] == (  # one shortest cycle, then the knot's other members
        "rs_deeplab.probe_a → rs_deeplab.probe_b → rs_deeplab.probe_c → rs_deeplab.probe_a (with rs_deeplab.probe_d)"
    )
    sources[PACKAGE / "probe_c.py"] = "def g():\n    pass\n"  # the lazy import gone: no cycle left there
    assert import_cycles(import_graph(sources)) == [
        "rs_deeplab.probepkg.x → rs_deeplab.probepkg.y → rs_deeplab.probepkg.x"
    ]


# --- boundaries in real processes -------------------------------------------------------------------------------


def loaded_modules(args: list[str], cwd: Path) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run a real process with ``-X importtime`` (inherited by its children) and return every module it loaded."""
    env = dict(os.environ, RS_DEEPLAB_NO_PROGRESS="1", PYTHONPROFILEIMPORTTIME="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    run = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", run.stderr, flags=re.M))
    return names, run


def torch_stack(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in TORCH_STACK)


def test_tile_help_loads_no_torch(tmp_path: Path) -> None:
    names, run = loaded_modules([str(ROOT / "pipelines" / "tile.py"), "--help"], tmp_path)
    assert run.returncode == 0 and "--out" in run.stdout, run.stderr[-2000:]
    assert "rs_deeplab.cli.console" in names  # the import log works
    assert not torch_stack(names)


@pytest.mark.slow
def test_tiling_on_dask_workers_loads_no_torch(make_raster: RasterFactory, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 6, (160, 144)).astype(np.uint8)
    scene = make_raster(rng.integers(0, 255, (3, 160, 144), dtype=np.uint8), "scene.tif")
    label = make_raster(SCHEMES["potsdam"].encode_colours(classes), "label.tif")
    code = (
        "from rs_deeplab.tiling import SceneSpec, tile_scenes\n"
        f"summary = tile_scenes([SceneSpec({str(scene)!r}, {str(label)!r}, 'train')], 'tiles', size=64, stride=48,\n"
        "                      scheme='potsdam', workers=2, quiet=True)\n"
        "print('crops', summary.crops)\n"
    )
    names, run = loaded_modules(["-c", code], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "crops 9" in run.stdout, run.stdout
    assert "distributed" in names and "rs_deeplab.tiling.crops" in names  # a real Dask run, seen by the log
    assert not torch_stack(names)


def test_vectorize_cli_loads_no_torch(make_raster: RasterFactory, tmp_path: Path) -> None:
    labels = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) % 4, np.ones((16, 16), np.uint8))
    raster = make_raster(labels, "labels.tif", nodata=255, tags=class_names_tag(["a", "b", "c", "d"]))
    out = tmp_path / "labels.gpkg"
    names, run = loaded_modules([str(ROOT / "pipelines" / "vectorize.py"), str(raster), "--out", str(out)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.is_file() and "rs_deeplab.vectorize.core" in names
    assert not torch_stack(names)


def test_scene_scoring_loads_no_torch(make_raster: RasterFactory, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 6, (70, 90)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.8, truth, 0).astype(np.uint8)
    truth_path = make_raster(SCHEMES["potsdam"].encode_colours(truth), "truth.tif")
    pred_path = make_raster(pred, "pred.tif", nodata=255)
    args = [str(ROOT / "pipelines" / "evaluate.py"), "--pred", str(pred_path), "--truth", str(truth_path)]
    names, run = loaded_modules([*args, "--scheme", "potsdam", "--out", str(tmp_path / "report")], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mIoU" in run.stdout and "rs_deeplab.evaluation.scenes" in names
    assert not torch_stack(names)


def test_validating_configs_loads_no_torch(tmp_path: Path) -> None:
    """The bottom layer is torch-free: every config in ``configs/`` loads, and the checks that need the models (MSC
    scales; a scale's crop against the model's default output stride) run on :mod:`rs_deeplab.config.model_choices`."""
    code = (
        "import glob\n"
        "from typing import get_args\n"
        "from rs_deeplab.config.schema import ConfigError, ModelConfig, load_config\n"
        "from rs_deeplab.config.model_choices import DEFAULT_OUTPUT_STRIDES\n"
        "assert set(get_args(ModelConfig.model_fields['name'].annotation)) == set(DEFAULT_OUTPUT_STRIDES)\n"
        f"paths = sorted(glob.glob({str(ROOT / 'configs' / '**' / '*.yaml')!r}, recursive=True))\n"
        "print('loaded', sum(1 for p in paths if load_config(p)))\n"
        "msc = ['model.msc=[1.0,0.75,0.5]', 'model.name=deeplabv3', 'model.head=mmseg']\n"
        "print('msc', load_config(paths[0], msc).model.msc)\n"
        "for bad in (['model.msc=[0.5]'], ['model.msc=[1.0,0.01]', 'data.crop_size=512']):\n"
        "    try:\n"
        "        load_config(paths[0], bad)\n"
        "    except ConfigError as exc:\n"
        "        print('refused', str(exc).splitlines()[-1])\n"
    )
    names, run = loaded_modules(["-c", code], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split("loaded ")[1].split()[0]) >= 5 and "msc [1.0, 0.75, 0.5]" in run.stdout, run.stdout
    refused = [line for line in run.stdout.splitlines() if line.startswith("refused")]
    assert len(refused) == 2 and "at least two scales" in refused[0] and "output stride" in refused[1], run.stdout
    assert "rs_deeplab.config.model_choices" in names and "pydantic" in names  # the import log works
    assert not [n for n in names if within(n, "rs_deeplab.models")], sorted(names)
    assert not torch_stack(names)


def test_sample_generator_loads_no_torch(tmp_path: Path) -> None:
    args = ["-m", "rs_deeplab.sample", "potsdam", str(tmp_path / "potsdam"), "--ids", "2_13", "--size", "96"]
    names, run = loaded_modules(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert list((tmp_path / "potsdam" / "5_Labels_all").glob("*.tif")) and "rs_deeplab.sample.isprs" in names
    assert not torch_stack(names)


# --- test files are named after what they test -------------------------------------------------------------------


def cross_cutting_tests() -> set[str]:
    """The test files docs/development.md lists as testing no one module (``tests/test_architecture.py``, ...)."""
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    sentence = re.search(r"Cross-cutting tests(.*?)\.\s", text, flags=re.S)
    assert sentence, "docs/development.md no longer lists the cross-cutting tests"
    return set(re.findall(r"`(tests/[\w/]+\.py)`", sentence.group(1)))


def misnamed_tests(paths: list[Path], cross_cutting: set[str]) -> list[str]:
    """Test files named after nothing: ``tests/<folders>/test_<name>.py`` must name a module or package of
    ``rs_deeplab/<folders>/`` (``<name>`` or ``<module>_<topic>``), a script (``tests/pipelines/``), a bench script
    (``tests/bench/``) or a page (``tests/docs/``), or be one of the cross-cutting tests."""
    out = []
    for path in paths:
        rel = path.relative_to(ROOT)
        folders, name = rel.parts[1:-1], rel.stem.removeprefix("test_")
        if rel.as_posix() in cross_cutting:
            continue
        if folders[:1] == ("pipelines",):
            targets = [p.stem for p in (ROOT / "pipelines").glob("*.py")]
        elif folders[:1] == ("bench",):
            targets = [p.stem for p in (ROOT / "bench").glob("*.py")]
        elif folders[:1] == ("docs",):
            targets = [p.stem for p in (ROOT / "docs").glob("*.md")]
        elif folders:
            base = PACKAGE.joinpath(*folders)
            targets = [p.stem for p in base.glob("*.py")] + [
                p.name for p in base.iterdir() if (p / "__init__.py").is_file()
            ]
            targets += [folders[-1]] if base.is_dir() else []
        else:
            targets = []
        if not any(name == t or name.startswith(t + "_") for t in targets if t != "__init__"):
            out.append(rel.as_posix())
    return out


def test_every_test_file_is_named_after_what_it_tests() -> None:
    cross_cutting = cross_cutting_tests()
    assert cross_cutting and all((ROOT / p).is_file() for p in cross_cutting), sorted(cross_cutting)
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    assert len(tests) > 80 and not misnamed_tests(tests, cross_cutting), misnamed_tests(tests, cross_cutting)
    probes = [
        ROOT / "tests" / "geo" / "test_raster_reads.py",
        ROOT / "tests" / "geo" / "test_rasters.py",
        ROOT / "tests" / "pipelines" / "test_infer_bad_inputs.py",
        ROOT / "tests" / "test_helpers.py",
    ]
    assert misnamed_tests(probes, cross_cutting) == ["tests/geo/test_rasters.py", "tests/test_helpers.py"]
