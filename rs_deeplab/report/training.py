"""The training page: ``report.html`` in a run folder, rewritten atomically at each evaluation (no torch).

It shows the loss and learning-rate curves and the validation mIoU and per-class IoU over iterations (all from
``metrics.csv``, one plotted point per evaluation), the last confusion matrix, a grid of fixed validation crops
(image, truth, prediction), the config and runtime, and a warning panel. While the run's status is ``running``
the page reloads itself every few seconds (``static/rs_deeplab/training.js``); it stops once the status says the
run ended, or when the page has not been rewritten for far longer than the run's evaluations take (a killed run).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rs_deeplab.report.charts import Series, confusion_table, hex_colour, legend, line_chart
from rs_deeplab.report.page import PageOutput, esc, files_folder, html_page, js_global, write_page

PAGE_NAME = "report.html"
"""The training page's name in a run folder."""
REFRESH_SECONDS = 10
"""How often a running run's page reloads itself."""
STATUSES = ("running", "finished", "stopped")


@dataclass(frozen=True)
class Crop:
    """A fixed validation crop: display image (``H × W × 3`` uint8), truth and prediction (``H × W`` class ids)."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray | None = None


@dataclass
class TrainingView:
    """Everything the training page shows.

    Attributes:
        title: The page's title (the run's name).
        status: ``running``, ``finished`` or ``stopped``.
        rows: ``metrics.csv`` rows (``split`` ``train`` with loss and lr, ``val`` with mIoU and ``IoU/<class>``).
        class_names: Class names in index order.
        colours: One RGB colour per class.
        confusion: The last evaluation's confusion matrix (rows truth), or None before the first.
        crops: The fixed validation crops, with the last evaluation's predictions.
        config_text: The resolved config (YAML).
        runtime: Runtime facts as (label, value) rows.
        warnings: Lines for the warning panel.
        stale_after: Seconds after which a ``running`` page stops reloading (the run must have died).
        written: When the page was written (seconds since the epoch).
    """

    title: str
    status: str
    rows: Sequence[dict[str, str]]
    class_names: Sequence[str]
    colours: Sequence[tuple[int, int, int]]
    confusion: np.ndarray | None = None
    crops: Sequence[Crop] = ()
    config_text: str = ""
    runtime: Sequence[tuple[str, str]] = ()
    warnings: Sequence[str] = ()
    stale_after: float = 3600.0
    refresh: float = REFRESH_SECONDS
    written: float = field(default_factory=time.time)


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (empty when it does not exist yet)."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _charts(view: TrainingView) -> str:
    train = [r for r in view.rows if r.get("split") == "train"]
    val = [r for r in view.rows if r.get("split") == "val"]
    tx = [float(r["iteration"]) for r in train]
    vx = [float(r["iteration"]) for r in val]
    loss = line_chart("loss", "training loss", [Series("loss", tx, [_number(r.get("loss")) for r in train])])
    lr = line_chart("lr", "learning rate", [Series("lr", tx, [_number(r.get("lr")) for r in train], "#ff7f0e")])
    miou = line_chart(
        "miou",
        "validation mIoU",
        [Series("mIoU", vx, [_number(r.get("mIoU")) for r in val], "#2ca02c", points=True)],
        ylim=(0.0, 1.0),
    )
    per_class = [
        Series(n, vx, [_number(r.get(f"IoU/{n}")) for r in val], hex_colour(c), points=True)
        for n, c in zip(view.class_names, view.colours, strict=True)
    ]
    iou = line_chart("iou", "validation IoU per class", per_class, ylim=(0.0, 1.0))
    return f'<div class="charts">{loss}{lr}{miou}<div>{iou}{legend(per_class)}</div></div>'


def _colour_labels(labels: np.ndarray, colours: Sequence[tuple[int, int, int]]) -> np.ndarray:
    palette = np.zeros((256, 3), np.uint8)  # 255 (ignore) and unknown ids: black
    palette[: len(colours)] = np.asarray(colours, np.uint8).reshape(-1, 3)
    return palette[labels.astype(np.uint8)]


def crop_grid(view: TrainingView, folder: Path, url: str, *, scored_classes: int | None = None) -> str:
    """Write the crops' PNGs into ``folder/crops`` and return their table (``url``: the folder's name in the page).

    Columns: image, truth, prediction and, with ``right_wrong`` (the number of scored classes), where the prediction
    is right (green) or wrong (red) with ``scored_classes`` classes scored; pixels whose truth is not one are black.
    """
    if not view.crops:
        return "<p>No validation crops.</p>"
    (folder / "crops").mkdir()
    kinds = ("image", "truth", "prediction") + (("right / wrong",) if scored_classes is not None else ())
    rows = []
    for i, crop in enumerate(view.crops):
        cells = []
        for kind in kinds:
            rgb = _crop_picture(crop, kind, view.colours, scored_classes)
            if rgb is None:
                cells.append('<td class="none">not evaluated yet</td>')
                continue
            name = f"crops/{i}_{kind.replace(' / ', '_')}.png"
            Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(folder / name, format="PNG")
            cells.append(f'<td><img class="crop" alt="{kind} {i}" src="{esc(url)}/{name}"></td>')
        rows.append(f"<tr><th>{esc(crop.name)}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{esc(kind)}</th>" for kind in ("crop", *kinds))
    return f'<table id="crops" class="crops"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


RIGHT_WRONG = ((0, 170, 0), (230, 0, 0))
"""Colours of right and wrong pixels in a crop (those of ``static/rs_deeplab/evaluation.js``'s map)."""


def right_wrong(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """0 where ``prediction`` equals ``truth``, 1 where not, 255 where the pixel is not scored (truth ignore)."""
    t, p = truth.astype(np.int64), prediction.astype(np.int64)
    scored = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.where(scored, (t != p).astype(np.uint8), 255).astype(np.uint8)


def _crop_picture(
    crop: Crop, kind: str, colours: Sequence[tuple[int, int, int]], num_classes: int | None
) -> np.ndarray | None:
    """The RGB picture of one column of a crop, or None where there is nothing to show yet."""
    data = {"image": crop.image, "truth": crop.truth, "prediction": crop.prediction}.get(kind)
    if data is not None:
        return data if data.ndim == 3 else _colour_labels(data, colours)
    if crop.prediction is None or num_classes is None:
        return None
    return _colour_labels(right_wrong(crop.truth, crop.prediction, num_classes), RIGHT_WRONG)


def _body(view: TrainingView, crops: str) -> str:
    val = [r for r in view.rows if r.get("split") == "val"]
    last = val[-1] if val else None
    headline = (
        f"iteration {esc(last['iteration'])}: mIoU {_number(last.get('mIoU')):.4f}" if last else "no evaluation yet"
    )
    warnings = "".join(f"<li>{esc(w)}</li>" for w in view.warnings)
    panel = '<p id="warnings" class="ok">No warnings.</p>'
    if view.warnings:
        panel = (
            f'<details id="warnings" class="warnings" open><summary>{len(view.warnings)} warning(s)</summary>'
            f"<ul>{warnings}</ul></details>"
        )
    runtime = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in view.runtime)
    matrix = (
        "<p>No evaluation yet.</p>" if view.confusion is None else confusion_table(view.confusion, view.class_names)
    )
    return f"""<main class="report">
<h1>{esc(view.title)}</h1>
<p id="status" class="status {esc(view.status)}" data-status="{esc(view.status)}">{esc(view.status)}; {headline};
written {esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view.written)))}<span id="reload"></span></p>
{panel}
<h2>curves</h2>
{_charts(view)}
<h2>last confusion matrix <small>(rows: truth, normalised per row)</small></h2>
{matrix}
<h2>validation crops</h2>
{crops}
<h2>runtime</h2>
<table id="runtime" class="card">{runtime}</table>
<h2>config</h2>
<details><summary>the resolved config (config.yaml)</summary><pre id="config">{esc(view.config_text)}</pre></details>
</main>"""


def write_training_page(page: Path, view: TrainingView) -> PageOutput:
    """Write the training page ``page`` (``<run>/report.html``) and its folder atomically.

    Raises:
        InputError: The page cannot be written (its folder is gone or not writable); one line.
        OSError: The run folder vanished while the page was written.
    """
    if view.status not in STATUSES:
        raise ValueError(f"status {view.status!r}: expected one of {', '.join(STATUSES)}")

    def build(folder: Path) -> str:
        crops = crop_grid(view, folder, files_folder(page).name)
        evaluations = sum(1 for r in view.rows if r.get("split") == "val")
        run = {
            "status": view.status,
            "written": view.written,
            "staleAfter": view.stale_after,
            "refresh": view.refresh,
            "evaluations": evaluations,
        }
        (folder / "run.js").write_text(js_global("RS_RUN", run), encoding="utf-8")
        return html_page(
            view.title,
            files_folder(page).name,
            _body(view, crops),
            styles=("lib/rs_deeplab/report.css", "lib/rs_deeplab/training.css"),
            scripts=("run.js", "lib/rs_deeplab/training.js"),
        )

    return write_page(page, build, libraries=("rs_deeplab",))


def runtime_rows(runtime: dict[str, Any], extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, str]]:
    """``runtime.json``'s facts as (label, value) rows, then ``extra``; empty values left out."""
    labels = {
        "device": "device",
        "precision": "precision",
        "world_size": "GPUs / processes",
        "compile": "compiled",
        "channels_last": "channels last",
        "sync_bn": "SyncBN",
        "grad_scaler": "grad scaler",
        "torch": "torch",
        "cuda": "CUDA",
    }
    rows = [(labels.get(k, k), v) for k, v in runtime.items()] + list(extra)
    return [(k, str(v)) for k, v in rows if v not in (None, "")]
