"""The one command for a lent GPU (``bench/device_check.py``) and the pure helpers of the GPU checks, on the CPU.

The command runs here as it runs there, only ``--smoke`` (tiny, CPU) and with a wheel built on the spot: the
wheel is installed offline, children import it through a ``PYTHONPATH`` that kept what was there, results appear
per check, and a missing package, a check past its limit, a step past its limit and an unwritable results folder
each come back as one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from bench import device_check
from bench.gpukit import count_graph_breaks, fp32_exact, near_tie_agreement, prepend_pythonpath, torch_flags
from tests.bench.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "device_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    return load_script(REPO / "bench" / "gpu_check.py")


def probe_wheel(folder: Path) -> Path:
    """A pure-Python wheel of module ``rs26probe`` (what gpu_wheels.sh carries, in miniature)."""
    path = folder / "rs26probe-1.0-py3-none-any.whl"
    info = "rs26probe-1.0.dist-info"
    files = {
        "rs26probe/__init__.py": "CARRIED = True\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: rs26probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


PROBE_TEST = """
import os
import pytest

pytestmark = pytest.mark.gpu


def test_the_carried_wheel_and_the_old_pythonpath_are_both_seen():
    import rs26probe

    assert rs26probe.CARRIED
    assert os.environ["PYTHONPATH"].split(os.pathsep)[-1] == {marker!r}
"""


def run_command(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    marker = str(tmp_path / "kept-from-the-parent")
    (tmp_path / "test_probe.py").write_text(PROBE_TEST.format(marker=marker))
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": marker, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--out",
        str(out),
        "--smoke",
        "--site",
        str(tmp_path / "site"),
        "--tests",
        str(tmp_path / "test_probe.py"),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path), out


@pytest.mark.slow
def test_one_command_installs_checks_and_tests_writing_results_per_check(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe_wheel(wheels)
    proc, out = run_command(
        tmp_path,
        "--wheels",
        str(wheels),
        "--require",
        "rs26probe",
        "--require",
        "no_such_mod",
        "--check-args",
        "--only training,torchrun --limit torchrun=2",
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = {s["name"]: s for s in json.loads((out / "device_check.json").read_text())}
    assert steps["install"]["status"] == "failed"
    assert steps["install"]["lines"][0].startswith("installed 1 carried wheels")
    missing = [line for line in steps["install"]["lines"] if "no_such_mod" in line]
    assert len(missing) == 1 and missing[0].startswith("missing: no_such_mod") and "gpu_wheels.sh" in missing[0]
    assert not any("rs26probe" in line for line in steps["install"]["lines"][1:])
    # the checks: training's rows are there; torchrun, past its 2 s limit, is named as not finished
    report = json.loads((out / "gpu_check.json").read_text())
    assert [(c["name"], c["status"]) for c in report["checks"]] == [("training", "ok"), ("torchrun", "did not finish")]
    assert report["running"] is None
    md = (out / "gpu_check.md").read_text()
    assert "| fp16 + GradScaler + channels_last |" in md and "torchrun: **DID NOT FINISH**" in md
    assert steps["checks"]["status"] == "failed"
    assert "torchrun: did not finish within its 2 s limit (--limit torchrun=SECONDS)" in steps["checks"]["lines"]
    # the tests saw the carried wheel, and the parent's PYTHONPATH behind it
    assert steps["tests"]["status"] == "ok" and steps["tests"]["lines"][-1].startswith("1 passed")
    assert "- **tests: ok**" in (out / "device_check.md").read_text()
    assert not leftovers(tmp_path), "torchrun's process group outlived its limit"


def leftovers(tmp_path: Path) -> list[str]:
    """Processes still running a command that names a file under ``tmp_path`` (the checks' torchrun and its rank)."""
    proc = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines() if str(tmp_path) in line and "ps -eo" not in line]


