"""A time budget instead of an iteration count: ``schedule.budget: 15m`` (``pipelines/train.py --budget 15m``).

The run measures how long an iteration takes on this machine, now, and plans the rest to end within the budget:

1. **Probe.** The first :data:`PROBE_ITERATIONS` iterations train as usual (warming up the learning rate); the
   time of all but the first :data:`PROBE_WARMUP` of them (allocator, loader workers and kernels settle there)
   gives the seconds per iteration.
2. **Plan** (:func:`plan_budget`, pure). What is left of the budget pays for ``N`` more iterations and
   :data:`EVALUATIONS` evaluations with a checkpoint each (fewer where they would take more than
   :data:`EVALUATION_SHARE` of it); an evaluation is estimated from the validation batches
   at :data:`FORWARD_SHARE` of a training step each until one has been timed. The poly (or step) schedule decays
   over the planned total, the warm-up is :data:`WARMUP_SHARE` of it (at least the probe), and the run evaluates
   and checkpoints every ``total / EVALUATIONS`` iterations. Values set in the config (``train.eval_every``,
   ``train.checkpoint_every``, ``schedule.warmup_iters``) win over the plan's.
3. **Re-plan** after every evaluation, from the measured seconds per iteration, per evaluation and per checkpoint:
   a machine that got busier (or freer) shortens (or lengthens) the rest of the schedule, so the run still ends in
   time. The learning rate then follows the new total from where it is.

The plan, with the measurements behind it and the reason for each value, is logged and written to
``plan.json`` in the run folder; checkpoints keep the budget and the seconds spent, so a resumed run plans only
what is left. With several processes every rank plans from the slowest rank's measurements, so all agree.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from rs_deeplab.cli.durations import duration_text
from rs_deeplab.cli.errors import InputError
from rs_deeplab.training.engine import Cadence

log = logging.getLogger("rs_deeplab.training.budget")

PROBE_ITERATIONS = 12
"""Iterations trained before the plan is made."""
PROBE_WARMUP = 2
"""Probe iterations left out of the timing."""
EVALUATIONS = 4
"""Evaluations (each with a checkpoint) spread over a budgeted run."""
EVALUATION_SHARE = 0.25
"""At most this share of the time left goes to evaluations (fewer than :data:`EVALUATIONS` when they are slow)."""
WARMUP_SHARE = 0.03
"""Learning-rate warm-up as a share of the planned iterations."""
FORWARD_SHARE = 0.4
"""An evaluation batch's cost as a share of a training step's, until an evaluation has been timed."""
CHECKPOINT_SECONDS = 1.0
"""A checkpoint's cost until one has been timed."""


@dataclass(frozen=True)
class Measured:
    """What the run has measured so far (seconds)."""

    spent: float
    """Of the budget, including earlier runs of the same training (resumed)."""
    step: float
    """Per training iteration."""
    evaluation: float | None = None
    """Per evaluation, once one has run."""
    checkpoint: float | None = None
    """Per checkpoint, once one has been written."""


@dataclass(frozen=True)
class BudgetPlan:
    """How a budgeted run trains from here on, and why (``plan.json``)."""

    budget: float
    """Seconds in all."""
    iterations: int
    """Iterations in all (the learning rate decays over them)."""
    eval_every: int
    checkpoint_every: int
    warmup_iters: int
    step_seconds: float
    """Measured per iteration (in the probe, then since the last plan)."""
    evaluation_seconds: float
    """Per evaluation: estimated, then measured (with its checkpoint, once one has run)."""
    checkpoint_seconds: float
    """Per checkpoint until an evaluation was timed with its checkpoint (then 0: counted in the evaluation)."""
    spent: float
    """Seconds of the budget spent when this plan was made."""
    done: int
    """Iterations trained when this plan was made."""
    reasons: dict[str, str]
    """Why each value: ``iterations``, ``eval_every``, ``checkpoint_every``, ``warmup_iters``."""

    def as_dict(self) -> dict[str, object]:
        """For ``plan.json`` and checkpoints."""
        return asdict(self)

    def summary(self) -> str:
        """One log line."""
        return (
            f"budget {duration_text(self.budget)}: {self.iterations} iterations "
            f"({self.step_seconds:.2f} s each measured here), evaluating every {self.eval_every} "
            f"(~{self.evaluation_seconds:.0f} s each), warm-up {self.warmup_iters}; "
            f"{duration_text(self.spent)} spent at iteration {self.done}"
        )


