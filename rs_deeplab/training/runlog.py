"""What a training run writes besides checkpoints: ``metrics.csv``, TensorBoard events and PNG plots.

The plots are drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas: no pyplot, no backend switch,
so a caller's matplotlib (a notebook's interactive backend) is left as it was.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rs_deeplab.cli.diskspace import space_checked
from rs_deeplab.evaluation.metrics import Scores
from rs_deeplab.geo.raster import atomic_output

log = logging.getLogger("rs_deeplab.train")


class RunLog:
    """Rank-0 writer of ``metrics.csv`` (one row per logged step or evaluation) and TensorBoard events.

    On resume, rows after the checkpoint's iteration are dropped so the CSV matches the restored state.
    """

    def __init__(self, run_dir: Path, class_names: Sequence[str], *, start_iteration: int, enabled: bool) -> None:
        self.path = run_dir / "metrics.csv"
        self.class_names = list(class_names)
        self.enabled = enabled
        self.columns = ["iteration", "split", "loss", "lr", "mIoU", "mF1", "OA"]
        self.columns += [f"IoU/{c}" for c in class_names]
        self.writer: Any = None
        if not enabled:
            return
        self._truncate(start_iteration)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_iteration + 1)

    def _truncate(self, start_iteration: int) -> None:
        rows = self.rows() if self.path.exists() else []
        kept = [r for r in rows if int(r["iteration"]) <= start_iteration]
        with atomic_output(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(kept)

    def rows(self) -> list[dict[str, str]]:
        """All rows written so far."""
        with self.path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def _append(self, row: dict[str, Any]) -> None:
        with space_checked(self.path), self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerow(row)

    def _scalars(self, values: dict[str, float], iteration: int) -> None:
        """Add TensorBoard scalars (the event writer's thread reports a full disk at the next call)."""
        with space_checked(self.path.parent / "tensorboard"):
            for key, value in values.items():
                self.writer.add_scalar(key, value, iteration)

    def train(self, iteration: int, loss: float, lr: float) -> None:
        """Record the mean training loss since the last log and the current learning rate."""
        log.info("iter %d  loss %.4f  lr %.2e", iteration, loss, lr)
        if not self.enabled:
            return
        self._append({"iteration": iteration, "split": "train", "loss": f"{loss:.6f}", "lr": f"{lr:.6e}"})
        self._scalars({"train/loss": loss, "train/lr": lr}, iteration)

    def evaluation(self, iteration: int, result: Scores) -> None:
        """Record validation scores."""
        log.info(
            "iter %d  val mIoU %.4f  mF1 %.4f  OA %.4f", iteration, result.miou, result.mean_f1, result.overall_accuracy
        )
        if not self.enabled:
            return
        row: dict[str, Any] = {
            "iteration": iteration,
            "split": "val",
            "mIoU": f"{result.miou:.6f}",
            "mF1": f"{result.mean_f1:.6f}",
            "OA": f"{result.overall_accuracy:.6f}",
        }
        row.update({f"IoU/{c}": f"{v:.6f}" for c, v in zip(self.class_names, result.iou, strict=True)})
        self._append(row)
        self._scalars({f"val/{key}": value for key, value in result.as_dict(self.class_names).items()}, iteration)

    def close(self) -> None:
        """Flush TensorBoard events."""
        if self.writer is not None:
            with space_checked(self.path.parent / "tensorboard"):
                self.writer.close()


def plot_curves(metrics_csv: Path, out: Path) -> Path:
    """Loss, learning rate and validation mIoU against iteration, as three panels in one PNG."""
    with metrics_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    fig = _figure((13, 3.6))
    axes = fig.subplots(1, 3)
    panels = [(train, "loss", "training loss"), (train, "lr", "learning rate"), (val, "mIoU", "validation mIoU")]
    for ax, (data, key, title) in zip(axes, panels, strict=True):
        ax.plot([int(r["iteration"]) for r in data], [float(r[key]) for r in data], marker="." if data is val else "")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return out


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], out: Path) -> Path:
    """Row-normalised confusion matrix (truth rows, prediction columns) as a PNG heat map."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig = _figure((size, size))
    ax = fig.subplots()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    if len(class_names) <= 21:
        for (i, j), v in np.ndenumerate(norm):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return out


def _figure(size: tuple[float, float]) -> Any:
    """A figure drawn by its own Agg canvas (not registered with pyplot; freed with its last reference)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig
