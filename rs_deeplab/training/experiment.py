"""Turn a validated :class:`ExperimentConfig` into a training run, and the training loop itself.

Read :func:`train_experiment` top to bottom: :func:`prepare_run` builds data, model, optimiser and run folder and
resumes from ``last.pt`` (a :class:`PreparedRun` and a :class:`TrainState`); :func:`fit` is the loop (step, log,
evaluate, keep ``best.pt``, save ``last.pt``), called once, or by a time budget (:mod:`rs_deeplab.training.budget`)
for its probe and its plan; :func:`finish_run` writes the summary files. The step and the evaluation themselves
are :mod:`rs_deeplab.training.engine`'s.

This is the one library module that reads config objects (``pipelines/train.py`` and ``pipelines/evaluate.py``
call it); everything it calls takes plain arguments.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from rs_deeplab.cli.console import held_logs
from rs_deeplab.cli.durations import parse_duration
from rs_deeplab.cli.errors import CheckpointError, InputError
from rs_deeplab.cli.locks import output_lock
from rs_deeplab.config.schema import DataConfig, ExperimentConfig, config_to_dict, dump_config
from rs_deeplab.evaluation.metrics import collapse_warning, markdown_table, scores
from rs_deeplab.geo.gsd import rasters_gsd
from rs_deeplab.geo.raster import atomic_output
from rs_deeplab.labels.classes import class_colours
from rs_deeplab.models import MODELS, build_model, resolve_weights
from rs_deeplab.runtime.devices import describe, pick_amp, pick_device, precision_name
from rs_deeplab.training import autoconfig
from rs_deeplab.training.averaging import TRAIN_WEIGHTS_KEY, UPDATES_KEY, WeightAverage
from rs_deeplab.training.budget import BudgetPlan, BudgetRun
from rs_deeplab.training.checkpoint import (
    check_checkpoint_space,
    checkpoint_bytes,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rs_deeplab.training.datasets import CityscapesSource, SegmentationSource, VOCSource
from rs_deeplab.training.datasets.sampling import (
    IterationBatchSampler,
    SegmentationDataset,
    balanced_weights,
    loader_options,
    pad_collate,
)
from rs_deeplab.training.datasets.tiles import WEIGHTINGS, TileIndexSource, auto_class_weights
from rs_deeplab.training.distributed import (
    DistEnv,
    broadcast_from_main,
    check_in_sync,
    convert_sync_batchnorm,
    env_from_torchrun,
    init_distributed,
    rank_fingerprints,
    shutdown_distributed,
)
from rs_deeplab.training.engine import (
    LR_SCHEDULE_KEY,
    Cadence,
    LossMeter,
    StepContext,
    build_lr_schedule,
    build_optimizer,
    train_step,
)
from rs_deeplab.training.engine import evaluate as evaluate_model
from rs_deeplab.training.losses import build_loss
from rs_deeplab.training.preflight import (
    check_bands,
    check_labelled,
    check_output_dir,
    check_scheme,
    removed_on_failure,
)
from rs_deeplab.training.run_page import RunPage
from rs_deeplab.training.runlog import RunLog, plot_confusion, plot_curves
from rs_deeplab.training.transforms import ChannelStats, EvalTransform, TrainTransform, compute_band_stats

log = logging.getLogger("rs_deeplab.train")
ARCH_KEYS = ("name", "backbone", "output_stride", "head")


def build_source(data: DataConfig, split: str) -> SegmentationSource:
    """The reader of ``split`` for the configured data source."""
    if data.source == "voc":
        return VOCSource(data.root, split)
    if data.source == "cityscapes":
        return CityscapesSource(data.root, split)
    return TileIndexSource(data.root, split, data.bands)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialisation is then identical on every rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainResult:
    """Where a run's outputs went and how it scored."""

    run_dir: Path
    last: Path
    best: Path | None
    best_miou: float
    iterations: int


def check_resume(state: dict[str, Any], cfg: ExperimentConfig, num_classes: int, in_channels: int, path: Path) -> None:
    """Refuse to resume from a checkpoint of another architecture, class count or band count."""
    old = state["config"]["model"]
    new = config_to_dict(cfg)["model"]
    diffs = [f"model.{k} {old.get(k)!r} → {new.get(k)!r}" for k in ARCH_KEYS if old.get(k) != new.get(k)]
    if len(state["class_names"]) != num_classes:
        diffs.append(f"{len(state['class_names'])} classes → {num_classes}")
    if len(state["band_stats"]["mean"]) != in_channels:
        diffs.append(f"{len(state['band_stats']['mean'])} bands → {in_channels}")
    if diffs:
        raise CheckpointError(
            f"{path}: checkpoint is of another architecture ({'; '.join(diffs)}); "
            "use another work_dir or resume=false to start afresh"
        )


