"""The one command for a lent GPU machine: carried wheels, ``bench/gpu_check.py``, then the ``gpu``-marked tests.

Here, once: ``bash bench/gpu_wheels.sh`` (the project's I/O packages as wheels in ``.whl/``, this venv's versions,
and the total that travels). There, with ``.whl`` carried (``python3`` with torch but no geo stack)::

    python3 bench/device_check.py --out $OUT

Three steps, each under its own time limit so that the next one still runs (40 + 300 + 190 = 530 s, inside the
10 minutes a device call may take):

1. ``install``: ``pip install --no-index --no-deps --target SITE .whl/*.whl`` (offline), then every module the
   GPU path imports is looked up as the children will see it (``PYTHONPATH`` = repository, SITE, what was there:
   prepended, not replaced); a missing one is one line, and the command goes on;
2. ``checks``: ``bench/gpu_check.py --out FOLDER``, which writes ``gpu_check.json``/``.md`` after every row;
3. ``tests``: ``pytest -m gpu`` on the GPU tests (log in ``gpu_tests.log``).

After every step ``device_check.json`` and ``device_check.md`` in ``--out`` say what finished, what failed and what
did not finish in time (a step past its limit gets SIGTERM, then SIGKILL; what it wrote stays). Exit status: 0 all
steps passed, 1 a step failed or ran out of time, 2 bad input (an unwritable results folder, limits over the
budget). ``--smoke`` runs the checks tiny on the CPU (the tests do, so the command cannot rot between loans).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpukit import prepend_pythonpath, unwritable_results  # noqa: E402

BUDGET_S = 540
"""The steps' limits together: a device call may run 600 s, which must also hold two grace periods and start-up."""
GRACE_S = 15
"""Seconds a step has between SIGTERM and SIGKILL to stop its own children."""
REQUIRED = (
    "rasterio",
    "affine",
    "segmentation_models_pytorch",
    "albumentations",
    "pydantic",
    "typing_extensions>=4.14",
    "dask",
    "distributed",
)
"""What the GPU path imports beyond a GPU image's torch/numpy/opencv/timm/pytest (bench/gpu_wheels.sh carries it)."""
DEFAULT_TESTS = ("tests/test_gpu.py", "tests/inference/predicting/test_rows_feed.py")
"""The files holding ``gpu``-marked tests."""
TEST_NEEDS: dict[str, tuple[str, ...]] = {}
"""Test files that import more than the carried wheels give, with those modules: left out, one line each, where
the modules are missing, rather than reported as collection errors. Empty: the gpu test files import with the
carried wheels alone (tests/bench/test_device_check.py checks it)."""


@dataclass
class Step:
    """One step's outcome, as written to ``device_check.json``."""

    name: str
    status: str = "not run"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    """How a child process ended: its exit code (None: stopped at its limit) and its run time."""

    code: int | None
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.code is None


def run_step(cmd: Sequence[str], timeout: float, log: Path, env: dict[str, str], cwd: Path = REPO) -> Finished:
    """Run ``cmd`` in its own process group, output to ``log``; past ``timeout`` s: SIGTERM, then SIGKILL.

    Whatever the group left running is killed afterwards too, so the next step finds the GPU free.
    """
    start = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        code: int | None
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return Finished(code, time.monotonic() - start)


def parse_requirement(text: str) -> tuple[str, tuple[int, ...] | None]:
    """``typing_extensions>=4.14`` → ``("typing_extensions", (4, 14))``; ``dask`` → ``("dask", None)``."""
    name, _, version = text.partition(">=")
    return name.strip(), tuple(int(v) for v in version.split(".")) if version else None


PROBE = """
import importlib.metadata, importlib.util, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        found[name] = None
        continue
    try:
        found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        found[name] = "?"
print(json.dumps(found))
"""