def plan_budget(
    budget: float,
    measured: Measured,
    *,
    done: int,
    val_batches: int,
    evaluations_done: int = 0,
    cap: int | None = None,
    fixed: dict[str, int] | None = None,
) -> BudgetPlan:
    """The rest of a budgeted run: how many iterations in all, evaluation and checkpoint cadence, warm-up.

    Args:
        budget: Seconds in all.
        measured: Time spent and unit costs measured so far.
        done: Iterations trained so far.
        val_batches: Validation batches per evaluation (0: no evaluation, only checkpoints).
        evaluations_done: Evaluations run so far (the plan spreads the rest of :data:`EVALUATIONS`).
        cap: Iterations never to exceed (``schedule.iterations`` when the user set it).
        fixed: Cadence values the user set (``eval_every``, ``checkpoint_every``, ``warmup_iters``): kept.

    Raises:
        InputError: What is left of the budget cannot pay for one more iteration and one evaluation.
    """
    fixed = fixed or {}
    step = max(measured.step, 1e-6)
    evaluation = measured.evaluation if measured.evaluation is not None else val_batches * step * FORWARD_SHARE
    checkpoint = measured.checkpoint if measured.checkpoint is not None else CHECKPOINT_SECONDS
    left = budget - measured.spent
    per_stop = evaluation + checkpoint
    # evaluations take at most EVALUATION_SHARE of what is left: fewer of them when they got expensive
    stops = min(max(EVALUATIONS - evaluations_done, 1), max(math.floor(EVALUATION_SHARE * left / per_stop), 1))
    more = math.floor((left - stops * per_stop) / step)
    if "eval_every" in fixed:  # the config's cadence decides how many evaluations the iterations bring
        every = fixed["eval_every"]
        more = math.floor(left / (step + per_stop / every))
        if cap is not None:
            more = min(more, cap - done)
        while more > 0 and more * step + math.ceil(more / every) * per_stop > left:
            more -= 1
        stops = max(math.ceil(more / every), 1)
    if more < 1:
        need = measured.spent + step + per_stop
        raise InputError(
            f"schedule.budget {duration_text(budget)} is too short: {duration_text(measured.spent)} "
            f"spent, an iteration takes {step:.2f} s and an evaluation with its checkpoint about "
            f"{per_stop:.0f} s here; give at least {duration_text(math.ceil(need * 1.5))}"
        )
    total = done + more
    reasons = {
        "iterations": f"{duration_text(max(left, 0))} left pays for {more} iterations of {step:.2f} s and "
        f"{stops} evaluation(s) with checkpoints of {per_stop:.1f} s"
    }
    if cap is not None and total > cap:
        total = max(cap, done)
        reasons["iterations"] = f"schedule.iterations {cap} set in the config caps the {done + more} the budget pays"
    eval_every = max(math.ceil((total - done) / stops), 1) if evaluations_done else max(math.ceil(total / stops), 1)
    reasons["eval_every"] = f"{stops} evaluation(s) over the {total - done if evaluations_done else total} iterations"
    warmup = min(max(round(total * WARMUP_SHARE), PROBE_ITERATIONS), total)
    reasons["warmup_iters"] = f"{WARMUP_SHARE:.0%} of the iterations, at least the {PROBE_ITERATIONS} of the probe"
    values = {"eval_every": eval_every, "checkpoint_every": eval_every, "warmup_iters": warmup}
    reasons["checkpoint_every"] = "with every evaluation"
    for key, value in fixed.items():
        values[key] = value
        reasons[key] = "set in the config"
    return BudgetPlan(
        budget,
        total,
        values["eval_every"],
        values["checkpoint_every"],
        values["warmup_iters"],
        step,
        evaluation,
        checkpoint,
        measured.spent,
        done,
        reasons,
    )


def agree(values: list[float]) -> list[float]:
    """The largest of each value over the ranks of a distributed run (the values themselves in one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.cpu().tolist()]


FitCall = Callable[[Cadence, int, "Callable[[int, float], Cadence] | None", bool], int]
"""``(cadence, start iteration, replan, evaluate) → iteration reached``: :func:`~rs_deeplab.training.experiment.fit`
with the run's model, data and callbacks bound."""


