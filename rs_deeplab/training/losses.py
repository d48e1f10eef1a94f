"""Segmentation losses for imbalanced data: cross-entropy, Dice, Lovász-softmax, focal, and weighted sums of them.

Every loss takes ``(N, C, H, W)`` logits (any float dtype; computed in float32, so AMP/bf16 logits are fine) and
``(N, H, W)`` int64 targets, ignores label 255 and accepts optional per-class weights. A loss spec is a sum of
terms ``[weight*]name``, e.g. ``ce``, ``ce+dice`` or ``ce+0.5*dice`` (:mod:`rs_deeplab.config.loss_spec`,
:func:`build_loss`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rs_deeplab.config.loss_spec import parse_loss
from rs_deeplab.labels.classes import IGNORE_INDEX

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1.0


def _flat(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P, C)`` float32 logits, ``(P,)`` targets with 255 replaced by 0, and the ``(P,)`` bool mask of the pixels
    whose label is not 255.

    Every pixel stays (ignored ones are masked out of the sums): selecting the kept pixels by a boolean mask would
    make the host wait for the device to count them, at every step.
    """  # noqa: D205
    c = logits.shape[1]
    flat = logits.float().permute(0, 2, 3, 1).reshape(-1, c)
    t = target.reshape(-1)
    keep = t != IGNORE_INDEX
    return flat, torch.where(keep, t, torch.zeros_like(t)), keep


def _one_hot(t: torch.Tensor, keep: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(P, C)`` one-hot targets, all zero on ignored pixels (no device-side range check, so no host sync)."""
    classes = torch.arange(num_classes, device=t.device)
    return ((t[:, None] == classes) & keep[:, None]).to(dtype)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise cross-entropy, class-weighted mean over non-ignored pixels (torch's definition)."""
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - (2 Σ p·y + s) / (Σ p + Σ y + s)`` per class over the batch (s = 1), averaged over the classes.

    ``p`` are softmax probabilities, ``y`` the one-hot targets, sums over non-ignored pixels; class weights make
    the average a weighted one.
    """
    flat, t, keep = _flat(logits, target)
    probs = flat.softmax(1) * keep[:, None].to(flat.dtype)
    onehot = _one_hot(t, keep, probs.shape[1], probs.dtype)
    inter = (probs * onehot).sum(0)
    denom = probs.sum(0) + onehot.sum(0)
    per_class = 1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
    if weight is None:
        return per_class.mean()
    w = weight.to(per_class)
    return (per_class * w).sum() / w.sum().clamp_min(1e-12)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss ``-(1 - p_t)^γ log p_t`` (γ = 2), class-weighted mean over non-ignored pixels (0 if none)."""
    flat, t, keep = _flat(logits, target)
    logp = flat.log_softmax(1).gather(1, t[:, None])[:, 0]
    loss = torch.where(keep, -((1.0 - logp.exp()) ** FOCAL_GAMMA) * logp, 0.0)
    if weight is None:
        return loss.sum() / keep.sum().clamp_min(1).to(loss)
    w = torch.where(keep, weight.to(loss)[t], 0.0)
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et al. 2018, Alg. 1).

    ``gt_sorted`` is ``(P,)``, or ``(P, C)`` for ``C`` classes at once (each column sorted by its own errors).
    """
    gts = gt_sorted.sum(0)
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.shape[0] > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász-softmax over the batch's non-ignored pixels, averaged over the classes present in the targets.

    Class weights make the average a weighted one; no pixel to learn from gives 0. All classes are sorted at
    once; ignored pixels get error -1, so they sort after every real error (0..1) and are masked out of the sum.
    """
    flat, t, keep = _flat(logits, target)
    probs = flat.softmax(1)
    fg = _one_hot(t, keep, probs.shape[1], probs.dtype)
    errors = torch.where(keep[:, None], (fg - probs).abs(), -1.0)
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    per_class = (errors_sorted.clamp_min(0.0) * lovasz_grad(fg.gather(0, perm))).sum(0)
    present = (fg.sum(0) > 0).to(per_class.dtype)
    w = present if weight is None else weight.to(per_class) * present
    return (per_class * w).sum() / w.sum().clamp_min(1e-12)


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