def missing_lines(requirements: Sequence[str], found: dict[str, str | None], wheels: Path) -> list[str]:
    """One line per requirement the children cannot import, or import in too old a version."""
    lines = []
    for text in requirements:
        name, minimum = parse_requirement(text)
        version = found.get(name)
        fix = f"run `bash bench/gpu_wheels.sh` here and carry {wheels.name}"
        if version is None:
            lines.append(f"missing: {name} is neither on this machine nor among the wheels in {wheels}; {fix}")
        elif minimum and version != "?" and version_tuple(version) < minimum:
            wanted = ".".join(map(str, minimum))
            lines.append(f"too old: {name} {version} is first on the path, {wanted} or newer is needed; {fix}")
    return lines


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(m) for m in re.findall(r"\d+", version)[:3])


def install(args: argparse.Namespace, env: dict[str, str], step: Step) -> None:
    """Install the carried wheels offline into ``--site``; then look up each required module as a child sees it."""
    wheels = sorted(args.wheels.glob("*.whl")) if args.wheels.is_dir() else []
    if wheels:
        size = sum(w.stat().st_size for w in wheels) / 2**20
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--disable-pip-version-check",
            "--target",
            str(args.site),
            *map(str, wheels),
        ]
        done = run_step(cmd, args.install_timeout, args.out / "install.log", env)
        if done.timed_out:
            step.lines.append(f"install: pip did not finish within {args.install_timeout:g} s (see install.log)")
        elif done.code:
            tail = (args.out / "install.log").read_text().strip().splitlines()[-1:] or ["?"]
            step.lines.append(f"install: pip exited {done.code}: {tail[0][:300]} (see install.log)")
        else:
            step.lines.append(f"installed {len(wheels)} carried wheels ({size:.1f} MiB) into {args.site}")
    else:
        step.lines.append(f"no carried wheels in {args.wheels}: using what this machine has")
    optional = sorted({m for needs in TEST_NEEDS.values() for m in needs})
    names = [parse_requirement(r)[0] for r in args.require] + optional
    proc = subprocess.run([sys.executable, "-c", PROBE, *names], env=env, capture_output=True, text=True, timeout=60)
    found = json.loads(proc.stdout) if proc.returncode == 0 else {}
    args.found = found
    problems = missing_lines(args.require, found, args.wheels)
    step.lines += problems
    failed = problems or any(line.startswith("install:") for line in step.lines)
    step.status = "failed" if failed else "ok"


def step_outcome(step: Step, done: Finished, limit: float, what: str) -> None:
    if done.timed_out:
        step.status = "did not finish"
        step.lines.insert(0, f"{step.name}: did not finish within its {limit:g} s limit{what}")
    else:
        step.status = "ok" if done.code == 0 else "failed"
        if done.code:
            step.lines.insert(0, f"{step.name}: exited {done.code}{what}")


def checks(args: argparse.Namespace, env: dict[str, str], step: Step) -> None:
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(args.out)]
    cmd += ["--smoke"] if args.smoke else []
    cmd += shlex.split(args.check_args)
    for stale in ("gpu_check.json", "gpu_check.md"):  # an earlier run's results are not this run's
        (args.out / stale).unlink(missing_ok=True)
    done = run_step(cmd, args.check_timeout, args.out / "gpu_check.log", env)
    report = args.out / "gpu_check.json"
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        data = {"checks": [], "running": None}
    for check in data["checks"]:
        if check["status"] == "running":
            step.lines.append(f"{check['name']}: stopped while running (the step's limit)")
        elif check["status"] == "did not finish":
            step.lines.append(f"{check['name']}: {check['error']}")
        else:
            step.lines.append(
                f"{check['name']}: {check['status']}" + (f": {check['error']}" if check.get("error") else "")
            )
    running = f" (stopped during the {data['running']!r} check)" if data.get("running") else ""
    recorded = f"; {len(data['checks'])} checks recorded in gpu_check.md, log in gpu_check.log"
    step_outcome(step, done, args.check_timeout, running + recorded)


