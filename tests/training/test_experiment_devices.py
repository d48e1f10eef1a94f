"""The training engine's GPU path as far as a CPU shows it: compile, DDP evaluation, resume, precision, syncs."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import serialization
from torch.utils.data import DataLoader, Dataset

from pipelines import evaluate as evaluate_cli
from pipelines import train as train_cli
from rs_deeplab.evaluation.metrics import confusion_matrix
from rs_deeplab.inference.runtimes.trained import load_trained_model
from rs_deeplab.training.checkpoint import load_checkpoint, save_checkpoint
from rs_deeplab.training.datasets.sampling import loader_options
from rs_deeplab.training.engine import LossMeter, device_confusion
from rs_deeplab.training.experiment import wrap_model
from tests.badkit import ENV
from tests.trainkit import REPO, make_tiles, torchrun, write_config

TRAIN = str(REPO / "pipelines" / "train.py")
COMPILED = {"name": "deeplabv1", "backbone": "vgg16", "output_stride": 8}
"""What the compile tests train: a plain VGG-16 DeepLab (no BatchNorm) is a smaller graph than a ResNet's to compile
(the compile cost, not what is compiled, is what these tests could do without)."""
SHORT = {"schedule": {"iterations": 2}, "train": {"eval_every": 2, "checkpoint_every": 2, "device": "cpu"}}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiles(tmp_path_factory.mktemp("data"))


def test_device_confusion_equals_the_numpy_counts() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, (2, 31, 17)).astype(np.uint8)
    truth[0, :4] = 255
    pred = rng.integers(0, 6, (2, 31, 17))
    got = device_confusion(torch.from_numpy(pred), torch.from_numpy(truth), 6)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), confusion_matrix(pred, truth, 6))


def test_loss_meter_syncs_only_when_read_and_refuses_nan() -> None:
    meter = LossMeter()
    for value in (1.0, 2.0, 4.5):
        meter.add(torch.tensor(value))
    assert meter.check() == pytest.approx(2.5) and meter.mean() == pytest.approx(2.5)
    meter.add(torch.tensor(3.0))
    assert meter.mean() == pytest.approx(3.0)
    meter.add(torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match="loss is not finite"):
        meter.check()


class _Threads(Dataset[tuple[int, int]]):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[int, int]:
        import cv2

        return cv2.getNumThreads(), torch.get_num_threads()


@pytest.mark.slow
def test_loader_workers_run_one_thread_each() -> None:
    import cv2

    cv2.resize(np.zeros((512, 512), np.float32), (700, 700))  # the trainer's OpenCV pool is up before the workers
    loader = DataLoader(_Threads(), batch_size=None, timeout=120, **loader_options(2, pin_memory=False))
    assert sorted(tuple(int(v) for v in item) for item in loader) == [(1, 1), (1, 1)]


class _Parent(Dataset[int]):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        return os.getppid()


@pytest.mark.slow
def test_loader_workers_fork_from_a_server_that_imported_the_training_stack() -> None:
    """The workers' parent, the fork server, has torch, OpenCV and GDAL loaded before it forks them: a worker does not
    import the training stack again each time a loader starts (several seconds of CPU per worker)."""
    loader = DataLoader(_Parent(), batch_size=None, timeout=120, **loader_options(1, pin_memory=False))
    (server,) = {int(pid) for pid in loader}
    assert server != os.getpid()
    maps = Path(f"/proc/{server}/maps").read_text()
    missing = [name for name in ("libtorch_cpu", "cv2", "libgdal") if name not in maps]
    assert not missing, f"the fork server {server} has not loaded {missing}"


@pytest.mark.slow
def test_compile_wraps_the_model_itself_and_inductor_trains_it_as_eager_does() -> None:
    """``train.compile`` on one process: the compiled wrapper shares the model's parameters (nothing is compiled
    until it is called), so the optimiser and checkpoints can use the model itself; and a training step through
    inductor's generated code (the default backend, C++ on a CPU) gives eager's loss and gradients."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    counters.clear()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    wrapped = wrap_model(model, torch.device("cpu"), distributed=False, compile=True)
    assert wrapped is not model and getattr(wrapped, "_orig_mod", None) is model
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in model.parameters()]
    assert wrap_model(model, torch.device("cpu"), distributed=False, compile=False) is model
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for runner in (model, wrapped):
        model.zero_grad()
        loss = runner(x).square().mean()
        loss.backward()
        grads.append([loss.detach(), *(p.grad.clone() for p in model.parameters() if p.grad is not None)])
    built = counters["inductor"]["fxgraph_cache_miss"] + counters["inductor"]["fxgraph_cache_hit"]
    assert len(grads[1]) == 5 and built >= 2  # inductor built (or found in its cache) the forward and the backward
    for eager, compiled in zip(*grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_ddp_trains_two_ranks_in_step_records_its_precision_and_checkpoints_plain_weights(
    tiles: Path, tmp_path: Path
) -> None:
    """``torch.compile`` around DDP: ranks stay identical; the optimiser and checkpoints use the model itself, never
    the compiled wrapper; and the precision the run picked (``train.amp=auto``: fp32 on the CPU) is recorded in the
    run folder and its checkpoints.

    Without SyncBN: with it on several ranks, compile is skipped with a warning (``compile_decision``). What differs
    on one process is :func:`wrap_model`, tested above with inductor. Here torch's backend override swaps inductor's
    code generation for ``aot_eager``: dynamo, DDP's graph splitting at its buckets and AOT autograd run as in a
    compiled run, without two ranks compiling the same C++ kernels at once (70 s of a 2-core machine's CPU).
    """
    train = {**SHORT["train"], "compile": True, "checkpoint_every": 1, "sync_bn": False}
    cfg = write_config(tmp_path / "cd.yaml", tiles, tmp_path / "run", **{**SHORT, "train": train, "model": COMPILED})
    # two loader workers per rank (fork server, one thread each) and persistent validation workers, as a GPU run has
    cmd = torchrun(TRAIN, str(cfg), "train.amp=auto", "data.num_workers=2")
    env = {**ENV, "TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on cpu, precision fp32, 2 process(es)" in proc.stderr
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["iteration"] == 2 and state["runtime"]["world_size"] == 2 and state["runtime"]["compile"]
    fingerprints = state["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == pytest.approx(fingerprints[1], rel=1e-9)
    assert not [k for k in state["model"] if k.startswith(("_orig_mod.", "module."))]
    model, _ = load_trained_model(tmp_path / "run" / "last.pt", torch.device("cpu"))  # loads into a plain model
    assert sum(p.numel() for p in model.parameters()) > 0
    runtime = json.loads((tmp_path / "run" / "runtime.json").read_text())
    assert runtime["device"] == "cpu" and runtime["precision"] == "fp32" and runtime["grad_scaler"] is False
    assert state["runtime"] == runtime


def test_cuda_without_a_gpu_is_one_line(tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: train.device=cuda is valid here")
    cfg = write_config(tmp_path / "g.yaml", tiles, tmp_path / "run", **SHORT)
    assert train_cli.main([str(cfg), "train.device=cuda"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "train.device=cuda but no CUDA GPU" in lines[0] and "train.device=cpu" in lines[0]
    assert not (tmp_path / "run").exists()
    assert evaluate_cli.main([str(tmp_path / "any.pt"), "--device", "cuda"]) == 2  # the same picker
    assert "--device=cuda but no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_rank_zero_decides_the_resume_for_every_rank(tmp_path: Path) -> None:
    for rank in (0, 1):
        (tmp_path / f"rank{rank}").mkdir()
    save_checkpoint(tmp_path / "rank0" / "last.pt", _fake_state(7))  # rank 1's work_dir holds nothing
    cmd = torchrun(str(REPO / "tests" / "workers" / "resume_worker.py"), str(tmp_path))
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads((tmp_path / f"got{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1] == {"iteration": 7, "weight": [1.0, 2.0]}


def _fake_state(iteration: int) -> dict[str, object]:
    return {
        "model": {"w": torch.tensor([1.0, 2.0])},
        "config": {},
        "class_names": ["a"],
        "band_stats": {},
        "iteration": iteration,
    }


@pytest.fixture()
def gpu_tagged_saves() -> Iterator[dict[str, bool]]:
    """While ``on``, ``torch.save`` tags every storage ``cuda:0``, as a save on a GPU machine does."""
    flag = {"on": False}
    serialization.register_package(0, lambda s: "cuda:0" if flag["on"] else None, lambda s, loc: None)
    yield flag
    flag["on"] = False


def _as_saved_on_gpu(path: Path, flag: dict[str, bool]) -> None:
    state = load_checkpoint(path)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # a GPU run also records CUDA generator states
    flag["on"] = True
    try:
        save_checkpoint(path, state)
    finally:
        flag["on"] = False


@pytest.mark.slow
def test_checkpoint_saved_on_gpu_works_on_a_cpu_machine(
    tiles: Path, tmp_path: Path, gpu_tagged_saves: dict[str, bool]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("the point is a machine without CUDA")
    cfg = write_config(tmp_path / "r.yaml", tiles, tmp_path / "run", **SHORT)
    assert train_cli.main([str(cfg), "--quiet"]) == 0
    for name in ("last.pt", "best.pt"):
        _as_saved_on_gpu(tmp_path / "run" / name, gpu_tagged_saves)
    with pytest.raises(RuntimeError, match="CUDA"):  # the files really are GPU checkpoints
        torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    model, _ = load_trained_model(tmp_path / "run" / "best.pt", torch.device("cpu"))  # inference's loader
    assert next(model.parameters()).device.type == "cpu"
    assert evaluate_cli.main([str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "eval")]) == 0
    assert train_cli.main([str(cfg), "--quiet", "schedule.iterations=4"]) == 0  # resumes on the CPU
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4
