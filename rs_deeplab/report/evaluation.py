"""The evaluation page: ``<out>.html`` beside ``evaluate.py``'s report folder ``<out>`` (no torch).

It shows the per-class IoU, F1, precision and recall and the confusion matrix of the whole evaluation, and a map
of each scene where the prediction is right and wrong. The map's layer is an error raster built block by block
(memory flat: one block of prediction and truth at a time) with the truth's class id in band 1 and the
prediction's in band 2, masked where the pixel is not scored (truth ignore, prediction nodata: the rule of
:mod:`rs_deeplab.evaluation.scenes`). It is cut into a lossless PNG pyramid
(:func:`rs_deeplab.report.tiles.write_scene_pyramid`) and removed; the page colours the tiles in the browser with
an SVG filter (``static/rs_deeplab/evaluation.js``): for all classes, right (green) or wrong (red); for one class,
true positives (green), false positives (red) and false negatives (blue). Choosing a class never rewrites a tile.

A checkpoint scored on a data split (``evaluate.py CHECKPOINT``) has no scene to map: its page
(:func:`write_checkpoint_page`) shows the same scores and matrix, the model's details, and a grid of a few fixed
crops of the split (image, truth, prediction, right / wrong) drawn by the training page's crop renderer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from rs_deeplab.cli.errors import InputError
from rs_deeplab.evaluation.scenes import DEFAULT_BLOCK_SIZE, block_windows
from rs_deeplab.geo.raster import PathLike, open_raster
from rs_deeplab.labels.classes import IGNORE_INDEX, ClassScheme
from rs_deeplab.labels.decoding import decode_label
from rs_deeplab.remote.scenes import scene_name
from rs_deeplab.report.charts import confusion_table, hex_colour
from rs_deeplab.report.page import PageOutput, check_page_path, esc, files_folder, html_page, js_global, write_page
from rs_deeplab.report.prediction import class_colours, raster_grid
from rs_deeplab.report.tiles import write_scene_pyramid
from rs_deeplab.report.training import RIGHT_WRONG, Crop, TrainingView, crop_grid

EXTRA_ZOOM = 3
"""Levels the map zooms in beyond full resolution."""


def evaluation_page_path(out: Path) -> Path:
    """The page of report folder ``out``: ``<out>.html`` beside it."""
    return out.resolve().parent / f"{out.resolve().name}.html"


def check_evaluation_page(out: Path) -> Path:
    """Check (before scoring) that the page of report folder ``out`` can be written; return its path.

    Raises:
        InputError: One line naming the path and the fix.
    """
    page = evaluation_page_path(out)
    if page.parent.is_dir():  # else evaluate_scenes creates it with the report folder
        check_page_path(page)
    return page


def write_error_raster(
    pred_path: PathLike,
    truth_path: PathLike,
    out: Path,
    *,
    num_classes: int,
    scheme: ClassScheme | None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> None:
    """Write the 3-band uint8 error raster of one scene (truth id, prediction id, 0), masked where not scored."""
    with open_raster(pred_path) as pred, open_raster(truth_path) as truth:
        nodata = pred.nodata if pred.nodata is not None and float(pred.nodata).is_integer() else None
        profile = {
            "driver": "GTiff",
            "width": pred.width,
            "height": pred.height,
            "count": 3,
            "dtype": "uint8",
            "crs": pred.crs,
            "transform": pred.transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as dst:
            for window in block_windows(pred.height, pred.width, block_size):
                p = pred.read(1, window=window).astype(np.int64)
                t = decode_label(truth.read(window=window), scheme).astype(np.int64)
                if truth.count == 1 and truth.nodata is not None and not math.isnan(truth.nodata):
                    t[truth.read(1, window=window) == truth.nodata] = IGNORE_INDEX
                valid = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
                if nodata is not None:
                    valid &= p != int(nodata)
                bands = np.stack([np.where(valid, t, 255), np.where(valid, p, 255), np.zeros_like(p)])
                dst.write(bands.astype(np.uint8), window=window)
                dst.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)


def class_rows(cm: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per class: TP, FP, FN, IoU, F1, precision and recall (None where undefined)."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = []
    for i, name in enumerate(names):
        tp, fp, fn = int(cm[i, i]), int(cm[:, i].sum() - cm[i, i]), int(cm[i, :].sum() - cm[i, i])

        def ratio(num: int, den: int) -> float | None:
            return num / den if den else None

        rows.append(
            {
                "class": name,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "iou": ratio(tp, tp + fp + fn),
                "f1": ratio(2 * tp, 2 * tp + fp + fn),
                "precision": ratio(tp, tp + fp),
                "recall": ratio(tp, tp + fn),
            }
        )
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _value(value: float | None) -> str:
    """A score for a ``data-value`` attribute: its exact ``repr``, empty where undefined."""
    return "" if value is None or math.isnan(value) else repr(value)


def _scores_table(rows: Sequence[dict[str, Any]], means: Mapping[str, float | None]) -> str:
    keys = ("iou", "f1", "precision", "recall")
    body = []
    for i, r in enumerate(rows):
        cells = "".join(f'<td data-key="{k}" data-value="{_value(r[k])}">{_pct(r[k])}</td>' for k in keys)
        counts = "".join(f'<td data-key="{k}">{r[k]:,}</td>' for k in ("tp", "fp", "fn"))
        body.append(f'<tr data-class="{i}"><th>{esc(r["class"])}</th>{cells}{counts}</tr>')
    cells = "".join(
        f'<td data-key="{k}" data-value="{_value(means[k])}">{_pct(means[k])}</td>' for k in ("mIoU", "mF1")
    )
    foot = f'<tr class="mean"><th>mean</th>{cells}<td colspan="5"></td></tr>'
    return (
        '<table id="scores" class="scores"><thead><tr><th>class</th><th>IoU %</th><th>F1 %</th>'
        "<th>precision %</th><th>recall %</th><th>TP px</th><th>FP px</th><th>FN px</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody><tfoot>{foot}</tfoot></table>"
    )


def _scores_section(cm: np.ndarray, names: Sequence[str], means: Mapping[str, float | None]) -> str:
    """The per-class table and the normalised confusion matrix: what every evaluation page shows."""
    return f"""<h2>per class</h2>
{_scores_table(class_rows(cm, names), means)}
<h2>confusion matrix <small>(rows: truth, normalised per row; pixel counts in the tooltips)</small></h2>
{confusion_table(cm, names)}"""


def _body(report: Mapping[str, Any], names: Sequence[str], scenes: Sequence[dict[str, Any]], title: str) -> str:
    total = report["total"]
    s = total["scores"]
    cm = np.asarray(s["confusion_matrix"], dtype=np.int64)
    options = "".join(f'<option value="{i}">{esc(n)}</option>' for i, n in enumerate(names))
    scene_options = "".join(f'<option value="{i}">{esc(sc["name"])}</option>' for i, sc in enumerate(scenes))
    notes = "".join(f'<p class="note">{esc(n)}</p>' for sc in scenes for n in sc["notes"])
    return f"""<main class="report">
