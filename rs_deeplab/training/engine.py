"""The pieces of the training loop: optimiser, learning-rate schedule, loss, one step, the loss meter, evaluation.

:func:`train_step` is one optimiser step (over ``grad_accum`` micro-batches), :class:`LossMeter` sums its losses on
the device, :func:`evaluate` counts the confusion matrix, and :class:`Cadence` says when to log, evaluate and
checkpoint. The loop that calls them (step, log, evaluate, keep ``best.pt``, save ``last.pt``) is
:func:`rs_deeplab.training.experiment.fit`; nothing here writes a file.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rs_deeplab.cli.errors import TrainingError
from rs_deeplab.models import MSCOutput, SegOutput, param_groups
from rs_deeplab.training.averaging import WeightAverage
from rs_deeplab.training.distributed import all_reduce_sum
from rs_deeplab.training.losses import LossFn, build_loss

log = logging.getLogger("rs_deeplab.training.engine")
Batch = tuple[torch.Tensor, torch.Tensor]

OPTIMIZERS = ("sgd", "adamw")
"""The optimisers :func:`build_optimizer` builds (``optimizer.name`` of the config)."""
LR_POLICIES = ("poly", "step")
"""The learning-rate policies :func:`build_lr_schedule` builds (``schedule.policy`` of the config)."""
LR_SCHEDULE_KEY = "scheduler"
"""Where a checkpoint holds the learning-rate schedule's state (the key older checkpoints were written with)."""


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    head_lr_mult: float = 10.0,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """SGD or AdamW with two groups: backbone at ``lr``, new head layers at ``lr * head_lr_mult``.

    Raises:
        ValueError: ``name`` is not one of :data:`OPTIMIZERS`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    backbone, head = param_groups(model)
    groups = [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def poly_factor(
    iteration: int, *, iterations: int, power: float, min_ratio: float, warmup_iters: int = 0, warmup_ratio: float = 0.1
) -> float:
    """Learning-rate multiplier: ``(1 - it/max)^power`` scaled to end at ``min_ratio``, after a linear warmup."""
    progress = min(iteration, iterations) / iterations
    factor = (1.0 - min_ratio) * (1.0 - progress) ** power + min_ratio
    return factor * warmup_factor(iteration, warmup_iters, warmup_ratio)


def step_factor(
    iteration: int, *, step_size: int, gamma: float, warmup_iters: int = 0, warmup_ratio: float = 0.1
) -> float:
    """Learning-rate multiplier of Caffe's ``step`` policy (DeepLab v1): ``gamma ** (it // step_size)``."""
    return gamma ** (iteration // step_size) * warmup_factor(iteration, warmup_iters, warmup_ratio)


def warmup_factor(iteration: int, warmup_iters: int, warmup_ratio: float) -> float:
    """Linear ramp from ``warmup_ratio`` to 1 over the first ``warmup_iters`` iterations, then 1."""
    if iteration < warmup_iters:
        return warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return 1.0


def build_lr_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    iterations: int,
    policy: str = "poly",
    power: float = 0.9,
    min_lr: float = 1e-4,
    step_size: int = 2000,
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.1,
    length: Callable[[], tuple[int, int]] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Iteration-based poly or step schedule (one ``step()`` per optimiser step) applied to every parameter group.

    ``length``, when given, is asked at every step for ``(iterations, warmup_iters)``: a time budget re-plans them
    while the run goes (:mod:`rs_deeplab.training.budget`).

    Raises:
        ValueError: ``policy`` is not one of :data:`LR_POLICIES`.
    """
    if policy not in LR_POLICIES:
        raise ValueError(f"unknown learning-rate policy {policy!r}; use one of {', '.join(LR_POLICIES)}")
    base = optimizer.param_groups[0]["lr"]
    min_ratio = min(min_lr / base, 1.0)

    def factor(it: int) -> float:
        total, warmup = (iterations, warmup_iters) if length is None else length()
        if policy == "step":
            return step_factor(it, step_size=step_size, gamma=gamma, warmup_iters=warmup, warmup_ratio=warmup_ratio)
        return poly_factor(
            it,
            iterations=max(total, 1),
            power=power,
            min_ratio=min_ratio,
            warmup_iters=warmup,
            warmup_ratio=warmup_ratio,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def segmentation_loss(
    output: torch.Tensor | SegOutput | MSCOutput,
    target: torch.Tensor,
    *,
    class_weights: torch.Tensor | None,
    aux_weight: float,
    loss_fn: LossFn | None = None,
    msc_weight: float = 1.0,
) -> torch.Tensor:
    """The main head's loss plus ``aux_weight`` times the auxiliary head's.

    For a multi-scale (MSC) output, the main loss is the fused map's plus ``msc_weight`` times each scale's
    (DeepLab v2 trains all with weight 1); the auxiliary term is the scale-1 pass's. Every map is at the input
    size, so the target (and its 255 = ignore) applies to each as it is. ``loss_fn`` defaults to cross-entropy
    ignoring 255 with the optional ``class_weights``.
    """
    fn = loss_fn if loss_fn is not None else build_loss("ce", class_weights)
    if isinstance(output, MSCOutput):
        loss = fn(output.out, target)
        for scale_map in output.scales:
            loss = loss + msc_weight * fn(scale_map, target)
        if output.aux is not None:
            loss = loss + aux_weight * fn(output.aux, target)
        return loss
    if isinstance(output, SegOutput):
        return fn(output.out, target) + aux_weight * fn(output.aux, target)
    return fn(output, target)


@dataclass(kw_only=True)
class StepContext:
    """What each optimisation step needs besides the model and the data (built by keyword)."""

    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_accum: int = 1
    class_weights: torch.Tensor | None = None
    aux_weight: float = 0.0
    loss_fn: LossFn | None = None
    """The training loss of each head (:func:`rs_deeplab.training.losses.build_loss`); None: cross-entropy."""
    msc_weight: float = 1.0
    """Weight of each scale's loss of a multi-scale (MSC) model; the fused output's weighs 1."""
    history: list[dict[str, float]] = field(default_factory=list)
    average: WeightAverage | None = None
    """The moving average of the weights that follows each step (``train.ema``); None: off."""


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """Move a batch to the device (non-blocking from pinned memory), channels_last when asked.

    Masks travel in their own dtype (uint8 from the loaders: a quarter of int64's bytes) and become int64 on the
    device, as the loss and the confusion matrix need.
    """
    images, masks = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device, non_blocking=True).long()


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on CUDA when ``amp_dtype`` is set; nothing on CPU."""
    if amp_dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype)


def train_step(model: nn.Module, micro_batches: Sequence[Batch], ctx: StepContext) -> torch.Tensor:
    """One optimiser step over ``grad_accum`` micro-batches; the mean loss stays on the device (no host sync).

    DDP all-reduces gradients on the last micro-batch only. Masks arrive as uint8 and become int64 on the device.
    """
    model.train()
    ctx.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=ctx.device)
    for i, batch in enumerate(micro_batches):
        images, masks = to_device(batch, ctx.device, ctx.channels_last)
        last = i == len(micro_batches) - 1
        no_sync: Any = getattr(model, "no_sync", None)  # DistributedDataParallel: skip all-reduce until the last
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast(ctx.device, ctx.amp_dtype):
                output = model(images)
            loss = segmentation_loss(
                output,
                masks,
                class_weights=ctx.class_weights,
                aux_weight=ctx.aux_weight,
                loss_fn=ctx.loss_fn,
                msc_weight=ctx.msc_weight,
            )
            scaled = loss / len(micro_batches)
            (ctx.scaler.scale(scaled) if ctx.scaler else scaled).backward()
        total += scaled.detach()
    if ctx.scaler:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.lr_schedule.step()
    if ctx.average is not None:
        ctx.average.update()
    return total


