"""What only a CUDA machine shows: AMP + channels_last + compile training, resume, GPU vs CPU inference.

Every test here is marked ``gpu``: skipped where torch sees no CUDA device (CI), run with ``pytest -m gpu`` on a
GPU machine (``bench/device_check.py`` runs them after ``bench/gpu_check.py``). The bit-exact resume and SyncBN
tests elsewhere pin the CPU: CUDA kernels such as bilinear interpolation's backward are not deterministic, so here
the bar is a tolerance, stated where it is used. A comparison of fp32 runs turns TF32 off (``fp32_exact``).
The imports stay lean (torch, rasterio; no GeoPackage stack): training reads a VOC-layout sample, not tiles.
Child processes get the repository in front of the ``PYTHONPATH`` they inherit (carried wheels stay visible).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from bench.gpukit import fp32_exact, near_tie_agreement, prepend_pythonpath
from pipelines import train as train_cli
from rs_deeplab.inference.predicting.scene import predict_scene
from rs_deeplab.models import build_model
from rs_deeplab.sample import write_voc
from rs_deeplab.training.checkpoint import load_checkpoint
from tests.conftest import RasterFactory
from tests.killkit import kill_after_checkpoint

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[1]
ENV = {**prepend_pythonpath(os.environ, REPO), "RS_DEEPLAB_NO_PROGRESS": "1"}
GPU_TRAIN = {"device": "cuda", "amp": "auto", "channels_last": True}


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc(tmp_path_factory.mktemp("gpu_data"), n_train=6, n_val=3)


def write_config(path: Path, voc: Path, work_dir: Path, iterations: int, lr: float = 0.01, **train: object) -> Path:
    """A small DeepLab v3+ R18 run on the VOC-layout sample."""
    cfg = {
        "work_dir": str(work_dir),
        "data": {
            "source": "voc",
            "root": str(voc),
            "scheme": "voc",
            "train_split": "train_aug",
            "val_split": "val",
            "crop_size": 128,
            "batch_size": 4,
            "num_workers": 2,
            "flips": "horizontal",
        },
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16, "dropout": 0.0},
        "optimizer": {"lr": lr},
        "schedule": {"iterations": iterations, "min_lr": 0.0},
        "train": {**GPU_TRAIN, "log_every": 1, **train},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k, v in a.items() if v.is_floating_point() and "running" not in k]
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys)
    return (diff / sum(float((a[k] ** 2).sum()) for k in keys)) ** 0.5


def test_one_gpu_trains_with_amp_channels_last_and_compile(voc: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "g.yaml", voc, tmp_path / "run", 4, compile=True, eval_every=2, checkpoint_every=2)
    assert train_cli.main([str(cfg), "--quiet"]) == 0
    runtime = json.loads((tmp_path / "run" / "runtime.json").read_text())
    native_bf16 = torch.cuda.get_device_capability(0) >= (8, 0)
    assert runtime["device"].startswith("cuda:0") and runtime["compile"] and runtime["channels_last"]
    assert runtime["precision"] == ("bf16" if native_bf16 else "fp16") and runtime["grad_scaler"] != native_bf16
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["iteration"] == 4
    # the compiled wrapper's names (_orig_mod., module.) stay out of the checkpoint: it loads into a plain model
    assert not [k for k in state["model"] if k.startswith(("_orig_mod.", "module."))]
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


RESUME_TOLERANCE = 2e-2
"""Relative distance allowed between a resumed GPU run and the uninterrupted one (nondeterministic CUDA kernels,
bf16). It only means something where the iterations after the kill move the weights clearly further than that."""


def test_killed_gpu_run_resumes_close_to_the_uninterrupted_one(voc: Path, tmp_path: Path) -> None:
    # lr 0.05 and 16 iterations: the weights travel far enough after the kill to tell a resume from a stop
    kw = {"lr": 0.05, "eval_every": 8, "checkpoint_every": 2}
    full = write_config(tmp_path / "full.yaml", voc, tmp_path / "full", 16, **kw)
    assert train_cli.main([str(full), "--quiet"]) == 0
    cfg = write_config(tmp_path / "killed.yaml", voc, tmp_path / "killed", 16, **kw)
    last = tmp_path / "killed" / "last.pt"
    kill_after_checkpoint(cfg, last, ENV)
    killed = load_checkpoint(last)
    assert killed["iteration"] < 16, "finished before the kill; the test proves nothing"
    resumed = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "train.py"), str(cfg)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last} at iteration {killed['iteration']}" in resumed.stderr
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(last)
    assert b["iteration"] == 16
    travelled = relative_distance(a["model"], killed["model"])
    assert travelled > 3 * RESUME_TOLERANCE, f"the weights moved {travelled:.3g} after the kill: too little to tell"
    assert relative_distance(a["model"], b["model"]) < RESUME_TOLERANCE


def test_gpu_inference_equals_cpu_inference_up_to_ties(make_raster: RasterFactory, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    scene = make_raster(rng.integers(0, 255, (3, 700, 900)).astype(np.uint8), "scene.tif")
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", num_classes=4, in_channels=3, backbone="resnet18").eval()
    kw = {"size": 256, "stride": 128, "mean": [127.0] * 3, "std": [60.0] * 3, "amp": "none"}
    predict_scene(model, scene, tmp_path / "cpu.tif", device="cpu", probs_path=tmp_path / "p.tif", **kw)
    with fp32_exact():  # "fp32" on an Ampere+ GPU is TF32 by default: ~0.1-0.2 % of the labels would move
        predict_scene(model, scene, tmp_path / "gpu.tif", device="cuda", batch_size=5, **kw)
    assert next(model.parameters()).device.type == "cpu"  # the caller's module stays where it was
    with (
        rasterio.open(tmp_path / "cpu.tif") as a,
        rasterio.open(tmp_path / "gpu.tif") as b,
        rasterio.open(tmp_path / "p.tif") as p,
    ):
        agreement = near_tie_agreement(a.read(1), b.read(1), p.read())
    # fp32 against fp32, summed in another order: only near-ties (top-two margin <= 2/255) may change, <= 0.1 %
    assert agreement.ok, agreement.describe()


def test_more_ranks_than_gpus_is_one_line(voc: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "r.yaml", voc, tmp_path / "run", 2)
    count = torch.cuda.device_count()
    env = {**ENV, "LOCAL_RANK": str(count), "RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "train.py"), str(cfg), "train.device=auto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"LOCAL_RANK={count} but only {count} GPU(s) are visible" in lines[0]
