"""Every GPU check in one command, for a machine with a CUDA GPU: ``python bench/gpu_check.py``.

Prints, and appends to ``bench/RESULTS.md`` with the GPU's name and the date:

1. training images/s of DeepLab v3+ R50 at 512² batch 8 (the engine's own ``train_step``): fp32, bf16 (or fp16)
   + channels_last, and the same + ``torch.compile``, each with its peak GPU memory;
2. ``torchrun --nproc-per-node=1 pipelines/train.py`` on a VOC-layout sample (NCCL process group, GPU run);
3. inference windows/s on a generated 8192² scene: the model alone against ``predict_scene`` (target >= 0.9);
4. ``predict_scene`` through one Dask GPU worker (``rs_deeplab.inference.gpu_workers``): the same label raster as
   the local run;
5. the ``gpu``-marked tests (``pytest -m gpu``), where pytest is installed.

Each check reports its own failure and the script goes on. It imports torch, numpy, rasterio and the project
(no GeoPackage stack), and dask only for check 4, so it runs on a bare GPU box with a few carried wheels.
``--smoke`` runs every check tiny and on the CPU (a test does, so the script cannot rot without CI noticing).

On a bare GPU box without the project's I/O packages: ``bash bench/gpu_wheels.sh`` here fetches them as wheels
into ``.whl/`` (~44 MiB, this venv's versions); there, install them with ``python3 -m pip install --no-index
--no-deps --target /tmp/site .whl/*.whl``, set ``PYTHONPATH=/tmp/site`` and run this script.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rs_deeplab.devices import pick_amp, precision_name  # noqa: E402
from rs_deeplab.models import build_model  # noqa: E402
from rs_deeplab.raster import write_geotiff  # noqa: E402
from rs_deeplab.training.engine import StepContext, build_lr_schedule, build_optimizer, train_step  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: the real sizes on a GPU, tiny ones for ``--smoke`` on the CPU."""

    device: str
    backbone: str
    crop: int
    batch: int
    steps: int
    compile: bool
    scene: int
    window: int
    dask_scene: int
    train_iterations: int


FULL = Sizes("cuda", "resnet50", 512, 8, 30, True, 8192, 512, 2048, 40)
SMOKE = Sizes("cpu", "resnet18", 64, 2, 2, False, 384, 128, 256, 2)


