"""Dask inference: worker devices and precisions, GPU resources, the one-worker-per-GPU launcher, module copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference import predict_scene
from rs_deeplab.inference.dask_jobs.gpu_workers import main as launcher_main
from rs_deeplab.inference.dask_jobs.gpu_workers import parse_gpus, visible_devices
from rs_deeplab.inference.dask_jobs.runner import WorkerGPU, plan_workers
from rs_deeplab.inference.predicting.scene import moved_copy, needs_copy
from rs_deeplab.inference.writing.writer import FINGERPRINT_TAG
from tests.conftest import DEFAULT_TRANSFORM
from tests.daskkit import processes, start_scheduler

ADDRESS = "tcp://127.0.0.1:8786"
GPU = {"GPU": 1.0}


def small_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.Conv2d(6, 3, 1)
    )


def test_plan_of_cpu_and_gpu_workers() -> None:
    cpu = plan_workers(ADDRESS, {"w1": WorkerGPU(0), "w2": WorkerGPU(0)}, {"w1": {}, "w2": {}}, "auto", "auto")
    assert (cpu.device_types, cpu.precisions, cpu.resources, cpu.workers) == (("cpu",), ("fp32",), None, 2)
    reports = {"a": WorkerGPU(1, (9, 0)), "b": WorkerGPU(1, (7, 5))}
    gpu = plan_workers(ADDRESS, reports, {"a": GPU, "b": GPU}, "auto", "auto")
    assert (gpu.device_types, gpu.precisions, gpu.resources) == (("cuda",), ("bf16", "fp16"), {"GPU": 1})
    assert "one task per GPU" in gpu.description
    assert cpu.fingerprint() == {"device": "cpu", "precision": "fp32", "runner": "dask workers"}
    assert gpu.fingerprint()["device"] == "cuda" != cpu.fingerprint()["device"]
    mixed = plan_workers(ADDRESS, {"a": WorkerGPU(1, (8, 0)), "c": WorkerGPU(0)}, {"a": GPU, "c": {}}, "auto", "auto")
    assert mixed.device_types == ("cpu", "cuda") and mixed.resources is None  # a CPU worker could never run a task
    forced_cpu = plan_workers(ADDRESS, reports, {"a": GPU, "b": GPU}, "cpu", "auto")
    assert forced_cpu.device_types == ("cpu",) and forced_cpu.precisions == ("fp32",)


def test_plan_refuses_what_a_worker_cannot_run() -> None:
    reports = {"gpu-0": WorkerGPU(1, (8, 0)), "cpu-0": WorkerGPU(0)}
    with pytest.raises(InputError, match=r"^Dask worker cpu-0: --device=cuda but no CUDA GPU .* use --device=cpu$"):
        plan_workers(ADDRESS, reports, {}, "cuda", "auto")
    with pytest.raises(InputError, match=r"^Dask worker old: --amp=bf16 but this GPU \(compute capability 7.0\)"):
        plan_workers(ADDRESS, {"old": WorkerGPU(1, (7, 0))}, {}, "auto", "bf16")
    with pytest.raises(InputError, match="has no workers; start `dask worker"):
        plan_workers(ADDRESS, {}, {}, "auto", "auto")


def test_launcher_arguments() -> None:
    assert parse_gpus("0,2") == [0, 2]
    for bad in ("", "a", "0,0", "-1"):
        with pytest.raises(InputError, match="--gpus"):
            parse_gpus(bad)
    assert visible_devices([0, 1], None) == ["0", "1"]
    assert visible_devices([1], "3,5") == ["5"]  # indices as this process sees them, mapped through its own list
    with pytest.raises(InputError, match="makes only 2 GPU"):
        visible_devices([2], "3,5")


def test_launcher_without_gpus_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert launcher_main([ADDRESS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no GPU is visible" in err and "--gpus" in err


def test_module_copy_decision_and_copy() -> None:
    model = small_model()
    tied = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert not needs_copy(model, "cpu") and not needs_copy(model, torch.device("cpu"), channels_last=True)
    assert needs_copy(model, "meta") and needs_copy(model, torch.device("cuda"))
    on_meta = moved_copy(tied, "meta")
    assert isinstance(on_meta, torch.nn.Sequential)
    assert all(p.device.type == "meta" for p in on_meta.parameters())
    assert all(p.device.type == "cpu" for p in tied.parameters())  # the original stays where it was
    assert on_meta[1].weight is on_meta[0].weight  # tied weights stay tied
    assert not needs_copy(on_meta, "meta")
    copied = moved_copy(model, "cpu")
    for a, b in zip(model.state_dict().values(), copied.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # a copy, not a view of the caller's weights


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (2, 300, 90)).astype(np.uint8)
    return write_geotiff(tmp_path / "scene.tif", image, crs="EPSG:32633", transform=DEFAULT_TRANSFORM)


KWARGS = {"size": 64, "stride": 40, "batch_size": 3, "mean": [120.0] * 2, "std": [60.0] * 2}


def snapshot(model: torch.nn.Module) -> list[tuple[str, torch.Tensor, int, torch.device]]:
    return [(k, v.clone(), v.data_ptr(), v.device) for k, v in model.state_dict().items()]


def test_local_run_leaves_the_callers_module_alone(scene: Path, tmp_path: Path) -> None:
    model = small_model().train()
    model[1].eval()  # a mixed mode must come back as it was
    before = snapshot(model)
    predict_scene(model, scene, tmp_path / "out.tif", device="cpu", **KWARGS)  # type: ignore[arg-type]
    assert model.training and not model[1].training and model[0].training
    after = snapshot(model)
    for (k, v, ptr, dev), (_, v2, ptr2, dev2) in zip(before, after, strict=True):
        assert torch.equal(v, v2) and ptr == ptr2 and dev == dev2, k  # BatchNorm statistics not updated either


@pytest.fixture(scope="module")
def gpu_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real scheduler and the launcher's two 'GPU' workers (``--gpus 0,1``; without a GPU they run on the CPU)."""
    from distributed import Client

    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs for --gpus 0,1 (this machine has {torch.cuda.device_count()}) or none (CPU)")

    folder = tmp_path_factory.mktemp("gpu_workers")
    with processes(folder) as (procs, common):
        address = start_scheduler(folder, procs, common)
        cmd = [
            sys.executable,
            "-m",
            "rs_deeplab.inference.dask_jobs.gpu_workers",
            address,
            "--gpus",
            "0,1",
            "--host",
            "127.0.0.1",
            "--local-directory",
            str(folder),
            "--no-dashboard",
        ]
        procs.append(subprocess.Popen(cmd, **common))
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
        yield address