<h1>{esc(title)}</h1>
<p id="summary">mIoU <b id="miou">{_pct(s["mIoU"])} %</b>, mean F1 {_pct(s["mF1"])} %, overall accuracy
<span id="oa">{_pct(s["OA"])}</span> % over <span id="pixels">{s["pixels"]:,}</span> scored pixels of {len(scenes)}
scene(s); {total["ignored_truth_pixels"]:,} ignored truth pixels, {total["unpredicted_pixels"]:,} unpredicted.</p>
{_scores_section(cm, names, s)}
<h2>where the prediction is right and wrong</h2>
{notes}
<div class="controls">
<label>scene <select id="scene">{scene_options}</select></label>
<label>show <select id="error-class"><option value="-1">all classes: right / wrong</option>{options}</select></label>
<label>opacity <input id="opacity" type="range" min="0" max="100" value="85"></label>
<span id="error-legend"></span>
</div>
<div class="mapbox"><div id="map"></div></div>
</main>"""


def write_evaluation_page(
    page: Path,
    report: Mapping[str, Any],
    *,
    scheme: ClassScheme | None = None,
    colours: Mapping[int, Sequence[int]] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    title: str | None = None,
) -> PageOutput:
    """Write the evaluation page of an ``evaluate_scenes`` report (its ``scenes`` name prediction and truth).

    Raises:
        InputError: The page cannot be written, or a raster cannot be read again; one line.
    """
    names = list(report["classes"])
    rgb = class_colours(len(names), colours)

    def build(folder: Path) -> str:
        scenes = []
        for i, entry in enumerate(report["scenes"]):
            errors = folder / f"errors_{i}.tif"
            write_error_raster(
                entry["prediction"],
                entry["truth"],
                errors,
                num_classes=len(names),
                scheme=scheme,
                block_size=block_size,
            )
            with rasterio.open(errors) as ds:
                grid = raster_grid(ds)
            stats = write_scene_pyramid(errors, folder / "tiles" / str(i), bands=(1, 2, 3), suffix="png")
            errors.unlink()
            for sidecar in folder.glob(f"errors_{i}.tif.*"):
                sidecar.unlink()
            scenes.append(
                {
                    "name": scene_name(entry["prediction"]),
                    "tiles": f"tiles/{i}",
                    "notes": grid.notes,
                    "grid": {
                        **{k: getattr(grid, k) for k in ("x0", "y0", "a", "e", "width", "height", "crs")},
                        "geographic": grid.geographic,
                        "bounds": grid.bounds(),
                    },
                    "maxNativeZoom": stats.max_zoom,
                    "maxZoom": stats.max_zoom + EXTRA_ZOOM,
                }
            )
        classes = [{"id": i, "name": n, "colour": list(c)} for i, (n, c) in enumerate(zip(names, rgb, strict=True))]
        data = {"folder": files_folder(page).name, "scenes": scenes, "classes": classes}
        (folder / "evaluation.js").write_text(js_global("RS_EVAL", data), encoding="utf-8")
        name = title or f"evaluation: {page.stem}"
        return html_page(
            name,
            files_folder(page).name,
            _body(report, names, scenes, name),
            styles=("lib/leaflet/leaflet.css", "lib/rs_deeplab/report.css", "lib/rs_deeplab/training.css"),
            scripts=(
                "lib/leaflet/leaflet.js",
                "evaluation.js",
                "lib/rs_deeplab/map.js",
                "lib/rs_deeplab/evaluation.js",
            ),
        )

    try:
        return write_page(page, build, libraries=("leaflet", "rs_deeplab"))
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{page}: cannot read a raster for the page ({exc})") from None


def _checkpoint_body(
    report: Mapping[str, Any], names: Sequence[str], details: Sequence[tuple[str, str]], crops: str, title: str
) -> str:
    cm = np.asarray(report["confusion_matrix"], dtype=np.int64)
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in details)
    key = " ".join(
        f'<span class="key"><span class="swatch" style="background:{hex_colour(c)}"></span>{text}</span>'
        for c, text in zip(RIGHT_WRONG, ("right", "wrong"), strict=True)
    )
    return f"""<main class="report">
