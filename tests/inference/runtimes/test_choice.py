"""A checkpoint on the CPU through ONNX Runtime by default: the cached export, threads, fallbacks, int8, bad input.

Equal labels with PyTorch on the demo's held-out scene are checked in ``test_export.py`` (the ``auto`` run there).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pipelines.infer import main as infer_main
from rs_deeplab.inference.runtimes import onnx_cache
from rs_deeplab.inference.runtimes.exported import OnnxModule, session_threads
from rs_deeplab.inference.runtimes.onnx_cache import CACHE_FOLDER, USER_CACHE_ENV, is_intact, sidecar
from rs_deeplab.inference.runtimes.quantize import this_cpu_needs_seven_bits
from rs_deeplab.inference.runtimes.trained import ModelHolder, TrainedModel
from rs_deeplab.models import MODELS
from rs_deeplab.models.deeplab_v3 import DeepLabV3Plus
from rs_deeplab.runtime.cores import cgroup_cpu_limit, parse_cpu_quota, usable_cores
from rs_deeplab.runtime.devices import intra_op_threads
from tests.daskkit import subprocess_env

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def checkpoint(demo_run: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the demo checkpoint in a folder of its own (so its cache starts empty)."""
    folder = tmp_path / "run"
    folder.mkdir()
    return Path(shutil.copy(demo_run["checkpoint"], folder / "best.pt"))