@pytest.mark.slow
def test_a_step_past_its_limit_is_named_and_the_next_step_still_runs(tmp_path: Path) -> None:
    proc, out = run_command(
        tmp_path,
        "--wheels",
        str(tmp_path / "none"),
        "--require",
        "numpy",
        "--check-args",
        "--only torchrun",
        "--check-timeout",
        "2",
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = {s["name"]: s for s in json.loads((out / "device_check.json").read_text())}
    assert steps["install"]["status"] == "ok" and steps["install"]["lines"][0].startswith("no carried wheels")
    assert steps["checks"]["status"] == "did not finish"
    assert steps["checks"]["lines"][0].startswith("checks: did not finish within its 2 s limit")
    assert steps["tests"]["status"] == "failed"  # it ran: the probe test misses the carried module here
    assert "ModuleNotFoundError" in (out / "gpu_tests.log").read_text()


def test_run_step_stops_a_step_past_its_limit_and_keeps_what_it_wrote(tmp_path: Path) -> None:
    written = tmp_path / "partial.json"
    code = f"import pathlib, signal; pathlib.Path({str(written)!r}).write_text('{{}}'); signal.pause()"
    done = device_check.run_step([sys.executable, "-c", code], 3, tmp_path / "log", dict(os.environ), tmp_path)
    assert done.timed_out and done.code is None and 3 <= done.seconds < 3 + device_check.GRACE_S
    assert written.read_text() == "{}"
    finished = device_check.run_step(
        [sys.executable, "-c", "raise SystemExit(3)"], 30, tmp_path / "log2", dict(os.environ), tmp_path
    )
    assert finished.code == 3 and not finished.timed_out


@pytest.mark.parametrize("args", [["--out", "{file}/sub"], ["--out", "{tmp}/out", "--check-timeout", "500"]])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "file").write_text("not a folder")
    argv = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert ("not writable" in proc.stderr and "--out" in proc.stderr) or "<= 540 s" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_refuses_an_unwritable_results_folder(
    gpu_check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert gpu_check.main(["--smoke", "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: results folder {tmp_path / 'file' / 'out'} is not writable")


def test_missing_and_too_old_packages_are_one_line_each() -> None:
    found = {"pydantic": None, "typing_extensions": "4.12.2", "dask": "2025.1.0", "odd": "?"}
    lines = device_check.missing_lines(["pydantic", "typing_extensions>=4.14", "dask", "odd>=2"], found, Path(".whl"))
    assert len(lines) == 2
    assert lines[0].startswith("missing: pydantic") and lines[1].startswith("too old: typing_extensions 4.12.2")
    assert device_check.missing_lines(["typing_extensions>=4.14"], {"typing_extensions": "4.15.0"}, Path(".whl")) == []


def test_test_files_needing_uncarried_modules_are_left_out_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    feed = "tests/inference/predicting/test_rows_feed.py"
    files = ["tests/test_gpu.py", feed]
    monkeypatch.setattr(device_check, "TEST_NEEDS", {feed: ("shapely", "pyogrio")})
    run, left_out = device_check.runnable_tests(files, {"shapely": "2.1", "pyogrio": None})
    assert run == ["tests/test_gpu.py"] and left_out == [
        f"{feed}: not run (needs pyogrio, not on this machine nor carried)"
    ]
    assert device_check.runnable_tests(files, {"shapely": "2.1", "pyogrio": "0.11"}) == (files, [])


LEAN_IMPORT = """
import sys
for name in ("shapely", "pyogrio", "geopandas", "pyproj", "pydensecrf", "hypothesis", "onnx", "onnxruntime"):
    sys.modules[name] = None  # as on a GPU machine with only the carried wheels: importing them fails
for module in sys.argv[1:]:
    __import__(module)
"""


@pytest.mark.slow
def test_the_gpu_test_files_import_without_the_gis_stack() -> None:
    # A GPU machine gets rasterio, smp, albumentations, pydantic and dask carried, not shapely, pyogrio or the dev
    # tools: the files holding gpu tests (and their conftests) must import without them, or their tests never run.
    modules = [p.removesuffix(".py").replace("/", ".") for p in device_check.DEFAULT_TESTS]
    assert not device_check.TEST_NEEDS
    done = subprocess.run(
        [sys.executable, "-c", LEAN_IMPORT, "tests.conftest", "tests.inference.conftest", *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_pytest_lines_keep_failures_and_the_summary() -> None:
    log = (
        "....F\nFAILED tests/a.py::t - assert 1\nERROR tests/b.py - ModuleNotFoundError: pyogrio\n"
        "=== 1 failed, 4 passed, 2 skipped, 1 error in 3.2s ===\n"
    )
    assert device_check.pytest_lines(log) == [
        "FAILED tests/a.py::t - assert 1",
        "ERROR tests/b.py - ModuleNotFoundError: pyogrio",
        "1 failed, 4 passed, 2 skipped, 1 error in 3.2s",
    ]


def test_pythonpath_is_prepended_not_replaced() -> None:
    env = prepend_pythonpath({"PYTHONPATH": f"/site{os.pathsep}/old", "X": "1"}, "/repo", "/site")
    assert env["PYTHONPATH"] == os.pathsep.join(["/repo", "/site", "/old"]) and env["X"] == "1"
    assert prepend_pythonpath({}, "/repo")["PYTHONPATH"] == "/repo"


def test_torch_flags_come_back_even_when_the_block_raises() -> None:
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with pytest.raises(RuntimeError), torch_flags(cudnn_benchmark=not before[0]):
        assert torch.backends.cudnn.benchmark is (not before[0])
        raise RuntimeError
    with fp32_exact():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    ) == before
    with pytest.raises(ValueError, match="unknown torch flag"), torch_flags(cudnn_benchmark_typo=True):
        pass


def test_near_tie_agreement_allows_near_ties_only() -> None:
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 100, (3, 40, 50)).astype(np.uint8)
    probs[0] = 200  # class 0 wins everywhere by a wide margin...
    probs[0, 0, :2], probs[1, 0, :2] = 120, 119  # ...but at two pixels, where classes 0 and 1 nearly tie
    a = probs.argmax(0)
    assert near_tie_agreement(a, a.copy(), probs).describe().startswith("identical")
    b = a.copy()
    b[0, :2] = 1
    tie = near_tie_agreement(a, b, probs)
    assert tie.ok and tie.differ == 2 and tie.widest_margin == 1 and "near-ties only" in tie.describe()
    b[5, 5] = 2  # a pixel that is no near-tie changed class
    assert not near_tie_agreement(a, b, probs).ok
    many = a.copy()
    many[0, :2] = 1
    assert not near_tie_agreement(a, many, probs, min_equal=0.9995).ok  # 2 of 2000 differ: 99.9 % < 99.95 %
    with pytest.raises(ValueError, match="shapes differ"):
        near_tie_agreement(a, b[:, :10], probs)


def test_graph_breaks_are_counted_from_dynamo() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    def f(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        if float(y.sum()) > 0:  # a host read: dynamo breaks the graph here
            return y + 1
        return y - 1

    torch._dynamo.reset()
    counters.clear()
    try:
        torch.compile(f, backend="eager")(torch.ones(3))
        breaks, reasons = count_graph_breaks(counters)
    finally:
        torch._dynamo.reset()
    assert breaks >= 1 and reasons and all(len(r) <= 200 for r in reasons)
    synthetic = {"graph_break": {"Unsupported\n  Explanation: item() call\n  Hint: x": 3, "Other": 1}}
    assert count_graph_breaks(synthetic) == (4, ["Unsupported: item() call", "Other"])
    assert count_graph_breaks({}) == (0, [])


@pytest.mark.usefixtures("one_torch_thread")
def test_fake_world_of_two_runs_syncbn_ddp_steps_on_one_device(gpu_check: ModuleType) -> None:
    """The fake process group (torch's ``fake`` backend) in this process; the CPU SyncBN + DDP path, no compile."""
    r = gpu_check.fake_ddp_steps(gpu_check.SMOKE, None, steps=2)
    assert r["sync_bn"] > 10 and r["breaks"] == 0 and r["finite"]
    import torch.distributed as dist

    assert not dist.is_initialized()  # the fake group is gone afterwards