@pytest.mark.slow
def test_launcher_starts_one_single_threaded_gpu_worker_per_gpu(gpu_workers: str) -> None:
    from distributed import Client

    with Client(gpu_workers, timeout=30, set_as_default=False) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        visible = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert len(workers) == 2
    assert all(w["resources"] == {"GPU": 1} and w["nthreads"] == 1 for w in workers.values())
    assert sorted(visible.values()) == ["0", "1"]
    assert sorted(w["name"].rsplit("-", 1)[1] for w in workers.values()) == ["gpu0", "gpu1"]


@pytest.mark.slow
def test_predict_scene_through_gpu_workers_matches_the_local_run(gpu_workers: str, scene: Path, tmp_path: Path) -> None:
    model = small_model().train()
    before = snapshot(model)
    local = predict_scene(model, scene, tmp_path / "local.tif", **KWARGS)  # type: ignore[arg-type]
    dask = predict_scene(model, scene, tmp_path / "dask.tif", scheduler=gpu_workers, **KWARGS)  # type: ignore[arg-type]
    assert "one task per GPU" in dask.runner and "2 workers" in dask.runner and local.runner.startswith("this")
    with rasterio.open(tmp_path / "local.tif") as x, rasterio.open(tmp_path / "dask.tif") as y:
        if torch.cuda.is_available():  # two processes in bf16, cuDNN choosing per process: near-ties fall either way
            assert (x.read() != y.read()).mean() <= 1e-3
        else:  # the CPU's kernels are the same in every process
            np.testing.assert_array_equal(x.read(), y.read())
        local_fp, dask_fp = json.loads(x.tags()[FINGERPRINT_TAG]), json.loads(y.tags()[FINGERPRINT_TAG])
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert (dask_fp["device"], dask_fp["runner"]) == (expected, "dask workers")
    assert local_fp["runner"] == "this process" and local_fp["job"] == dask_fp["job"]
    assert model.training and all(
        torch.equal(v, v2) for (_, v, *_), (_, v2, *_) in zip(before, snapshot(model), strict=True)
    )
    if not torch.cuda.is_available():  # the workers were asked before any work: one line, nothing written
        with pytest.raises(InputError, match=r"^Dask worker .*: --device=cuda but no CUDA GPU .*--device=cpu$"):
            predict_scene(model, scene, tmp_path / "cuda.tif", scheduler=gpu_workers, device="cuda", **KWARGS)  # type: ignore[arg-type]
        assert not list(tmp_path.glob("cuda*"))