def cached(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def test_cores_follow_the_affinity_mask_and_the_cgroup_quota(tmp_path: Path) -> None:
    assert (parse_cpu_quota("150000 100000"), parse_cpu_quota("max 100000")) == (1.5, None)
    assert (parse_cpu_quota("50000", "100000"), parse_cpu_quota("-1", "100000")) == (0.5, None)
    root, proc = tmp_path / "cgroup", tmp_path / "cgroup.txt"
    (root / "jobs" / "me").mkdir(parents=True)
    proc.write_text("0::/jobs/me\n")
    assert cgroup_cpu_limit(root, proc) is None
    (root / "jobs" / "cpu.max").write_text("100000 100000\n")  # a parent's quota binds its children
    (root / "jobs" / "me" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, proc) == 1.0 and usable_cores(root, proc) == 1
    v1, proc1 = tmp_path / "v1", tmp_path / "cgroup1.txt"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    proc1.write_text("4:memory:/x\n1:cpu,cpuacct:/\n")
    assert cgroup_cpu_limit(v1, proc1) == 2.5
    assert usable_cores(v1, proc1) == min(3, len(os.sched_getaffinity(0)))
    assert (intra_op_threads(8, 3), intra_op_threads(2, 4), intra_op_threads(16)) == (2, 1, 16)
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # a real mask: one core
        assert usable_cores(root=tmp_path / "none") == 1 and session_threads() == (1, 1)
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores(root=tmp_path / "none") == len(before)


def test_dask_worker_threads_share_the_cores() -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        threads, tasks = client.submit(session_threads, pure=False).result()
    assert tasks == 2 and threads == max(1, usable_cores() // 2)


@pytest.mark.slow
def test_the_export_is_built_once_by_processes_starting_at_once_and_rebuilt_when_damaged_or_stale(
    checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = (
        "import torch; from pathlib import Path; from rs_deeplab.cli.console import setup_logging\n"
        "from rs_deeplab.inference.runtimes.trained import TrainedModel\nsetup_logging()\n"
        f"model = TrainedModel(Path({str(checkpoint)!r}), runtime='onnx')\n"
        "print(model.load(torch.device('cpu')).runtime)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=subprocess_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["onnx-fp32", "onnx-fp32"]
    assert sum(o[1].count("exported to ONNX") for o in outs) == 1, outs  # one built it, the other waited for it
    caplog.set_level(logging.INFO, "rs_deeplab")
    first = TrainedModel(checkpoint, runtime="auto").load(CPU)  # found in the cache: not exported again
    assert isinstance(first.module, OnnxModule) and first.runtime == "onnx-fp32"
    folder = checkpoint.parent / CACHE_FOLDER
    (path,) = cached(folder)
    assert is_intact(path) and json.loads(sidecar(path).read_text())["output_stride"] == 16
    assert "exported to ONNX" not in caplog.text
    holder = ModelHolder()  # a Dask worker's: another runtime is another model
    assert not isinstance(holder.get(TrainedModel(checkpoint), CPU).module, OnnxModule)
    assert isinstance(holder.get(TrainedModel(checkpoint, runtime="onnx"), CPU).module, OnnxModule)
    with path.open("r+b") as f:  # damaged: a truncated file
        f.truncate(path.stat().st_size // 2)
    assert not is_intact(path)
    again = TrainedModel(checkpoint, runtime="onnx").load(CPU)
    assert caplog.text.count("exported to ONNX") == 1 and "damaged" in caplog.text and is_intact(path)
    x = torch.randn(1, 4, 64, 64)
    torch.testing.assert_close(again.module(x), first.module(x))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # retrained: other weights
    name = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][name] = state["model"][name] * 0.5
    torch.save(state, checkpoint)
    newer = TrainedModel(checkpoint, runtime="onnx").load(CPU)
    assert caplog.text.count("exported to ONNX") == 2
    assert cached(folder) != [path] and len(cached(folder)) == 1  # the stale export is gone
    assert not torch.allclose(newer.module(x), first.module(x))


def test_an_unwritable_checkpoint_folder_caches_in_the_user_folder_said_once(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (checkpoint.parent / CACHE_FOLDER).write_text("a file where the cache folder would go\n")
    monkeypatch.setenv(USER_CACHE_ENV, str(tmp_path / "user"))
    caplog.set_level(logging.INFO, "rs_deeplab")
    for _ in range(2):
        assert TrainedModel(checkpoint, runtime="auto").load(CPU).runtime == "onnx-fp32"
    assert len(cached(next((tmp_path / "user" / "rs_deeplab" / "onnx").iterdir()))) == 1
    assert caplog.text.count("cannot be written") == 1


@pytest.mark.slow
def test_without_onnxruntime_auto_runs_torch_and_onnx_is_one_line(demo_run: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "blocker" / "onnxruntime"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('onnxruntime is blocked for this test')\n")
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), env.get("PYTHONPATH", "")])
    scene, ck = str(demo_run["scene"]), str(demo_run["checkpoint"])
    code = (
        "import sys, torch\nfrom pathlib import Path\nfrom pipelines.infer import main\n"
        "from rs_deeplab.cli.console import setup_logging\nfrom rs_deeplab.inference.runtimes.trained import "
        "TrainedModel\n"
        f"a = main([{scene!r}, '--checkpoint', {ck!r}, '--out', 'onnx.tif', '--runtime', 'onnx'])\n"
        "print('---', file=sys.stderr)\nsetup_logging()\n"
        f"b = [TrainedModel(Path({ck!r}), runtime='auto').load(torch.device('cpu')) for _ in range(2)]\n"
        "print(a, [type(m.module).__name__ for m in b])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "2 ['DeepLabV3Plus', 'DeepLabV3Plus']", proc.stderr
    refused, ran = proc.stderr.split("---\n")
    assert refused.count("\n") == 1 and "pip install onnxruntime" in refused, refused
    assert ran.count("onnxruntime is not installed: running the checkpoint with PyTorch") == 1, ran
    assert list(tmp_path.iterdir()) == [tmp_path / "blocker"]


class FourierV3Plus(DeepLabV3Plus):
    """The demo's network with an operator the ONNX exporter lacks (a custom module that does not export)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        logits = out[0] if isinstance(out, tuple) else out
        return logits + torch.fft.fft2(logits).real * 0


def test_a_model_that_does_not_export_runs_torch_under_auto_and_stops_under_onnx(
    checkpoint: Path,
    demo_run: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(onnx_cache, "_known", {})  # no copy of the demo checkpoint's export from an earlier test
    spec = MODELS["deeplabv3plus"]
    monkeypatch.setitem(
        MODELS,
        "deeplabv3plus",
        type(spec)(FourierV3Plus, spec.backbones, spec.output_strides, spec.default_output_stride),
    )
    caplog.set_level(logging.INFO, "rs_deeplab")
    for _ in range(2):  # the second run finds the recorded failure: no second attempt, the same reason
        loaded = TrainedModel(checkpoint, runtime="auto").load(CPU)
        assert isinstance(loaded.module, FourierV3Plus) and loaded.runtime == "torch"
    assert caplog.text.count("does not export to ONNX (Exporting the operator 'aten::fft_fft2'") == 1
    assert not cached(checkpoint.parent / CACHE_FOLDER)
    capsys.readouterr()
    out = tmp_path / "x.tif"
    args = [str(demo_run["scene"]), "--checkpoint", str(checkpoint), "--out", str(out), "--runtime", "onnx"]
    assert infer_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not export to ONNX" in err and "pass --runtime torch" in err, err
    assert not out.exists()


@pytest.mark.slow
def test_int8_is_quantized_on_the_scene_and_records_its_agreement(
    demo_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene, checkpoint = str(demo_run["scene"]), demo_run["checkpoint"]  # its float32 export may be cached already
    common = [scene, "--checkpoint", str(checkpoint), "--size", "256", "--stride", "128"]
    assert infer_main([*common, "--out", str(tmp_path / "fp32.tif"), "-q"]) == 0
    capsys.readouterr()
    assert infer_main([*common, "--out", str(tmp_path / "int8.tif"), "--int8"]) == 0
    err = capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in (checkpoint.parent / CACHE_FOLDER).glob("*.onnx.json")]
    (int8,) = [r for r in records if r["settings"]["precision"] == "int8"]
    assert int8["method"] == "static" and int8["calibrated_on"] == scene and int8["check_windows"] >= 1
    assert int8["weight_bits"] == (7 if this_cpu_needs_seven_bits() else 8)  # 7 on x86 without VNNI
    share = int8["agreement"]
    assert f"{100 * share:.2f}% of pixels equal to float32's" in err, err
    with rasterio.open(tmp_path / "int8.tif") as ds:
        model = json.loads(ds.tags()["RS_DEEPLAB_INFERENCE"])["model"]
        labels = ds.read(1)
    assert model.endswith(f":onnx-int8:agreement={share:.4f}"), model
    with rasterio.open(tmp_path / "fp32.tif") as ds:
        fp32 = ds.read(1)
    whole = float(np.mean(labels == fp32))
    print(f"int8 vs fp32: {100 * whole:.2f}% of the scene's labels equal, {100 * share:.2f}% on the check windows")
    assert whole >= 0.95 and abs(whole - share) < 0.05  # the windows' share speaks for the scene


def test_an_export_is_keyed_by_the_code_that_builds_the_network(tmp_path: Path) -> None:
    """Changing a network's source (an rs_deeplab upgrade) names another cached export; other files do not."""
    package = Path(onnx_cache.__file__).resolve().parents[2]
    copy = tmp_path / "rs_deeplab"
    shutil.copytree(package / "models", copy / "models")
    (copy / "inference" / "runtimes").mkdir(parents=True)
    for name in ("export.py", "quantize.py", "onnx_cache.py"):
        shutil.copy(package / "inference" / "runtimes" / name, copy / "inference" / "runtimes" / name)
    before = onnx_cache.code_digest.__wrapped__(copy)
    assert before == onnx_cache.code_digest.__wrapped__(package)
    (copy / "inference" / "runtimes" / "onnx_cache.py").write_text("# not part of the network\n")
    assert onnx_cache.code_digest.__wrapped__(copy) == before
    heads = copy / "models" / "heads.py"
    heads.write_text(heads.read_text().replace("def ", "def  ", 1))
    assert onnx_cache.code_digest.__wrapped__(copy) != before
