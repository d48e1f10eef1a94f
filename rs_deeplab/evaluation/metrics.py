"""Segmentation metrics from a confusion matrix: per-class IoU and F1, mIoU, mean F1 and overall accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rs_deeplab.labels.classes import IGNORE_INDEX


def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Count ``(truth, pred)`` pairs into a ``(C, C)`` int64 matrix; rows are truth, columns predictions.

    Pixels whose truth is ``ignore_index`` are skipped; so are predictions outside ``[0, C)`` (nodata), which
    count as neither right nor wrong.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    t = truth.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


@dataclass(frozen=True)
class Scores:
    """Scores of one confusion matrix. Classes absent from both truth and prediction have NaN IoU/F1."""

    iou: np.ndarray
    f1: np.ndarray
    miou: float
    mean_f1: float
    overall_accuracy: float
    pixels: int

    def as_dict(self, class_names: Sequence[str]) -> dict[str, float]:
        """Flat ``{"mIoU": .., "mF1": .., "OA": .., "IoU/<class>": .., "F1/<class>": ..}`` for logs and CSVs."""
        out = {"mIoU": self.miou, "mF1": self.mean_f1, "OA": self.overall_accuracy}
        for name, iou, f1 in zip(class_names, self.iou, self.f1, strict=True):
            out[f"IoU/{name}"] = float(iou)
            out[f"F1/{name}"] = float(f1)
        return out


def scores(cm: np.ndarray) -> Scores:
    """Per-class IoU = TP / (TP + FP + FN), F1 = 2TP / (2TP + FP + FN); means over classes that occur."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (tp + fp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    total = cm.sum()
    present = (tp + fp + fn) > 0
    return Scores(
        iou=iou,
        f1=f1,
        miou=float(np.mean(iou[present])) if present.any() else float("nan"),
        mean_f1=float(np.mean(f1[present])) if present.any() else float("nan"),
        overall_accuracy=float(tp.sum() / total) if total else float("nan"),
        pixels=int(total),
    )


def markdown_table(result: Scores, class_names: Sequence[str]) -> str:
    """A Markdown table of per-class IoU and F1 (in %) with the means and overall accuracy."""
    lines = ["| class | IoU | F1 |", "|---|---:|---:|"]
    for name, iou, f1 in zip(class_names, result.iou, result.f1, strict=True):
        lines.append(f"| {name} | {100 * iou:.2f} | {100 * f1:.2f} |")
    lines.append(f"| **mean** | **{100 * result.miou:.2f}** | **{100 * result.mean_f1:.2f}** |")
    lines.append(f"\nOverall accuracy: {100 * result.overall_accuracy:.2f}% over {result.pixels} pixels.")
    return "\n".join(lines)


def collapse_warning(cm: np.ndarray, class_names: Sequence[str]) -> str | None:
    """One line when the model has collapsed, else None.

    Collapsed: it predicts one class for every pixel while the truth holds several, or a class that has labels in
    the evaluated data gets IoU 0 (never predicted right). The usual causes are class imbalance and too few
    iterations; the line names the remedies.
    """
    cm = np.asarray(cm)
    labelled = cm.sum(axis=1) > 0
    predicted = np.flatnonzero(cm.sum(axis=0) > 0)
    hints = "try train.class_weights: auto, train.loss: ce+dice, data.sampling: balanced or more iterations"
    if len(predicted) == 1 and labelled.sum() > 1:
        only = class_names[int(predicted[0])]
        n = int(labelled.sum())
        return f"the model predicts {only!r} everywhere (collapsed to one class) where {n} classes have labels; {hints}"
    zero = [class_names[int(i)] for i in np.flatnonzero(labelled & (np.diag(cm) == 0))]
    if zero:
        return f"IoU 0 for class(es) with validation labels: {', '.join(zero)}; {hints}"
    return None