def env() -> dict[str, str]:
    """Subprocess environment: the repository and whatever PYTHONPATH carried wheels use."""
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "RS_DEEPLAB_NO_PROGRESS": "1"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(s: Sizes, amp: str, channels_last: bool, compile: bool) -> dict[str, float]:
    """Images/s of ``train_step`` on random 512² crops, and the peak GPU memory."""
    device = torch.device(s.device)
    model = build_model("deeplabv3plus", num_classes=6, in_channels=3, backbone=s.backbone, output_stride=16)
    model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if compile else model
    optimizer = build_optimizer(model, lr=0.01)
    dtype = pick_amp(amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    lr_schedule = build_lr_schedule(optimizer, iterations=10_000)
    aux = getattr(model, "aux_weight", 0.0)
    ctx = StepContext(
        optimizer, lr_schedule, device, scaler, dtype, channels_last and device.type == "cuda", aux_weight=aux
    )
    images = torch.randn(s.batch, 3, s.crop, s.crop).pin_memory() if device.type == "cuda" else None
    batch = (images if images is not None else torch.randn(s.batch, 3, s.crop, s.crop),
             torch.randint(0, 6, (s.batch, s.crop, s.crop), dtype=torch.uint8))  # fmt: skip
    for _ in range(3):  # warm-up: cuDNN autotuning, compilation
        train_step(runner, [batch], ctx)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss = torch.zeros((), device=device)
    for _ in range(s.steps):
        loss += train_step(runner, [batch], ctx)
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    assert torch.isfinite(loss), "training loss is not finite"
    return {"images/s": s.batch * s.steps / seconds, "peak GiB": peak, "precision": precision_name(dtype)}


def check_training(s: Sizes, out: list[str]) -> None:
    torch.backends.cudnn.benchmark = True
    modes = [("fp32", "none", False, False), ("amp + channels_last", "auto", True, False)]
    if s.compile:
        modes.append(("amp + channels_last + compile", "auto", True, True))
    out += ["| mode | precision | images/s | peak GPU memory |", "|---|---|---:|---:|"]
    base = None
    for name, amp, cl, comp in modes:
        r = train_throughput(s, amp, cl, comp)
        base = base or r["images/s"]
        out.append(f"| {name} | {r['precision']} | {r['images/s']:.1f} ({r['images/s'] / base:.2f}×) | "
                   f"{r['peak GiB']:.2f} GiB |")  # fmt: skip
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def check_torchrun(s: Sizes, out: list[str], work: Path) -> None:
    from rs_deeplab.sample import write_voc

    voc = write_voc(work / "voc", n_train=6, n_val=2)
    cfg = work / "voc.yaml"
    cfg.write_text(json.dumps({
        "work_dir": str(work / "run"),
        "data": {"source": "voc", "root": str(voc), "scheme": "voc", "train_split": "train_aug", "val_split": "val",
                 "crop_size": 128, "batch_size": 4, "num_workers": 2, "flips": "horizontal"},
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16},
        "schedule": {"iterations": s.train_iterations, "min_lr": 0.0},
        "train": {"device": s.device, "eval_every": s.train_iterations, "checkpoint_every": s.train_iterations,
                  "log_every": 1},
    }))  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
           str(REPO / "pipelines" / "train.py"), str(cfg), "--quiet"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr[-1500:]}")
    runtime = json.loads((work / "run" / "runtime.json").read_text())
    backend = "NCCL" if s.device == "cuda" else "gloo"
    out.append(f"- torchrun, 1 process ({backend} group): {s.train_iterations} iterations in {seconds:.0f} s "
               f"(start-up included) on {runtime['device']}, precision {runtime['precision']}: OK")  # fmt: skip


def make_scene(path: Path, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 255, (3, 256, 256), dtype=np.uint8)  # tiled noise: generating 8192² stays fast
    reps = -(-size // 256)
    data = np.tile(block, (1, reps, reps))[:, :size, :size]
    return write_geotiff(path, data, crs="EPSG:32633", transform=Affine(0.1, 0, 500_000, 0, -0.1, 5_000_000))


def inference_model(s: Sizes) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("deeplabv3plus", num_classes=6, in_channels=3, backbone=s.backbone, output_stride=16).eval()


def model_only(model: torch.nn.Module, s: Sizes, windows: int, batch: int) -> float:
    """Windows/s of the model alone (device-resident input, softmax, no I/O) at ``predict_scene``'s settings."""
    from rs_deeplab.inference.predictor import Predictor

    device = torch.device(s.device)
    predictor = Predictor(model, device, amp="auto")
    x = torch.randn(batch, 3, s.window, s.window, device=device)
    predictor(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(-(-windows // batch)):
        predictor(x)
    sync(device)
    return windows / (time.perf_counter() - start)


def check_inference(s: Sizes, out: list[str], work: Path) -> None:
    from rs_deeplab.inference.scene import predict_scene

    scene = make_scene(work / "scene.tif", s.scene, 1)
    model = inference_model(s)
    kw = {"size": s.window, "stride": s.window // 2, "batch_size": 16, "mean": [127.0] * 3, "std": [60.0] * 3}
    predict_scene(model, make_scene(work / "warm.tif", s.window * 2, 2), work / "warm_out.tif", device=s.device,
                  amp="auto", **kw)  # fmt: skip
    result = predict_scene(model, scene, work / "labels.tif", device=s.device, amp="auto", **kw)
    pipeline = result.windows / result.seconds
    alone = model_only(model, s, result.windows, kw["batch_size"])
    out.append(f"- inference, {s.scene}² scene, {result.windows} windows of {s.window}² every {s.window // 2}, "
               f"batch 16: model alone {alone:.0f} windows/s, predict_scene {pipeline:.0f} windows/s: "
               f"**{pipeline / alone:.2f}× model-only** (target ≥ 0.9)")  # fmt: skip


@contextlib.contextmanager
def gpu_worker_cluster(work: Path, gpu: str) -> Iterator[str]:
    """A ``dask scheduler`` and one ``gpu_workers`` worker on loopback; yields the scheduler address."""
    from distributed import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    log = (work / "dask.log").open("w")
    common = {"env": env(), "stdout": log, "stderr": log, "start_new_session": True}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            **common,
        )
    ]  # type: ignore[call-overload]
    try:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rs_deeplab.inference.gpu_workers",
                    address,
                    "--gpus",
                    gpu,
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                ],
                **common,
            )
        )  # type: ignore[call-overload]
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=30)
        log.close()