def _loaders(
    cfg: ExperimentConfig,
    env: DistEnv,
    train: SegmentationSource,
    val: SegmentationSource | None,
    stats: ChannelStats,
    start: int,
    device: torch.device,
    budgeted: bool = False,
) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
    """The training loader from iteration ``start`` on and this rank's share of the validation split (None: none)."""
    train_loader = _train_loader(cfg, env, train, stats, start, device, budgeted)
    if val is None:
        return train_loader, None
    common = loader_options(cfg.data.num_workers, pin_memory=device.type == "cuda")
    shard = Subset(SegmentationDataset(val, EvalTransform(stats)), range(env.rank, len(val), env.world_size))
    # validation runs every eval_every iterations: keep its workers instead of starting them again each time
    val_common = {**common, "persistent_workers": True} if cfg.data.num_workers and len(shard) else common
    val_loader = DataLoader(shard, batch_size=cfg.data.batch_size, collate_fn=pad_collate, **val_common)
    return train_loader, val_loader


def _train_loader(
    cfg: ExperimentConfig,
    env: DistEnv,
    train: SegmentationSource,
    stats: ChannelStats,
    start: int,
    device: torch.device,
    budgeted: bool,
) -> DataLoader[Any]:
    """Training batches from iteration ``start`` on (each sample's augmentation is seeded by its position)."""
    data = cfg.data
    capped = not budgeted or "iterations" in cfg.schedule.model_fields_set  # a budget plans the count as it goes
    sampler = IterationBatchSampler(
        len(train),
        batch_size=data.batch_size,
        iterations=cfg.schedule.iterations if capped else 1 << 40,
        seed=cfg.seed,
        rank=env.rank,
        world_size=env.world_size,
        grad_accum=cfg.train.grad_accum,
        start_iteration=start,
        weights=balanced_weights(split_class_counts(train, "data.sampling: balanced"))
        if data.sampling == "balanced"
        else None,
    )
    transform = TrainTransform(
        crop_size=data.crop_size,
        stats=stats,
        scale_range=data.scale_range,
        flips=data.flips,
        max_class_ratio=data.max_class_ratio,
        photometric=data.photometric,
    )
    common = loader_options(data.num_workers, pin_memory=device.type == "cuda")
    return DataLoader(
        SegmentationDataset(train, transform), batch_sampler=sampler, generator=torch.Generator(), **common
    )


def split_class_counts(source: SegmentationSource, option: str) -> np.ndarray:
    """``(crops, classes)`` pixel counts of a tiles split, or one line saying ``option`` needs a tile index."""
    counts = getattr(source, "class_counts", None)
    if counts is None:
        raise InputError(
            f"{option} reads the per-class pixel counts of a tile index (data.source: tiles); "
            f"{type(source).__name__} has none: give explicit weights or use the default"
        )
    return np.asarray(counts)


def class_weights(cfg: ExperimentConfig, source: SegmentationSource, device: torch.device) -> torch.Tensor | None:
    """``train.class_weights`` as a tensor: None, the explicit list, or ``auto``/``balanced`` from the training
    split's counts (``1/sqrt(frequency)`` or ``1/frequency``).
    """  # noqa: D205
    chosen = cfg.train.class_weights
    n = len(source.class_names)
    if chosen is None:
        return None
    if isinstance(chosen, str):  # a rule of WEIGHTINGS (the config allows no other string)
        counts = split_class_counts(source, f"train.class_weights: {chosen}").sum(0)
        values = auto_class_weights(counts, **WEIGHTINGS[chosen])
        log.info(
            f"class weights ({chosen}): %s",
            ", ".join(f"{c} {w:.3g}" for c, w in zip(source.class_names, values, strict=True)),
        )
        return torch.tensor(values, dtype=torch.float32, device=device)
    if len(chosen) != n:
        raise InputError(f"train.class_weights has {len(chosen)} values but the data has {n} classes")
    return torch.tensor(chosen, dtype=torch.float32, device=device)


def warn_if_collapsed(iteration: int, cm: np.ndarray, class_names: Sequence[str]) -> str | None:
    """Log one warning line when an evaluation shows a collapsed model (see ``collapse_warning``)."""
    warning = collapse_warning(cm, class_names)
    if warning is not None:
        log.warning("iteration %d: %s", iteration, warning)
    return warning


