"""Losses without host syncs: the same values and gradients as the boolean-mask formulas they replaced."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from rs_deeplab.training.losses import build_loss

# the formulas as they were before issue 26 (pixels selected by a boolean mask, Python branches on tensor values)


def _old_valid(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = logits.shape[1]
    flat = logits.float().permute(0, 2, 3, 1).reshape(-1, c)
    t = target.reshape(-1)
    keep = t != 255
    return flat[keep], t[keep]


def _old_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    probs, t = _old_valid(logits, target)
    probs = probs.softmax(1)
    onehot = F.one_hot(t, probs.shape[1]).to(probs.dtype)
    per_class = 1.0 - (2.0 * (probs * onehot).sum(0) + 1.0) / (probs.sum(0) + onehot.sum(0) + 1.0)
    if weight is None:
        return per_class.mean()
    return (per_class * weight).sum() / weight.sum().clamp_min(1e-12)


def _old_focal(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    flat, t = _old_valid(logits, target)
    if t.numel() == 0:
        return logits.float().sum() * 0.0
    logp = flat.log_softmax(1).gather(1, t[:, None])[:, 0]
    loss = -((1.0 - logp.exp()) ** 2.0) * logp
    if weight is None:
        return loss.mean()
    w = weight.to(loss)[t]
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def _old_lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    gts = gt_sorted.sum()
    jaccard = 1.0 - (gts - gt_sorted.cumsum(0)) / (gts + (1.0 - gt_sorted).cumsum(0))
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def _old_lovasz(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    flat, t = _old_valid(logits, target)
    if t.numel() == 0:
        return logits.float().sum() * 0.0
    probs = flat.softmax(1)
    losses, present = [], []
    for c in range(probs.shape[1]):
        fg = (t == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors_sorted, perm = torch.sort((fg - probs[:, c]).abs(), descending=True)
        losses.append(torch.dot(errors_sorted, _old_lovasz_grad(fg[perm])))
        present.append(c)
    stacked = torch.stack(losses)
    if weight is None:
        return stacked.mean()
    w = weight.to(stacked)[torch.tensor(present)]
    return (stacked * w).sum() / w.sum().clamp_min(1e-12)


OLD = {"dice": _old_dice, "focal": _old_focal, "lovasz": _old_lovasz}


def _case(seed: int, ignored: float, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and targets (class 3 absent, a share of pixels 255, a few exact ties)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 9, 11, generator=g) * 3
    logits[:, :, :2, :2] = 0.5  # equal probabilities: tied errors
    target = torch.randint(0, classes, (2, 9, 11), generator=g)
    target[target == 3] = 0
    target[torch.rand(target.shape, generator=g) < ignored] = 255
    return logits, target


@pytest.mark.parametrize("name", sorted(OLD))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignored", [0.0, 0.3, 1.0])
def test_same_values_and_gradients_as_before(name: str, seed: int, weighted: bool, ignored: float) -> None:
    logits, target = _case(seed, ignored)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5]) if weighted else None
    got_in, want_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = build_loss(name, weight)(got_in, target)
    want = OLD[name](want_in, target, weight)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    got.backward()
    want.backward()
    assert got_in.grad is not None and want_in.grad is not None
    # at tied errors the Lovász gradient is a subgradient chosen by the sort's order among equals (before as now)
    away = torch.ones_like(logits, dtype=torch.bool)
    away[:, :, :2, :2] = name != "lovasz"
    assert torch.allclose(got_in.grad[away], want_in.grad[away], rtol=1e-4, atol=1e-7)


class _HostSyncs(TorchDispatchMode):
    """Records the operators that make the host wait for the device (``.item()``/``bool()``, mask selection)."""

    SYNCING = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select", "aten::item")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func._schema.name
        bool_index = name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
        )
        if name in self.SYNCING or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("spec", ["dice", "focal", "lovasz", "ce+dice+focal+lovasz"])
def test_no_operator_that_waits_for_the_device(spec: str) -> None:
    logits, target = _case(0, 0.3)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5])
    x = logits.clone().requires_grad_()
    with _HostSyncs() as mode:
        build_loss(spec, weight)(x, target).backward()
    assert mode.seen == [], f"{spec}: host syncs {mode.seen}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_the_probe_sees_the_old_formulas_syncs() -> None:
    logits, target = _case(0, 0.3)
    with _HostSyncs() as mode:
        _old_lovasz(logits, target, None)
    assert "aten::nonzero" in mode.seen or "aten::index" in mode.seen
    assert math.isfinite(float(_old_focal(logits, target, None)))