def check_dask(s: Sizes, out: list[str], work: Path) -> None:
    import rasterio

    from rs_deeplab.inference.scene import predict_scene

    scene = make_scene(work / "dask_scene.tif", s.dask_scene, 3)
    model = inference_model(s)
    kw = {"size": s.window, "stride": s.window // 2, "batch_size": 8, "mean": [127.0] * 3, "std": [60.0] * 3}
    local = predict_scene(model, scene, work / "local.tif", device=s.device, amp="auto", **kw)
    with gpu_worker_cluster(work, "0") as address:
        remote = predict_scene(model, scene, work / "dask.tif", device=s.device, amp="auto", scheduler=address, **kw)
    with rasterio.open(work / "local.tif") as a, rasterio.open(work / "dask.tif") as b:
        differ = int((a.read(1) != b.read(1)).sum())
    verdict = "identical" if differ == 0 else f"**{differ} pixels differ**"
    out.append(f"- Dask, one GPU worker ({remote.runner}): {s.dask_scene}² scene in {remote.seconds:.1f} s "
               f"(local {local.seconds:.1f} s); label raster {verdict}")  # fmt: skip
    if differ:
        raise RuntimeError(f"the Dask raster differs from the local one in {differ} pixels")


def check_gpu_tests(out: list[str]) -> None:
    try:
        import pytest  # noqa: F401
    except ImportError:
        out.append("- gpu-marked tests: not run (pytest is not installed here)")
        return
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_gpu.py")], env=env(), capture_output=True, text=True,
                          timeout=420, cwd=REPO)  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    out.append(f"- gpu-marked tests (tests/test_gpu.py): {last}")
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:])


def run_check(name: str, fn: Callable[[], None], out: list[str]) -> bool:
    start, first = time.perf_counter(), len(out)
    print(f"== {name}", flush=True)
    try:
        fn()
        ok = True
    except Exception as exc:
        traceback.print_exc()
        out.append(f"- {name}: **FAILED** ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})")
        ok = False
    print("\n".join(out[first:]), f"({time.perf_counter() - start:.0f} s)", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script itself)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md", help="file to append to")
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu-marked tests")
    args = parser.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    if s.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch; run on a GPU machine, or --smoke on the CPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if s.device == "cuda" else "CPU (--smoke)"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"\n## GPU check: {gpu}, {stamp}\n", f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
           f"{os.cpu_count()} CPU cores; `python bench/gpu_check.py{' --smoke' if args.smoke else ''}`\n"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        checks: list[tuple[str, Callable[[], None]]] = [
            ("training throughput (DeepLab v3+ R50, 512², batch 8)", lambda: check_training(s, out)),
            ("torchrun, one process", lambda: check_torchrun(s, out, work)),
            ("inference throughput", lambda: check_inference(s, out, work)),
            ("Dask GPU worker", lambda: check_dask(s, out, work)),
        ]
        if not args.no_tests and not args.smoke:
            checks.append(("gpu-marked tests", lambda: check_gpu_tests(out)))
        results = [run_check(name, fn, out) for name, fn in checks]
    text = "\n".join(out) + "\n"
    print(text)
    with args.results.open("a") as fh:
        fh.write(text)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
