"""Every GPU check in one process, for a machine with a CUDA GPU: ``python bench/gpu_check.py --out FOLDER``.

Usually run by ``bench/device_check.py`` (the one command for a lent GPU: carried wheels, these checks, then the
``gpu``-marked tests). Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` after every row of every check,
so a run stopped half-way leaves what it measured (and names the check it was in):

1. ``training``: images/s of DeepLab v3+ R50 at 512² batch 8 (the engine's own ``train_step``) in fp32, bf16 (or
   fp16) + channels_last, fp16 + GradScaler, and bf16 + compile, each with its peak GPU memory (cuDNN benchmark on,
   as training runs; the caller's setting comes back afterwards);
2. ``fake_ddp``: what one GPU can show about several ranks: a fake process group of world size 2 in this process,
   the SyncBN + DDP model with and without ``torch.compile``, a few bf16 steps: crashes and graph breaks, not
   numbers (the fake group moves no data);
3. ``loader``: the training DataLoader feeding the GPU from image files on disk, against the model's own speed on
   the same batches;
4. ``inference``: windows/s on a generated 8192² scene, the model alone against ``predict_scene`` (target >= 0.9),
   cuDNN benchmark off as ``infer.py`` runs;
5. ``dask``: ``predict_scene`` through one Dask GPU worker against this process: equal up to near-ties
   (``bench/gpukit.py``: >= 99.9 % equal labels, every differing pixel a top-two margin <= 2/255);
6. ``torchrun``: ``torchrun --nproc-per-node=1 pipelines/train.py`` on a VOC-layout sample (NCCL group).

Each check runs under its own time limit (``--limit NAME=SECONDS``), reports its own failure, and the script goes
on. It imports torch, numpy, rasterio and the project (no GeoPackage stack), dask only for the Dask check.
``--smoke`` runs every check tiny and on the CPU (tests do, so the script cannot rot between GPU loans).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpukit import (  # noqa: E402
    count_graph_breaks,
    near_tie_agreement,
    prepend_pythonpath,
    torch_flags,
    unwritable_results,
)
from rs_deeplab.geo.raster import write_geotiff  # noqa: E402
from rs_deeplab.models import build_model  # noqa: E402
from rs_deeplab.runtime.devices import pick_amp, precision_name  # noqa: E402
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
    compile_backend: str
    """``inductor`` on a GPU; ``eager`` in the smoke run (dynamo traces, counts graph breaks, no code generation)."""
    ddp_backbone: str
    ddp_crop: int
    ddp_steps: int
    loader_batches: int
    scene: int
    window: int
    dask_scene: int
    train_iterations: int
    warm_steps: int
    """Untimed training steps before the timed ones (cuDNN tuning, compilation)."""
    train_crop: int
    train_batch: int
    train_workers: int
    """``torchrun``'s run: crop size, batch and loader workers."""
    voc_images: tuple[int, int]
    """``torchrun``'s VOC-layout sample: training and validation images."""
    limits: dict[str, float] = field(default_factory=dict)
    """Seconds each check may take before it is reported as not finished (none: no limit)."""


FULL = Sizes(
    device="cuda",
    backbone="resnet50",
    crop=512,
    batch=8,
    steps=20,
    compile=True,
    compile_backend="inductor",
    ddp_backbone="resnet18",
    ddp_crop=256,
    ddp_steps=3,
    loader_batches=12,
    scene=8192,
    window=512,
    dask_scene=2048,
    train_iterations=10,
    warm_steps=3,
    train_crop=128,
    train_batch=4,
    train_workers=2,
    voc_images=(6, 2),
    limits={"training": 140, "fake_ddp": 90, "loader": 45, "inference": 60, "dask": 60, "torchrun": 60},
)
SMOKE = Sizes(
    device="cpu",
    backbone="resnet18",
    crop=32,
    batch=2,
    steps=1,
    compile=False,
    compile_backend="eager",
    ddp_backbone="resnet18",
    ddp_crop=32,
    ddp_steps=2,
    loader_batches=1,
    scene=192,
    window=64,
    dask_scene=96,
    train_iterations=1,
    warm_steps=1,
    train_crop=32,
    train_batch=2,
    train_workers=1,
    voc_images=(2, 1),
)
"""Every check, tiny and on the CPU: what runs, not how fast (each setting the least that still runs the path)."""