class LossMeter:
    """Sums step losses on the device; reading the mean (at ``log_every``) is the only host sync."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        """Add one step's loss (a 0-d tensor on any device)."""
        self.total = loss.detach().clone() if self.total is None else self.total.add_(loss.detach())
        self.count += 1

    def check(self) -> float:
        """The mean of the losses added since the last :meth:`mean` (a host sync), without resetting.

        Raises:
            TrainingError: A loss was NaN or infinite (a ``FloatingPointError``).
        """
        value = float(self.total) / self.count if self.total is not None and self.count else 0.0
        if not math.isfinite(value):
            raise TrainingError("loss is not finite; lower optimizer.lr or check the labels")
        return value

    def mean(self) -> float:
        """:meth:`check`, then reset."""
        value = self.check()
        self.total, self.count = None, 0
        return value


def device_confusion(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts of ``(truth, pred)`` pairs on the tensors' device (``torch.bincount``).

    Same rule as :func:`rs_deeplab.evaluation.metrics.confusion_matrix`: truth outside ``[0, C)`` (255 = ignore) and
    predictions outside ``[0, C)`` are skipped.
    Skipped pairs are counted in a spare bin that is dropped, and the counts are added with ``index_add_``: neither
    selecting by a mask nor ``bincount`` (which reads the largest value first), so the host never waits.
    """
    cells = num_classes * num_classes
    t, p = truth.reshape(-1).long(), pred.reshape(-1).long()
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    pairs = torch.where(keep, t * num_classes + p, cells)
    counts = torch.zeros(cells + 1, dtype=torch.int64, device=pairs.device)
    counts.index_add_(0, pairs, torch.ones_like(pairs))
    return counts[:cells].reshape(num_classes, num_classes)


TUNED_SHAPES = 2
"""Distinct input shapes cuDNN may benchmark in one evaluation (see :func:`keep_benchmark`)."""


def keep_benchmark(seen: set[tuple[int, ...]], shape: tuple[int, ...], limit: int = TUNED_SHAPES) -> bool:
    """Whether ``cudnn.benchmark`` may stay on for a validation batch of ``shape``; pure apart from ``seen``.

    Batches padded to their largest image (VOC-style validation) come in many shapes, and cuDNN would try every
    algorithm again for each new one (seconds per shape on a large model). Up to ``limit`` distinct shapes are
    tuned (a fixed crop size is one); from the next one on, the rest of the evaluation uses cuDNN's heuristics.
    """
    seen.add(shape)
    return len(seen) <= limit


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader[Batch],
    num_classes: int,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Confusion matrix over this rank's share of the loader, summed over all ranks.

    Pass the plain model, not its DDP wrapper: ranks may hold different numbers of validation batches (or none),
    and a wrapper's forward would then wait on collectives the other ranks never join. The matrix is counted and
    all-reduced on the device; it reaches the host once, at the end. Batches of more than :data:`TUNED_SHAPES`
    shapes turn ``cudnn.benchmark`` off for the rest of the evaluation (:func:`keep_benchmark`); it is restored at
    the end. The counts do not depend on it.
    """
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    benchmark, seen = torch.backends.cudnn.benchmark, set[tuple[int, ...]]()
    try:
        for batch in loader:
            images, masks = to_device(batch, device, channels_last)
            if benchmark:
                torch.backends.cudnn.benchmark = keep_benchmark(seen, tuple(images.shape))
            with autocast(device, amp_dtype):
                logits = model(images)
            cm += device_confusion(logits.argmax(1), masks, num_classes)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return all_reduce_sum(cm).cpu().numpy()


@dataclass(frozen=True)
class Cadence:
    """When the loop (:func:`rs_deeplab.training.experiment.fit`) logs, evaluates and checkpoints, in iterations."""

    iterations: int
    eval_every: int
    checkpoint_every: int
    log_every: int
