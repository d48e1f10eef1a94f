"""A short learning-rate range test (Smith, 2017): train a few steps at exponentially growing rates, pick one.

:func:`range_test` trains :data:`STEPS` steps from :data:`START` to :data:`END` (the optimiser's parameter groups
keep their ratios), then puts the weights, buffers and optimiser back as they were; :func:`pick_lr` (pure) smooths
the losses and takes the rate at their minimum divided by :data:`DIVISOR`, within the optimiser's :data:`BOUNDS`.
It runs only where it pays for itself: under a time budget when its steps cost at most :data:`BUDGET_SHARE` of the
budget (timed on its first steps, stopped otherwise), without one when they are at most :data:`ITERATION_SHARE` of
the iterations.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from rs_deeplab.training.engine import StepContext, train_step

STEPS = 40
START, END = 1e-5, 1.0
DIVISOR = 10.0
BOUNDS = {"adamw": (1e-4, 3e-3), "sgd": (1e-3, 0.1)}
"""The rates a pick is clamped to, per optimiser: a short, noisy test must not pick a rate the optimiser is known to
diverge at over a whole run (AdamW from random weights: above a few 1e-3)."""
SMOOTHING = 0.8
"""Exponential smoothing of the losses (bias-corrected)."""
DIVERGED = 4.0
"""The test stops when the smoothed loss exceeds this multiple of its minimum."""
BUDGET_SHARE = 0.05
ITERATION_SHARE = 0.05
SETTLE_STEPS = 2
"""First steps left out of the timing (loader start, allocator, kernels)."""
TIMED_STEPS = 3
"""Steps timed after those before deciding whether the rest fits :data:`BUDGET_SHARE` of the budget."""


@dataclass(frozen=True)
class RangeResult:
    """What a range test found."""

    lr: float | None
    """The picked rate; None when the test stopped (too slow for the budget) or found no minimum."""
    reason: str
    lrs: list[float]
    losses: list[float]
    seconds: float


def rate(step: int, steps: int = STEPS, start: float = START, end: float = END) -> float:
    """The rate of test step ``step`` (0-based): exponential from ``start`` to ``end``."""
    return start * (end / start) ** (step / max(steps - 1, 1))


def pick_lr(
    lrs: Sequence[float], losses: Sequence[float], bounds: tuple[float, float] = BOUNDS["adamw"]
) -> tuple[float | None, str]:
    """The rate at the smoothed losses' minimum over :data:`DIVISOR`, clamped to ``bounds`` (pure).

    Returns None (with the reason) when the losses never fell below their start.
    """
    smoothed: list[float] = []
    avg = 0.0
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        smoothed.append(avg / (1 - SMOOTHING ** (i + 1)))
    if len(smoothed) < 3:
        return None, "the loss diverged at once"
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    if best == 0 or smoothed[best] >= smoothed[0]:
        return None, "the loss never fell below its start"
    raw = lrs[best] / DIVISOR
    lr = min(max(raw, bounds[0]), bounds[1])
    clamp = "" if lr == raw else f", clamped to {lr:.2g}"
    return lr, (
        f"range test: smoothed loss lowest ({smoothed[best]:.3f}, from {smoothed[0]:.3f}) at lr "
        f"{lrs[best]:.2g}; a tenth of it, {raw:.2g}{clamp}"
    )


def pays(*, budget: float | None, iterations: int, step_seconds: float | None = None) -> bool:
    """Whether :data:`STEPS` test steps pay for themselves: a small share of the budget or of the iterations."""
    if budget is not None:
        return step_seconds is None or STEPS * step_seconds <= BUDGET_SHARE * budget
    return ITERATION_SHARE * iterations >= STEPS


def range_test(
    model: torch.nn.Module,
    batches: Iterable[Any],
    ctx: StepContext,
    *,
    budget: float | None = None,
    bounds: tuple[float, float] = BOUNDS["adamw"],
) -> RangeResult:
    """Train up to :data:`STEPS` steps of ``batches`` at growing rates; the model and optimiser come back unchanged.

    Args:
        model: What trains (the DDP-wrapped model in a distributed run: every rank runs the same steps).
        batches: Micro-batch lists (``ctx.grad_accum`` batches each) for each step.
        ctx: The run's step context; its optimiser's state is restored afterwards, its schedule untouched.
        budget: Seconds of the run's time budget: the test stops after its first timed steps when all of them
            would take more than :data:`BUDGET_SHARE` of it.
        bounds: The picked rate's range (:data:`BOUNDS` of the optimiser).
    """
    module = getattr(model, "module", model)
    saved_model = copy.deepcopy(module.state_dict())
    saved_opt = copy.deepcopy(ctx.optimizer.state_dict())
    ratios = [g["lr"] / ctx.optimizer.param_groups[0]["lr"] for g in ctx.optimizer.param_groups]
    initial = [g["lr"] for g in ctx.optimizer.param_groups]
    schedule = torch.optim.lr_scheduler.LambdaLR(ctx.optimizer, lambda it: 1.0)  # a placeholder train_step steps
    test_ctx = replace(ctx, lr_schedule=schedule, history=[])
    lrs: list[float] = []
    losses: list[float] = []
    began = time.perf_counter()
    settled = began
    stopped = None
    try:
        for step, micro in enumerate(batches):
            if step >= STEPS:
                break
            lr = rate(step)
            for group, ratio in zip(ctx.optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            loss = float(train_step(model, micro, test_ctx))
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss) or (len(losses) > 5 and loss > DIVERGED * min(losses)):
                break
            if step + 1 == SETTLE_STEPS:
                settled = time.perf_counter()
            if budget is not None and step + 1 == SETTLE_STEPS + TIMED_STEPS:
                per_step = (time.perf_counter() - settled) / TIMED_STEPS
                if not pays(budget=budget, iterations=0, step_seconds=per_step):
                    stopped = (
                        f"skipped: {STEPS} test steps of {per_step:.2f} s would take more than "
                        f"{BUDGET_SHARE:.0%} of the budget"
                    )
                    break
    finally:
        module.load_state_dict(saved_model)
        ctx.optimizer.load_state_dict(saved_opt)
        for group, lr in zip(ctx.optimizer.param_groups, initial, strict=True):
            group["lr"] = lr
    seconds = time.perf_counter() - began
    if stopped is not None:
        return RangeResult(None, stopped, lrs, losses, seconds)
    picked, reason = pick_lr(lrs, losses, bounds)
    return RangeResult(picked, reason, lrs, losses, seconds)