<h1>{esc(title)}</h1>
<p id="summary">mIoU <b id="miou">{_pct(report["mIoU"])} %</b>, mean F1 {_pct(report["mF1"])} %, overall accuracy
<span id="oa">{_pct(report["OA"])}</span> % over <span id="pixels">{int(cm.sum()):,}</span> scored pixels of split
<b id="split">{esc(report["split"])}</b>.</p>
<h2>model</h2>
<table id="model" class="card">{rows}</table>
{_scores_section(cm, names, report)}
<h2>fixed crops of the split <small>(their centres; right / wrong: {key}, black: not scored)</small></h2>
<p class="note">A checkpoint scored on a data split has no scene to map: the map of right and wrong pixels needs
scene mode (<code>evaluate.py --pred ... --truth ...</code>).</p>
{crops}
</main>"""


def write_checkpoint_page(
    page: Path,
    report: Mapping[str, Any],
    *,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    details: Sequence[tuple[str, str]],
    crops: Sequence[Crop] = (),
    title: str | None = None,
) -> PageOutput:
    """Write the evaluation page of a checkpoint scored on a data split (``evaluate_checkpoint``'s report).

    Args:
        page: The ``.html`` path (:func:`evaluation_page_path` of the report folder).
        report: ``<split>_scores.json``'s content: ``mIoU``, ``mF1``, ``OA``, ``split`` and ``confusion_matrix``.
        class_names: The classes in index order.
        colours: One RGB colour per class (truth and prediction crops).
        details: The model's facts as (label, value) rows: architecture, classes, checkpoint, split, images.
        crops: Fixed crops of the split with the checkpoint's predictions.
        title: The page's title (default ``evaluation: <page stem>``).

    Raises:
        InputError: The page cannot be written; one line.
    """
    names = list(class_names)

    def build(folder: Path) -> str:
        url = files_folder(page).name
        grid = crop_grid(
            TrainingView("", "finished", (), names, colours, crops=crops), folder, url, scored_classes=len(names)
        )
        name = title or f"evaluation: {page.stem}"
        return html_page(
            name,
            url,
            _checkpoint_body(report, names, details, grid, name),
            styles=("lib/rs_deeplab/report.css", "lib/rs_deeplab/training.css"),
            scripts=("lib/rs_deeplab/training.js",),
        )

    return write_page(page, build, libraries=("rs_deeplab",))