def resume_state(last: Path, resume: bool, env: DistEnv) -> dict[str, Any] | None:
    """The checkpoint state to resume from, decided once by rank 0 and broadcast to every rank.

    Ranks whose ``work_dir`` is not shared (node-local disks) see no ``last.pt``, or an older one; each deciding
    for itself would start the ranks at different iterations, and their collectives would wait forever.
    """
    state = None
    if env.is_main and resume and last.exists():
        try:
            state = load_checkpoint(last)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; to start afresh pass resume=false, or delete it") from None
    return broadcast_from_main(state) if env.distributed else state


def _build_model(
    cfg: ExperimentConfig, num_classes: int, in_channels: int, device: torch.device, env: DistEnv
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model (for the optimiser and checkpoints) and what each training step calls (DDP/compile wrapped)."""
    m = cfg.model
    model: torch.nn.Module = build_model(
        m.name,
        num_classes=num_classes,
        in_channels=in_channels,
        backbone=m.backbone,
        output_stride=m.output_stride,
        head=m.head,
        weights=m.weights,
        aux_weight=m.aux_weight,
        msc=m.msc,
    )
    if m.dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout | torch.nn.Dropout2d):
                module.p = m.dropout
    if env.distributed and cfg.train.sync_bn:
        model = convert_sync_batchnorm(model, device)
    model.to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    compiled, why = compile_decision(
        cfg.train.compile, sync_bn=bool(env.distributed and cfg.train.sync_bn), world_size=env.world_size
    )
    if why is not None and env.is_main:
        log.warning("%s", why)
    return model, wrap_model(model, device, distributed=env.distributed, compile=compiled)


def compile_decision(compile: bool, *, sync_bn: bool, world_size: int) -> tuple[bool, str | None]:
    """Whether ``train.compile`` compiles this run, and the warning to log (once, rank 0) where it does not; pure.

    SyncBN's forward is a collective torch.compile cannot trace: with more than one rank it graph-breaks at every
    SyncBN layer (and fails outright on some torch versions). A DeepLab has a SyncBN after nearly every
    convolution, so the pieces left between the breaks are single layers that compiling would not speed up: the
    run trains without compile and says so.
    """
    if not compile or not (sync_bn and world_size > 1):
        return compile, None
    return False, (
        f"train.compile is skipped: with SyncBN on {world_size} ranks torch.compile breaks its graph at every SyncBN "
        "layer (and fails on some torch versions); set train.sync_bn=false to compile, or train.compile=false to "
        "silence this"
    )


def wrap_model(model: torch.nn.Module, device: torch.device, *, distributed: bool, compile: bool) -> torch.nn.Module:
    """What the training loop calls: ``model`` in DDP when distributed, then ``torch.compile`` when asked.

    The optimiser, checkpoints and evaluation keep using ``model`` itself (its parameters are the wrappers'),
    so state-dict keys carry no ``module.``/``_orig_mod.`` prefixes and a checkpoint loads into a plain model.
    """
    wrapped: torch.nn.Module = model
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def train_experiment(cfg: ExperimentConfig) -> TrainResult:
    """Train ``cfg`` on this process (or as one rank of a torchrun job) and write the run folder.

    Raises:
        InputError: Missing data, empty split, bad labels or bands.
        OutputBusyError: Another run is writing the run folder (its lock, :func:`rs_deeplab.cli.locks.output_lock`,
            taken by rank 0).
        CheckpointError: Resuming from a checkpoint of another architecture.
    """
    env = env_from_torchrun()
    device = pick_device(cfg.train.device, option="train.device")  # cuda:LOCAL_RANK, checked against the GPUs
    amp = pick_amp(cfg.train.amp, device, option="train.amp")
    init_distributed(env, device)  # binds the GPU first, then joins the group on it
    cudnn_benchmark = torch.backends.cudnn.benchmark  # a GPU run turns it on; the caller gets its own value back
    try:
        with held_logs() as checked:  # what the checks log prints once they all passed: an error is its one line
            _resolve_weights_first(cfg, env)
            if not env.is_main:
                return _train(cfg, env, device, amp, checked)
            # one run per run folder, locked by rank 0 only (outside removed_on_failure: a run refused here must
            # not remove the folder the running one just created); a run that fails (or is interrupted) before its
            # first checkpoint leaves no run folder behind
            option = "work_dir" if cfg.work_dir is not None else "name"
            with (
                output_lock(cfg.run_dir, option=option),
                removed_on_failure(cfg.run_dir, keep=cfg.run_dir / "last.pt"),
            ):
                return _train(cfg, env, device, amp, checked)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        shutdown_distributed()


def _resolve_weights_first(cfg: ExperimentConfig, env: DistEnv) -> None:
    """Find (or download) the initial weights before any data is read; rank 0 first, the others from its cache."""
    m = cfg.model
    backbone = m.backbone or MODELS[m.name].backbones[0]
    if env.is_main:
        resolve_weights(m.weights, backbone)  # a missing ImageNet file: one line, nothing read or written
    broadcast_from_main(True)  # the other ranks wait for rank 0's download instead of fetching their own copy
    if not env.is_main:
        resolve_weights(m.weights, backbone)


def _check_inputs(cfg: ExperimentConfig, env: DistEnv, train: SegmentationSource, val: SegmentationSource) -> int:
    """Check the crops' bands and labels and the run folder before any expensive step; the model's band count."""
    check_bands([train, val], cfg.data.bands)
    check_labelled(train, cfg.data.train_split)
    check_labelled(val, cfg.data.val_split)
    check_scheme([train, val], cfg.data.scheme)
    weights, n = cfg.train.class_weights, len(train.class_names)
    if isinstance(weights, list) and len(weights) != n:
        raise InputError(f"train.class_weights has {len(weights)} values but the data has {n} classes")
    in_ch = train.in_channels()
    if cfg.data.photometric == "rgb" and in_ch != 3:
        raise InputError(
            f"data.photometric: rgb jitters 3-band 8-bit RGB images, but {cfg.data.root} has {in_ch} bands; "
            "use data.photometric: bands (any band count) or none"
        )
    if env.is_main:
        check_output_dir(cfg.run_dir, "work_dir" if cfg.work_dir is not None else "run folder")
    return in_ch


def runtime_record(
    cfg: ExperimentConfig, env: DistEnv, device: torch.device, amp: torch.dtype | None
) -> dict[str, Any]:
    """Where and how a run computes (written to ``runtime.json`` in the run folder and into checkpoints)."""
    sync_bn = bool(env.distributed and cfg.train.sync_bn)
    return {
        "device": describe(device),
        "precision": precision_name(amp),
        "grad_scaler": amp == torch.float16,
        "channels_last": bool(cfg.train.channels_last and device.type == "cuda"),
        "compile": compile_decision(cfg.train.compile, sync_bn=sync_bn, world_size=env.world_size)[0],
        "world_size": env.world_size,
        "sync_bn": sync_bn,
        "torch": str(torch.__version__),  # a str subclass, which checkpoints (weights_only) do not take
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


@dataclass
class PreparedRun:
    """What one run trains with, built once by :func:`prepare_run`; :func:`_follow_plan` may change a budgeted run's
    ``cfg``, ``batches`` and ``average`` after its first plan.
    """  # noqa: D205

    cfg: ExperimentConfig
    env: DistEnv
    device: torch.device
    run_dir: Path
    class_names: list[str]
    colours: list[tuple[int, int, int]]
    stats: ChannelStats
    gsd: float | None
    band_names: list[str] | None
    in_channels: int
    runtime: dict[str, Any]
    """Where and how the run computes (:func:`runtime_record`)."""
    auto_record: dict[str, Any] | None
    """The values ``auto`` derived and why (:mod:`rs_deeplab.training.autoconfig`); None without ``auto``."""
    model: torch.nn.Module
    """The model itself: what the optimiser updates and checkpoints keep as train weights."""
    wrapped_model: torch.nn.Module
    """What each training step calls: ``model`` in DDP and/or ``torch.compile`` (:func:`wrap_model`)."""
    step: StepContext
    """Optimiser, schedule, scaler, loss and weight average of each step."""
    average: WeightAverage | None
    """The moving average of the weights (``train.ema``); None: off."""
    train_source: SegmentationSource
    batches: Iterator[Any]
    val_loader: DataLoader[Any] | None
    runlog: RunLog
    page: RunPage | None
    """``report.html``, rank 0 only."""
    budget: BudgetRun | None
    """The time budget (``schedule.budget``); None: ``schedule.iterations`` decides."""
    images_per_iteration: int
    fresh: bool
    """The run folder did not exist before this run (a budget found too short removes it)."""

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """What is evaluated, shown on the page and saved as ``model``: the weight average, else the model."""
        return self.model if self.average is None else self.average.model

    @property
    def last(self) -> Path:
        """``last.pt``: the latest checkpoint, resumed from."""
        return self.run_dir / "last.pt"

    @property
    def best(self) -> Path:
        """``best.pt``: the checkpoint of the best validation mIoU."""
        return self.run_dir / "best.pt"


@dataclass
class TrainState:
    """Where training stands: what :func:`fit` updates, checkpoints record and a resumed run starts from."""

    iteration: int
    """Iterations done."""
    best_miou: float
    """The best validation mIoU so far (-1: none yet)."""
    confusion: np.ndarray | None = None
    """The latest evaluation's confusion matrix (this process), for the plots at the end."""


def _train(
    cfg: ExperimentConfig, env: DistEnv, device: torch.device, amp: torch.dtype | None, checked: Callable[[], None]
) -> TrainResult:
    """Prepare the run, train it to its iterations (or within its time budget) and write the run's summary files."""
    run, state = prepare_run(cfg, env, device, amp, checked)
    if run.budget is None:
        cadence = Cadence(
            iterations=cfg.schedule.iterations,
            eval_every=cfg.train.eval_every,
            checkpoint_every=cfg.train.checkpoint_every,
            log_every=cfg.train.log_every,
        )
        iterations = fit(run, state, cadence, state.iteration)
    else:
        iterations = _fit_within_budget(run, state, run.budget)
    return finish_run(run, state, iterations)


def fit(
    run: PreparedRun,
    state: TrainState,
    cadence: Cadence,
    start: int,
    replan: Callable[[int, float], Cadence] | None = None,
    evaluate: bool = True,
) -> int:
    """Train from iteration ``start`` to ``cadence.iterations``; the number of iterations done.

    Each iteration: one optimiser step; every ``log_every`` (and at the end) the mean loss is logged (the only host
    sync of a step; a NaN or infinite loss stops here); every ``checkpoint_every`` between evaluations ``last.pt`` is
    saved. Every ``eval_every`` (and at the end): evaluate (when ``evaluate``), keep ``best.pt`` when the mIoU is
    the best so far, save ``last.pt``, then ask ``replan(iteration, seconds the evaluation and checkpoint took)``
    for the cadence from there on (a time budget). ``evaluate=False`` (a budget's probe) evaluates and saves
    nothing. Every rank runs this; only rank 0 writes files. A NaN stop or Ctrl-C marks the page stopped.
    """
    losses = LossMeter()
    ctx = run.step
    state.iteration = start
    with run.page.watching() if run.page is not None else contextlib.nullcontext():
        while state.iteration < cadence.iterations:
            lr = ctx.optimizer.param_groups[0]["lr"]
            micro_batches = [next(run.batches) for _ in range(ctx.grad_accum)]
            losses.add(train_step(run.wrapped_model, micro_batches, ctx))
            state.iteration += 1
            it = state.iteration
            if it % cadence.log_every == 0 or it == cadence.iterations:
                mean = losses.mean()  # the step's only host sync; raises on a NaN/inf loss
                run.runlog.train(it, mean, lr)
                if run.page is not None:
                    run.page.logged(it)
            if evaluate and it % cadence.checkpoint_every == 0 and it % cadence.eval_every != 0:
                losses.check()  # never checkpoint weights a NaN loss has reached
                save_last(run, state)
            if it % cadence.eval_every != 0 and it != cadence.iterations:
                continue
            losses.check()  # never evaluate or checkpoint weights a NaN loss has reached
            stopped = time.perf_counter()
            if evaluate and run.val_loader is not None:
                cm = evaluate_model(
                    run.evaluated_model,
                    run.val_loader,
                    len(run.class_names),
                    device=ctx.device,
                    amp_dtype=ctx.amp_dtype,
                    channels_last=ctx.channels_last,
                )
                record_evaluation(run, state, cm)
            if evaluate:
                save_last(run, state)
            if replan is not None:
                cadence = replan(it, time.perf_counter() - stopped)
    return state.iteration


def record_evaluation(run: PreparedRun, state: TrainState, cm: np.ndarray) -> None:
    """Log an evaluation (``metrics.csv``, a collapse warning, the page) and save ``best.pt`` when it is the best."""
    it, result = state.iteration, scores(cm)
    state.confusion = cm
    run.runlog.evaluation(it, result)
    if run.env.is_main:
        warn_if_collapsed(it, cm, run.class_names)
    if run.page is not None:  # report.html: rewritten at each evaluation (rank 0)
        run.page.evaluated(it, cm, run.evaluated_model)
    if result.miou > state.best_miou:
        state.best_miou = result.miou
        if run.env.is_main:
            save_checkpoint(run.best, {**checkpoint_contents(run, state), "val_miou": result.miou})


def save_last(run: PreparedRun, state: TrainState) -> None:
    """Check that every rank holds the same weights (a collective), then save ``last.pt`` on rank 0."""
    fingerprints = rank_fingerprints(run.model, run.device)  # a collective: every rank takes part
    check_in_sync(fingerprints)
    if run.env.is_main:
        save_checkpoint(run.last, {**checkpoint_contents(run, state), "rank_fingerprints": fingerprints})


def checkpoint_contents(run: PreparedRun, state: TrainState) -> dict[str, Any]:
    """What a checkpoint at ``state.iteration`` holds: weights, optimiser, schedule, RNG, config and data facts."""
    ctx, average = run.step, run.average
    weights = {} if average is None else {TRAIN_WEIGHTS_KEY: run.model.state_dict(), UPDATES_KEY: average.updates}
    return {
        "model": run.evaluated_model.state_dict(),
        **weights,
        "optimizer": ctx.optimizer.state_dict(),
        LR_SCHEDULE_KEY: ctx.lr_schedule.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler else None,
        "iteration": state.iteration,
        "rng": rng_state(),
        "config": config_to_dict(run.cfg),
        "class_names": list(run.class_names),
        "class_colours": [list(c) for c in run.colours],
        "band_stats": run.stats.as_dict(),
        "gsd": run.gsd,
        "band_names": run.band_names,
        "in_channels": run.in_channels,
        "best_miou": state.best_miou,
        "runtime": run.runtime,
        "budget": None if run.budget is None else run.budget.record(state.iteration),
        "auto": run.auto_record,
    }


def _fit_within_budget(run: PreparedRun, state: TrainState, budget: BudgetRun) -> int:
    """Train within ``schedule.budget``: the budget probes, plans and calls :func:`fit`; the iterations done.

    A budget that cannot pay for the run is one line (:class:`InputError`), and a run folder this run made goes.
    """
    budget.val_batches = len(run.val_loader) if run.val_loader is not None else 0
    budget.on_plan = functools.partial(_follow_plan, run)
    try:
        iterations = budget.run(functools.partial(fit, run, state), state.iteration)
        if budget.cut:
            save_last(run, state)  # now recording that the budget is spent
    except InputError:
        run.runlog.close()
        if run.fresh and run.env.is_main:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        raise
    return iterations


def _follow_plan(run: PreparedRun, plan: BudgetPlan) -> None:
    """Log and write a budget's plan; at the first, apply what ``auto`` decides from its iterations to ``run``."""
    env, run_dir = run.env, run.run_dir
    _show_plan(run_dir if env.is_main else None, plan)
    if not autoconfig.undecided(run.auto_record):  # decided at the first plan (or by the run resumed)
        return
    changed = autoconfig.adapt_to_plan(run.auto_record, plan.iterations, run.images_per_iteration)
    if changed:  # the rest of the run draws its crops and averages with the new settings
        run.cfg = autoconfig.apply(run.cfg, changed)
        if "data.scale_range" in changed:  # from where the probe ended
            run.batches = iter(_train_loader(run.cfg, env, run.train_source, run.stats, plan.done, run.device, True))
        if "train.ema" in changed:  # from the weights the probe reached
            if env.is_main:
                check_checkpoint_space(run_dir, checkpoint_bytes(run.model, run.step.optimizer, copies=2))
            run.step.average = run.average = _weight_average(run.cfg, run.model, None)
        if env.is_main:
            dump_config(run.cfg, run_dir / "config.yaml")
    if env.is_main and run.auto_record is not None:  # the decisions and their reasons
        autoconfig.write_record(run_dir, run.auto_record)


def finish_run(run: PreparedRun, state: TrainState, iterations: int) -> TrainResult:
    """Close the log and write what a finished run leaves (curves, confusion matrix, scores, the page's last state)."""
    run.runlog.close()
    run_dir, names = run.run_dir, run.class_names
    if run.env.is_main:
        plot_curves(run.runlog.path, run_dir / "curves.png")
        if state.confusion is not None:
            plot_confusion(state.confusion, names, run_dir / "confusion_matrix.png")
            with atomic_output(run_dir / "val_scores.md") as tmp:
                tmp.write_text(markdown_table(scores(state.confusion), names) + "\n")
    if run.page is not None:
        run.page.ended()
    return TrainResult(run_dir, run.last, run.best if run.best.exists() else None, state.best_miou, iterations)


def prepare_run(
    cfg: ExperimentConfig, env: DistEnv, device: torch.device, amp: torch.dtype | None, checked: Callable[[], None]
) -> tuple[PreparedRun, TrainState]:
    """Everything before the first step: data and its checks, resume state, ``auto``, model, optimiser, run folder.

    Reads the sources and checks them, loads ``last.pt`` when resuming (rank 0 decides), derives ``auto`` values,
    builds the model (DDP/compile wrapped), optimiser, schedule and scaler and restores them from the checkpoint,
    writes ``config.yaml`` and ``runtime.json``, calls ``checked`` (the held log lines print) once every check
    passed, runs the learning-rate range test when ``auto`` asks for it, and opens the loaders, log and page.
    """
    started = time.perf_counter()
    seed_everything(cfg.seed)
    train_src = build_source(cfg.data, cfg.data.train_split)
    val_src = build_source(cfg.data, cfg.data.val_split)
    names, in_ch = train_src.class_names, _check_inputs(cfg, env, train_src, val_src)
    run_dir = cfg.run_dir
    last = run_dir / "last.pt"
    state = resume_state(last, cfg.resume, env)
    if state is not None:
        check_resume(state, cfg, len(names), in_ch, last)
        stats = ChannelStats.from_dict(state["band_stats"])
        gsd, band_names = state.get("gsd"), state.get("band_names")
    else:
        stats = compute_band_stats(train_src.images, bands=cfg.data.bands)
        gsd, band_names = rasters_gsd(train_src.scene_images()), train_src.band_names()
    if env.is_main:
        log.info("training ground sampling distance: %s", "none (pixel-only data)" if gsd is None else f"{gsd:.3g} m")
    cfg, auto_record = autoconfig.configure(cfg, env, train_src, val_src, stats, state, device)
    per_iteration = cfg.data.batch_size * env.world_size * cfg.train.grad_accum
    if cfg.schedule.budget is None:  # the schedule is known now (a budget's, after its probe: _follow_plan)
        changed = autoconfig.adapt_to_plan(auto_record, cfg.schedule.iterations, per_iteration)
        cfg = autoconfig.apply(cfg, changed) if changed else cfg
    model, wrapped_model = _build_model(cfg, len(names), in_ch, device, env)
    optimizer = build_optimizer(model, **cfg.optimizer.model_dump())
    budget = _budget(cfg, state, started)
    lr_schedule = build_lr_schedule(
        optimizer, **cfg.schedule.model_dump(exclude={"budget"}), length=None if budget is None else budget.length
    )
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    runtime = runtime_record(cfg, env, device, amp)
    log.info("training on %s, precision %s, %d process(es)", runtime["device"], runtime["precision"], env.world_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels once
    start, best_miou = 0, -1.0
    if state is not None:
        start, best_miou = _restore(state, model, optimizer, lr_schedule, scaler)
        log.info("resuming from %s at iteration %d", last, start)
    fresh = not run_dir.exists()  # a budget found too short removes a run folder it made (nothing half-written)
    if env.is_main:
        _start_run_folder(cfg, run_dir, runtime, checkpoint_bytes(model, optimizer, copies=2 if cfg.train.ema else 1))
    colours = class_colours(names, cfg.data.scheme)
    page = None  # report.html (rank 0), its path checked before the first expensive step
    if env.is_main:
        page = RunPage(
            run_dir,
            class_names=names,
            colours=colours,
            val_source=val_src,
            stats=stats,
            device=device,
            amp=amp,
            images_per_iteration=per_iteration,
            eval_every=cfg.train.eval_every,
        )
    weights = class_weights(cfg, train_src, device)
    ctx = StepContext(
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        device=device,
        scaler=scaler,
        amp_dtype=amp,
        channels_last=cfg.train.channels_last and device.type == "cuda",
        grad_accum=cfg.train.grad_accum,
        class_weights=weights,
        aux_weight=getattr(model, "aux_weight", 0.0),
        loss_fn=build_loss(cfg.train.loss, weights),
        msc_weight=cfg.model.msc_weight,
    )
    train_loader, val_loader = _loaders(cfg, env, train_src, val_src, stats, start, device, budget is not None)
    checked()  # every check passed: the lines held so far print now
    seconds = None if budget is None else budget.budget
    lr = autoconfig.pick_rate(cfg, env, auto_record, wrapped_model, train_loader, ctx, seconds)
    if lr is not None:  # the range test's rate: the optimiser and its schedule start again from it
        cfg = autoconfig.apply(cfg, {"optimizer.lr": lr})
        ctx.optimizer = optimizer = build_optimizer(model, **cfg.optimizer.model_dump())
        ctx.lr_schedule = build_lr_schedule(
            optimizer, **cfg.schedule.model_dump(exclude={"budget"}), length=None if budget is None else budget.length
        )
    if env.is_main and auto_record is not None:
        if lr is not None:  # the config written above has the rate the test replaced
            dump_config(cfg, run_dir / "config.yaml")
        autoconfig.write_record(run_dir, auto_record)
    average = _weight_average(cfg, model, state)  # after the range test, whose steps it must not follow
    ctx.average = average
    runlog = RunLog(run_dir, names, start_iteration=start, enabled=env.is_main)
    batches = iter(train_loader)
    run = PreparedRun(
        cfg=cfg,
        env=env,
        device=device,
        run_dir=run_dir,
        class_names=list(names),
        colours=colours,
        stats=stats,
        gsd=gsd,
        band_names=band_names,
        in_channels=in_ch,
        runtime=runtime,
        auto_record=auto_record,
        model=model,
        wrapped_model=wrapped_model,
        step=ctx,
        average=average,
        train_source=train_src,
        batches=batches,
        val_loader=val_loader,
        runlog=runlog,
        page=page,
        budget=budget,
        images_per_iteration=per_iteration,
        fresh=fresh,
    )
    return run, TrainState(iteration=start, best_miou=best_miou)


def _restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
) -> tuple[int, float]:
    """Load a checkpoint's train weights, optimiser, schedule, scaler and RNG; its iteration and best mIoU."""
    model.load_state_dict(state.get(TRAIN_WEIGHTS_KEY, state["model"]))  # "model" is the average under train.ema
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state[LR_SCHEDULE_KEY])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    start, best_miou = int(state["iteration"]), float(state.get("best_miou", -1.0))
    set_rng_state(state["rng"])
    return start, best_miou


def _start_run_folder(cfg: ExperimentConfig, run_dir: Path, runtime: dict[str, Any], checkpoint_size: int) -> None:
    """Rank 0: check the checkpoints fit, make the run folder, drop stale temporaries, write the config and runtime."""
    check_checkpoint_space(run_dir, checkpoint_size)  # before the run folder's first file
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp-*"):  # left by a run killed while writing
        stale.unlink()
    dump_config(cfg, run_dir / "config.yaml")
    with atomic_output(run_dir / "runtime.json") as tmp:
        tmp.write_text(json.dumps(runtime, indent=2) + "\n")


def _weight_average(
    cfg: ExperimentConfig, model: torch.nn.Module, state: dict[str, Any] | None
) -> WeightAverage | None:
    """The moving average of ``model``'s weights under ``train.ema`` (continued from a checkpoint's), else None."""
    if not cfg.train.ema:
        return None
    average = WeightAverage(model, cfg.train.ema)
    if state is not None and TRAIN_WEIGHTS_KEY in state:
        average.load(state["model"], int(state[UPDATES_KEY]))
    log.info("evaluating and saving a moving average of the weights (train.ema %g)", cfg.train.ema)
    return average


def _budget(cfg: ExperimentConfig, state: dict[str, Any] | None, started: float) -> BudgetRun | None:
    """The run's time budget (``schedule.budget``), resumed with the seconds an earlier run spent; None without."""
    if cfg.schedule.budget is None:
        return None
    record = (state or {}).get("budget") or {}
    spent = float(record.get("spent", 0.0))
    fixed: dict[str, int] = {
        k: int(getattr(cfg.train, k)) for k in ("eval_every", "checkpoint_every") if k in cfg.train.model_fields_set
    }
    if "warmup_iters" in cfg.schedule.model_fields_set:
        fixed["warmup_iters"] = cfg.schedule.warmup_iters
    cap = cfg.schedule.iterations if "iterations" in cfg.schedule.model_fields_set else None
    run = BudgetRun(
        parse_duration(cfg.schedule.budget),
        spent=spent,
        started=started,
        val_batches=0,
        log_every=cfg.train.log_every,
        cap=cap,
        fixed=fixed,
        on_plan=lambda plan: None,
    )
    run.finished = bool(record.get("finished"))
    return run


def _show_plan(run_dir: Path | None, plan: BudgetPlan) -> None:
    """Log a budget plan and write it to ``plan.json`` (main rank: ``run_dir`` given)."""
    if run_dir is None:
        return
    log.info("%s", plan.summary())
    with atomic_output(run_dir / "plan.json") as tmp:
        tmp.write_text(json.dumps(plan.as_dict(), indent=2) + "\n")
