"""Segmentation losses for imbalanced data: cross-entropy, Dice, Lovász-softmax, focal, and weighted sums of them.

Every loss takes ``(N, C, H, W)`` logits (any float dtype; computed in float32, so AMP/bf16 logits are fine) and
``(N, H, W)`` int64 targets, ignores label 255 and accepts optional per-class weights. A loss spec is a sum of
terms ``[weight*]name``, e.g. ``ce``, ``ce+dice`` or ``ce+0.5*dice`` (:mod:`rs_deeplab.loss_spec`, :func:`build_loss`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rs_deeplab.classes import IGNORE_INDEX
from rs_deeplab.loss_spec import parse_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1.0


def _valid(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, C)`` float32 logits and ``(P,)`` targets of the pixels whose label is not 255."""
    c = logits.shape[1]
    flat = logits.float().permute(0, 2, 3, 1).reshape(-1, c)
    t = target.reshape(-1)
    keep = t != IGNORE_INDEX
    return flat[keep], t[keep]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise cross-entropy, class-weighted mean over non-ignored pixels (torch's definition)."""
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - (2 Σ p·y + s) / (Σ p + Σ y + s)`` per class over the batch (s = 1), averaged over the classes.

    ``p`` are softmax probabilities, ``y`` the one-hot targets, sums over non-ignored pixels; class weights make
    the average a weighted one.
    """
    probs, t = _valid(logits, target)
    probs = probs.softmax(1)
    onehot = F.one_hot(t, probs.shape[1]).to(probs.dtype)
    inter = (probs * onehot).sum(0)
    denom = probs.sum(0) + onehot.sum(0)
    per_class = 1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
    if weight is None:
        return per_class.mean()
    w = weight.to(per_class)
    return (per_class * w).sum() / w.sum().clamp_min(1e-12)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss ``-(1 - p_t)^γ log p_t`` (γ = 2), class-weighted mean over non-ignored pixels."""
    flat, t = _valid(logits, target)
    if t.numel() == 0:
        return logits.float().sum() * 0.0
    logp = flat.log_softmax(1).gather(1, t[:, None])[:, 0]
    loss = -((1.0 - logp.exp()) ** FOCAL_GAMMA) * logp
    if weight is None:
        return loss.mean()
    w = weight.to(loss)[t]
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et al. 2018, Alg. 1)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász-softmax over the batch's non-ignored pixels, averaged over the classes present in the targets.

    Class weights make the average a weighted one.
    """
    flat, t = _valid(logits, target)
    if t.numel() == 0:
        return logits.float().sum() * 0.0
    probs = flat.softmax(1)
    losses, present = [], []
    for c in range(probs.shape[1]):
        fg = (t == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
        present.append(c)
    stacked = torch.stack(losses)
    if weight is None:
        return stacked.mean()
    w = weight.to(stacked)[torch.tensor(present, device=stacked.device)]
    return (stacked * w).sum() / w.sum().clamp_min(1e-12)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "ce": cross_entropy,
    "dice": dice_loss,
    "lovasz": lovasz_softmax,
    "focal": focal_loss,
}


def build_loss(spec: str = "ce", class_weights: torch.Tensor | None = None) -> LossFn:
    """The loss ``spec`` names (see :func:`parse_loss`) as one function of ``(logits, target)``."""
    terms = parse_loss(spec)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for w, name in terms:
            total = total + w * LOSSES[name](logits, target, class_weights)
        return total

    return loss