class BudgetRun:
    """Probe, plan and re-plan one budgeted training run (module docstring).

    Args:
        budget: Seconds in all.
        spent: Seconds spent before this process (a resumed run's checkpoint says).
        started: ``time.perf_counter()`` when this process started on the run.
        val_batches: Validation batches per evaluation.
        log_every: ``train.log_every``.
        cap: ``schedule.iterations`` when the config sets it.
        fixed: Cadence values the config sets (they win).
        on_plan: Called with each plan (to log it and write ``plan.json``).
    """

    def __init__(
        self,
        budget: float,
        *,
        spent: float,
        started: float,
        val_batches: int,
        log_every: int,
        cap: int | None,
        fixed: dict[str, int],
        on_plan: Callable[[BudgetPlan], None],
    ) -> None:
        self.budget, self.prior, self.started = budget, spent, started
        self.val_batches, self.log_every, self.cap, self.fixed = val_batches, log_every, cap, fixed
        self.on_plan = on_plan
        self.finished = False
        """An earlier run of this training used the whole budget."""
        self.cut = False
        """The last re-plan ended the run where it stood (the budget ran out)."""
        self.plan: BudgetPlan | None = None
        self.evaluations = 0
        self._mark = (0, 0.0)  # iteration and time the current training stretch started

    def spent(self) -> float:
        """Seconds of the budget spent so far."""
        return self.prior + time.perf_counter() - self.started

    def length(self) -> tuple[int, int]:
        """``(iterations, warmup_iters)`` for the learning-rate schedule: the plan's, or the probe's."""
        if self.plan is None:
            return PROBE_ITERATIONS * 100, PROBE_ITERATIONS
        return self.plan.iterations, self.plan.warmup_iters

    def record(self, it: int) -> dict[str, object]:
        """What a checkpoint at iteration ``it`` keeps: the budget, the seconds spent, the plan, whether it is done."""
        done = self.plan is not None and it >= self.plan.iterations
        return {
            "budget": self.budget,
            "spent": self.spent(),
            "finished": done or self.finished,
            "plan": None if self.plan is None else self.plan.as_dict(),
        }

    def run(self, fit_call: FitCall, start: int) -> int:
        """Train from ``start``: probe, plan, then the planned run, re-planning after each evaluation.

        A resumed run whose budget was already used up (the checkpoint says it finished) trains no more.
        """
        if self.finished:
            log.info(
                "budget %s was used up by the run resumed at iteration %d: nothing left to train",
                duration_text(self.budget),
                start,
            )
            return start
        if self.cap is not None and self.cap - start <= PROBE_ITERATIONS:  # the config's cap ends it before a plan
            self.plan = plan_budget(
                self.budget, Measured(self.spent(), 1e-6), done=start, val_batches=0, cap=self.cap, fixed=self.fixed
            )
            self.on_plan(self.plan)
            return fit_call(self.cadence(), start, None, True)
        never = 1 << 40
        it = fit_call(Cadence(start + PROBE_WARMUP, never, never, self.log_every), start, None, False)
        timed = time.perf_counter()
        it = fit_call(Cadence(start + PROBE_ITERATIONS, never, never, self.log_every), it, None, False)
        step = (time.perf_counter() - timed) / max(it - start - PROBE_WARMUP, 1)
        spent, step, batches = agree([self.spent(), step, float(self.val_batches)])  # ranks hold shards of val
        self.val_batches = int(batches)
        self._set(
            plan_budget(
                self.budget,
                Measured(spent, step),
                done=it,
                val_batches=self.val_batches,
                cap=self.cap,
                fixed=self.fixed,
            )
        )
        assert self.plan is not None
        return fit_call(self.cadence(), it, self.replan, True)

    def cadence(self) -> Cadence:
        """The plan's cadence."""
        assert self.plan is not None, "plan first"
        p = self.plan
        return Cadence(p.iterations, p.eval_every, p.checkpoint_every, self.log_every)

    def replan(self, it: int, seconds: float) -> Cadence:
        """After an evaluation at ``it`` that took ``seconds`` (with its checkpoint): the cadence from here on."""
        assert self.plan is not None, "plan first"
        self.evaluations += 1
        mark_it, mark_t = self._mark
        now = time.perf_counter()
        step = (now - seconds - mark_t) / max(it - mark_it, 1) if it > mark_it else self.plan.step_seconds
        spent, step, seconds = agree([self.spent(), step, seconds])
        if it >= self.plan.iterations:
            return self.cadence()
        try:
            plan = plan_budget(
                self.budget,
                Measured(spent, step, evaluation=seconds, checkpoint=0.0),
                done=it,
                val_batches=self.val_batches,
                evaluations_done=self.evaluations,
                cap=self.cap,
                fixed=self.fixed,
            )
        except InputError:  # the machine got slower than planned: what is left pays for no more
            log.warning("budget %s nearly spent at iteration %d: stopping here", duration_text(self.budget), it)
            self.cut = True  # the checkpoint just written did not know it was the last: write it again
            plan = replace(
                self.plan,
                iterations=it,
                spent=spent,
                done=it,
                reasons={**self.plan.reasons, "iterations": "the budget ran out"},
            )
        self._set(plan)
        return self.cadence()

    def _set(self, plan: BudgetPlan) -> None:
        self.plan = plan
        self._mark = (plan.done, time.perf_counter())
        self.on_plan(plan)