CHECKS = ("training", "fake_ddp", "loader", "inference", "dask", "torchrun")


class CheckTimeoutError(Exception):
    """A check ran past its ``--limit``."""


class Report:
    """The results folder's ``gpu_check.json`` and ``gpu_check.md``, rewritten (atomically) after every line."""

    def __init__(self, folder: Path, header: list[str], meta: dict[str, Any]) -> None:
        self.folder, self.header, self.meta = folder, header, meta
        self.checks: list[dict[str, Any]] = []
        self.running: str | None = None

    def start(self, name: str) -> None:
        self.running = name
        self.checks.append({"name": name, "status": "running", "seconds": None, "error": None, "lines": []})
        self.write()

    def add(self, line: str) -> None:
        """One result line of the running check (printed and written at once)."""
        print(line, flush=True)
        self.checks[-1]["lines"].append(line)
        self.write()

    def finish(self, status: str, seconds: float, error: str | None = None) -> None:
        self.checks[-1].update(status=status, seconds=round(seconds, 1), error=error)
        self.running = None
        self.write()

    def markdown(self) -> str:
        lines = list(self.header)
        for check in self.checks:
            lines += check["lines"]
            if check["status"] == "running":
                lines.append(f"- {check['name']}: **did not finish** (stopped while running)")
            elif check["status"] != "ok":
                lines.append(f"- {check['name']}: **{check['status'].upper()}** ({check['error']})")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        data = {**self.meta, "running": self.running, "checks": self.checks}
        for name, text in (("gpu_check.json", json.dumps(data, indent=1) + "\n"), ("gpu_check.md", self.markdown())):
            tmp = self.folder / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.folder / name)