def runnable_tests(files: Sequence[str], found: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """The test files whose extra modules (``TEST_NEEDS``) are importable, and one line per file left out."""
    run, left_out = [], []
    for path in files:
        missing = [m for m in TEST_NEEDS.get(path, ()) if not found.get(m)]
        if missing:
            left_out.append(f"{path}: not run (needs {', '.join(missing)}, not on this machine nor carried)")
        else:
            run.append(path)
    return run, left_out


def tests(args: argparse.Namespace, env: dict[str, str], step: Step) -> None:
    log = args.out / "gpu_tests.log"
    files, left_out = runnable_tests(args.tests, getattr(args, "found", {}))
    step.lines += left_out
    if not files:  # pytest without files would run the whole suite
        step.status = "failed"
        step.lines.append("tests: no test file left to run")
        return
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "-rfEs",
        "--continue-on-collection-errors",
        *files,
    ]
    done = run_step(cmd, args.tests_timeout, log, env)
    text = log.read_text(errors="replace")
    step.lines += pytest_lines(text)
    step_outcome(step, done, args.tests_timeout, "; log in gpu_tests.log")


def pytest_lines(text: str, most: int = 25) -> list[str]:
    """From a ``pytest -q -rfEs`` log: each FAILED/ERROR line, then pytest's last summary line."""
    lines = [line for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    summary = [line.strip("= ") for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    extra = [f"... and {len(lines) - most} more (gpu_tests.log)"] if len(lines) > most else []
    return lines[:most] + extra + summary[-1:]


def write_summary(out: Path, steps: Sequence[Step], plan: str) -> str:
    text = (
        "\n".join(
            [f"## Device check ({plan})", ""]
            + [
                f"- **{s.name}: {s.status}** ({s.seconds:.0f} s)" + "".join(f"\n  - {line}" for line in s.lines)
                for s in steps
            ]
        )
        + "\n"
    )
    (out / "device_check.json").write_text(json.dumps([asdict(s) for s in steps], indent=1) + "\n")
    (out / "device_check.md").write_text(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="results folder (device_check.*, gpu_check.*, logs)")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels (default: .whl)")
    p.add_argument("--site", type=Path, default=Path("/tmp/rs_deeplab_site"), help="where they are installed")
    p.add_argument("--smoke", action="store_true", help="gpu_check.py --smoke: tiny, on the CPU")
    p.add_argument("--check-args", default="", help="more arguments for gpu_check.py (e.g. '--only training')")
    p.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS), help="test files for pytest -m gpu")
    p.add_argument("--require", action="append", help="a module the children must import (repeatable)")
    p.add_argument("--install-timeout", type=float, default=40.0)
    p.add_argument("--check-timeout", type=float, default=300.0)
    p.add_argument("--tests-timeout", type=float, default=190.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.require = args.require or list(REQUIRED)
    limits = (args.install_timeout, args.check_timeout, args.tests_timeout)
    total = sum(limits)
    if min(limits) <= 0 or total > BUDGET_S:
        print(
            f"error: step limits {' + '.join(f'{v:g}' for v in limits)} = {total:g} s: each must be > 0 and "
            f"together <= {BUDGET_S} s (a device call runs 600 s); lower --check-timeout or --tests-timeout",
            file=sys.stderr,
        )
        return 2
    problem = unwritable_results(args.out)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    env = {**prepend_pythonpath(os.environ, REPO, args.site), "RS_DEEPLAB_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    plan = f"limits {' + '.join(f'{v:g}' for v in limits)} = {total:g} s"
    steps = [Step("install"), Step("checks"), Step("tests")]
    for step, fn in zip(steps, (install, checks, tests), strict=True):
        print(f"== {step.name}", flush=True)
        start = time.monotonic()
        fn(args, env, step)
        step.seconds = time.monotonic() - start
        print("\n".join(step.lines), flush=True)
        write_summary(args.out, steps, plan)
    text = write_summary(args.out, steps, plan)
    with contextlib.suppress(OSError):
        print((args.out / "gpu_check.md").read_text())
    print(text)
    return 0 if all(s.status == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