def env() -> dict[str, str]:
    """Subprocess environment: the repository in front of whatever PYTHONPATH the carried wheels use."""
    return {**prepend_pythonpath(os.environ, REPO), "RS_DEEPLAB_NO_PROGRESS": "1"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_context(model: torch.nn.Module, device: torch.device, amp: str, channels_last: bool) -> StepContext:
    dtype = pick_amp(amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    optimizer = build_optimizer(model, lr=0.01)
    aux = getattr(model, "aux_weight", 0.0)
    cl = channels_last and device.type == "cuda"
    return StepContext(
        optimizer=optimizer,
        lr_schedule=build_lr_schedule(optimizer, iterations=10_000),
        device=device,
        scaler=scaler,
        amp_dtype=dtype,
        channels_last=cl,
        aux_weight=aux,
    )


def random_batch(s: Sizes, crop: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(batch, 3, crop, crop)
    if s.device == "cuda":
        images = images.pin_memory()
    return images, torch.randint(0, 6, (batch, crop, crop), dtype=torch.uint8)


def timed_steps(runner: torch.nn.Module, batches: Sequence[Any], ctx: StepContext, warm: int) -> float:
    """Images/s of ``train_step`` over ``batches`` after ``warm`` warm-up steps (cuDNN tuning, compilation)."""
    for i in range(warm):
        train_step(runner, [batches[i % len(batches)]], ctx)
    sync(ctx.device)
    if ctx.device.type == "cuda":  # the peak of the timed steps, not of cuDNN's autotuning workspaces
        torch.cuda.reset_peak_memory_stats(ctx.device)
    start = time.perf_counter()
    loss = torch.zeros((), device=ctx.device)
    for batch in batches:
        loss += train_step(runner, [batch], ctx)
    sync(ctx.device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError("training loss is not finite")
    return sum(len(b[0]) for b in batches) / seconds


def train_throughput(s: Sizes, amp: str, channels_last: bool, compile: bool) -> dict[str, Any]:
    """Images/s of ``train_step`` on random crops, and the peak GPU memory."""
    device = torch.device(s.device)
    model = build_model("deeplabv3plus", num_classes=6, in_channels=3, backbone=s.backbone, output_stride=16)
    model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if compile else model
    ctx = step_context(model, device, amp, channels_last)
    speed = timed_steps(runner, [random_batch(s, s.crop, s.batch)] * s.steps, ctx, s.warm_steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    scaler = " + GradScaler" if ctx.scaler is not None else ""
    return {"images/s": speed, "peak GiB": peak, "precision": precision_name(ctx.amp_dtype) + scaler}


def check_training(s: Sizes, report: Report) -> None:
    modes = [
        ("fp32", "none", False, False),
        ("amp + channels_last", "auto", True, False),
        ("fp16 + GradScaler + channels_last", "fp16", True, False),
    ]
    if s.compile:
        modes.append(("amp + channels_last + compile", "auto", True, True))
    report.add(f"Training, DeepLab v3+ {s.backbone}, {s.crop}², batch {s.batch}, cuDNN benchmark on:\n")
    report.add("| mode | precision | images/s | peak GPU memory |\n|---|---|---:|---:|")
    base = None
    with torch_flags(cudnn_benchmark=True):  # as training runs; the caller's value comes back
        for name, amp, cl, comp in modes:
            r = train_throughput(s, amp, cl, comp)
            base = base or r["images/s"]
            report.add(
                f"| {name} | {r['precision']} | {r['images/s']:.1f} ({r['images/s'] / base:.2f}×) | "
                f"{r['peak GiB']:.2f} GiB |"
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    report.add("")


def _bucket_unchanged(state, bucket):
    """DDP comm hook for the fake group: each gradient bucket comes back as it is.

    The fake group's all-reduce futures hold no tensor (DDP asserts on that), and it moves no data anyway. No
    annotations: DDP compares them with ``dist.GradBucket`` and rejects the strings ``from __future__`` makes.
    """
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def fake_ddp_steps(s: Sizes, backend: str | None, steps: int = 3) -> dict[str, Any]:
    """A few steps of the SyncBN + DDP model as rank 0 of a fake world of 2 in this process.

    The model is built as a distributed run builds it (``convert_sync_batchnorm``, then ``wrap_model``'s DDP);
    ``torch.compile`` wraps the DDP module as ``wrap_model`` does, with ``backend`` (None: no compile). Returns
    the graph breaks dynamo counted, their reasons, and whether the loss stayed finite (the fake group's
    collectives return made-up data, so that is information, not a verdict).
    """
    import torch._dynamo
    import torch.distributed as dist
    from torch._dynamo.utils import counters
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from rs_deeplab.training.distributed import convert_sync_batchnorm
    from rs_deeplab.training.experiment import wrap_model

    device = torch.device(s.device, 0) if s.device == "cuda" else torch.device(s.device)  # as a rank binds cuda:N
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        torch.manual_seed(0)
        model = build_model("deeplabv3plus", num_classes=6, in_channels=3, backbone=s.ddp_backbone, output_stride=16)
        model = convert_sync_batchnorm(model, device).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        ddp = wrap_model(model, device, distributed=True, compile=False)
        ddp.register_comm_hook(None, _bucket_unchanged)  # type: ignore[operator]
        torch._dynamo.reset()
        counters.clear()
        runner = torch.compile(ddp, backend=backend) if backend else ddp
        ctx = step_context(model, device, "auto", True)
        batch = random_batch(s, s.ddp_crop, max(2, s.batch // 2))
        loss = torch.zeros((), device=device)
        for _ in range(steps):
            loss += train_step(runner, [batch], ctx)  # type: ignore[arg-type]
        sync(device)
        breaks, reasons = count_graph_breaks(counters)
        graphs = int(counters["stats"].get("unique_graphs", 0))
        sync_bn = sum(
            isinstance(m, torch.nn.SyncBatchNorm) or "SyncBatchNorm" in type(m).__name__ for m in model.modules()
        )
        return {
            "breaks": breaks,
            "reasons": reasons,
            "graphs": graphs,
            "finite": bool(torch.isfinite(loss)),
            "sync_bn": sync_bn,
            "precision": precision_name(ctx.amp_dtype),
        }
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()


def check_fake_ddp(s: Sizes, report: Report) -> None:
    report.add(
        f"One GPU as rank 0 of a fake world of 2 (SyncBN + DDP, DeepLab v3+ {s.ddp_backbone}, {s.ddp_crop}², "
        f"{s.ddp_steps} steps; crashes and graph breaks, not numbers):\n"
    )
    report.add("| compile | precision | SyncBN layers | graph breaks | graphs | loss finite | first break reasons |")
    report.add("|---|---|---:|---:|---:|---|---|")
    # eager first: dynamo's graph breaks are known before inductor spends its time (and maybe its limit) compiling
    backends = list(dict.fromkeys([None, "eager", s.compile_backend]))
    crashed = []
    with torch_flags(cudnn_benchmark=True):
        for backend in backends:
            label = f"{backend} backend" if backend else "no"
            try:
                r = fake_ddp_steps(s, backend, s.ddp_steps)
            except Exception as exc:
                crashed.append(f"{label}: {type(exc).__name__}: {first_line(exc)}")
                report.add(f"| {label} | | | | | | **crashed**: {crashed[-1].split(': ', 1)[1].replace('|', '/')} |")
                continue
            reasons = "; ".join(reason[:100] for reason in r["reasons"][:3]).replace("|", "/") or "none"
            report.add(
                f"| {label} | {r['precision']} | {r['sync_bn']} | {r['breaks']} | {r['graphs']} | "
                f"{'yes' if r['finite'] else 'no'} | {reasons} |"
            )
    report.add("")
    if crashed:
        raise RuntimeError("SyncBN + DDP crashed with compile " + "; ".join(crashed))


def check_loader(s: Sizes, report: Report, work: Path) -> None:
    """The training DataLoader feeding the device, against ``train_step`` on the same batches.

    VOC-layout JPEG/PNG files, the training transform and the training loader's worker settings.
    """
    from torch.utils.data import DataLoader

    from rs_deeplab.sample import write_voc
    from rs_deeplab.training.datasets.sampling import IterationBatchSampler, SegmentationDataset, loader_options
    from rs_deeplab.training.datasets.voc import VOCSource
    from rs_deeplab.training.transforms import ChannelStats, TrainTransform

    device = torch.device(s.device)
    source = VOCSource(write_voc(work / "loader_voc", n_train=2 * s.batch, n_val=1), "train_aug")
    transform = TrainTransform(crop_size=s.crop, stats=ChannelStats((117.0,) * 3, (60.0,) * 3), flips="horizontal")
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 1
    warm = 2
    sampler = IterationBatchSampler(len(source), batch_size=s.batch, iterations=warm + s.loader_batches, seed=0)
    loader = DataLoader(
        SegmentationDataset(source, transform),
        batch_sampler=sampler,
        **loader_options(workers, pin_memory=device.type == "cuda"),
    )
    batches = []
    it = iter(loader)
    for _ in range(warm):  # workers start
        next(it)
    start = time.perf_counter()
    for images, masks in it:
        batches.append((images.to(device, non_blocking=True), masks.to(device, non_blocking=True)))
    sync(device)
    fed = len(batches) * s.batch / (time.perf_counter() - start)
    model = build_model(
        "deeplabv3plus", num_classes=len(source.class_names), in_channels=3, backbone=s.backbone, output_stride=16
    ).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    with torch_flags(cudnn_benchmark=True):
        speed = timed_steps(model, batches, step_context(model, device, "auto", True), s.warm_steps)
    verdict = "keeps up" if fed >= speed else "**the loader is the bottleneck**"
    report.add(
        f"- DataLoader from {len(source)} VOC-layout JPEG/PNG files, {workers} workers, {s.crop}² crops, "
        f"batch {s.batch}: {fed:.0f} images/s delivered to {s.device}; the model trains {speed:.0f} images/s "
        f"on the same batches: loader/model {fed / speed:.2f}× ({verdict})"
    )


def check_torchrun(s: Sizes, report: Report, work: Path) -> None:
    from rs_deeplab.sample import write_voc

    voc = write_voc(work / "voc", n_train=s.voc_images[0], n_val=s.voc_images[1])
    cfg = work / "voc.yaml"
    cfg.write_text(
        json.dumps(
            {
                "work_dir": str(work / "run"),
                "data": {
                    "source": "voc",
                    "root": str(voc),
                    "scheme": "voc",
                    "train_split": "train_aug",
                    "val_split": "val",
                    "crop_size": s.train_crop,
                    "batch_size": s.train_batch,
                    "num_workers": s.train_workers,
                    "flips": "horizontal",
                },
                "model": {"name": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16},
                "schedule": {"iterations": s.train_iterations, "min_lr": 0.0},
                "train": {
                    "device": s.device,
                    "eval_every": s.train_iterations,
                    "checkpoint_every": s.train_iterations,
                    "log_every": 1,
                },
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=1",
        str(REPO / "pipelines" / "train.py"),
        str(cfg),
        "--quiet",
    ]
    start = time.perf_counter()
    code, stderr = run_group(cmd, work / "torchrun.log")
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"torchrun exited {code}: {stderr[-1500:]}")
    runtime = json.loads((work / "run" / "runtime.json").read_text())
    backend = "NCCL" if s.device == "cuda" else "gloo"
    report.add(
        f"- torchrun, 1 process ({backend} group): {s.train_iterations} iterations in {seconds:.0f} s "
        f"(start-up included) on {runtime['device']}, precision {runtime['precision']}: OK"
    )


def run_group(cmd: list[str], log: Path) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; whatever stops this process (a limit, SIGTERM) ends the group too."""
    with log.open("w+") as fh:
        proc = subprocess.Popen(cmd, env=env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        fh.seek(0)
        return code, fh.read()


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
    from rs_deeplab.inference.predicting.predictor import Predictor

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


def check_inference(s: Sizes, report: Report, work: Path) -> None:
    from rs_deeplab.inference.predicting.scene import predict_scene

    scene = make_scene(work / "scene.tif", s.scene, 1)
    model = inference_model(s)
    kw = {"size": s.window, "stride": s.window // 2, "batch_size": 16, "mean": [127.0] * 3, "std": [60.0] * 3}
    with torch_flags(cudnn_benchmark=False):  # infer.py leaves cuDNN's benchmark off
        predict_scene(
            model,
            make_scene(work / "warm.tif", s.window * 2, 2),
            work / "warm_out.tif",
            device=s.device,
            amp="auto",
            **kw,
        )
        result = predict_scene(model, scene, work / "labels.tif", device=s.device, amp="auto", **kw)
        pipeline = result.windows / result.seconds
        alone = model_only(model, s, result.windows, kw["batch_size"])
    report.add(
        f"- inference, {s.scene}² scene, {result.windows} windows of {s.window}² every {s.window // 2}, "
        f"batch 16, cuDNN benchmark off (as infer.py): model alone {alone:.0f} windows/s, predict_scene "
        f"{pipeline:.0f} windows/s: **{pipeline / alone:.2f}× model-only** (target ≥ 0.9)"
    )


@contextlib.contextmanager
def gpu_worker_cluster(work: Path, gpu: str) -> Iterator[str]:
    """A ``dask scheduler`` and one ``gpu_workers`` worker on loopback; yields the scheduler address."""
    from distributed import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    log = (work / "dask.log").open("w")
    commands = [
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
        [
            sys.executable,
            "-m",
            "rs_deeplab.inference.dask_jobs.gpu_workers",
            address,
            "--gpus",
            gpu,
            "--host",
            "127.0.0.1",
            "--no-dashboard",
        ],
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd in commands:
            procs.append(subprocess.Popen(cmd, env=env(), stdout=log, stderr=log, start_new_session=True))
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def check_dask(s: Sizes, report: Report, work: Path) -> None:
    import rasterio

    from rs_deeplab.inference.predicting.scene import predict_scene

    scene = make_scene(work / "dask_scene.tif", s.dask_scene, 3)
    model = inference_model(s)
    kw = {"size": s.window, "stride": s.window // 2, "batch_size": 8, "mean": [127.0] * 3, "std": [60.0] * 3}
    with torch_flags(cudnn_benchmark=False):
        local = predict_scene(
            model, scene, work / "local.tif", device=s.device, amp="auto", probs_path=work / "local_probs.tif", **kw
        )
        with gpu_worker_cluster(work, "0") as address:
            remote = predict_scene(
                model, scene, work / "dask.tif", device=s.device, amp="auto", scheduler=address, **kw
            )
    with (
        rasterio.open(work / "local.tif") as a,
        rasterio.open(work / "dask.tif") as b,
        rasterio.open(work / "local_probs.tif") as p,
    ):
        agreement = near_tie_agreement(a.read(1), b.read(1), p.read())
    report.add(
        f"- Dask, one GPU worker ({remote.runner}): {s.dask_scene}² scene in {remote.seconds:.1f} s "
        f"(local {local.seconds:.1f} s); label raster against this process: {agreement.describe()}"
    )
    if not agreement.ok:
        raise RuntimeError(f"the Dask raster differs from the local one beyond near-ties: {agreement.describe()}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


@contextlib.contextmanager
def time_limit(seconds: float | None, name: str) -> Iterator[None]:
    """Raise :class:`CheckTimeoutError` in this (main) thread after ``seconds`` (None: no limit)."""
    if not seconds:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CheckTimeoutError(f"did not finish within its {seconds:g} s limit (--limit {name}=SECONDS)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_check(name: str, fn: Callable[[], None], report: Report, limit: float | None) -> bool:
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    report.start(name)
    try:
        with time_limit(limit, name):
            fn()
    except CheckTimeoutError as exc:
        report.finish("did not finish", time.perf_counter() - start, str(exc))
        return False
    except Exception as exc:
        traceback.print_exc()
        report.finish("failed", time.perf_counter() - start, f"{type(exc).__name__}: {first_line(exc)}")
        return False
    report.finish("ok", time.perf_counter() - start)
    print(f"({time.perf_counter() - start:.0f} s)", flush=True)
    return True


def parse_limits(items: Sequence[str]) -> dict[str, float]:
    """``["dask=30", "training=0"]`` → ``{"dask": 30.0, "training": 0.0}`` (0: no limit)."""
    limits = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in CHECKS or seconds < 0:
            raise ValueError(f"--limit {item!r}: expected NAME=SECONDS with NAME one of {', '.join(CHECKS)}")
        limits[name] = seconds
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json/.md (written as it goes)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script itself)")
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks (default: all)")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="a check's time limit (repeatable; 0: none)",
    )
    args = parser.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    try:
        limits = {**s.limits, **parse_limits(args.limit)}
        unknown = [c for c in only if c not in CHECKS]
        if unknown or not only:
            raise ValueError(f"--only {args.only!r}: unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = unwritable_results(args.out)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if s.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch; run on a GPU machine, or --smoke on the CPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if s.device == "cuda" else "CPU (--smoke)"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/gpu_check.py" + (" --smoke" if args.smoke else "")
    header = [
        f"## GPU check: {gpu}, {stamp}\n",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{os.cpu_count()} CPU cores; `{command}` (via bench/device_check.py)\n",
    ]
    report = Report(args.out, header, {"gpu": gpu, "date": stamp, "torch": torch.__version__, "smoke": args.smoke})
    # a SIGTERM (device_check's step timeout) unwinds like an exception: clusters and child groups are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        table: dict[str, Callable[[], None]] = {
            "training": lambda: check_training(s, report),
            "fake_ddp": lambda: check_fake_ddp(s, report),
            "loader": lambda: check_loader(s, report, work),
            "inference": lambda: check_inference(s, report, work),
            "dask": lambda: check_dask(s, report, work),
            "torchrun": lambda: check_torchrun(s, report, work),
        }
        results = [run_check(name, table[name], report, limits.get(name)) for name in CHECKS if name in only]
    print(report.markdown())
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
