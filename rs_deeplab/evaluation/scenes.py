"""Scene-level scores: prediction rasters against their ground truth, read block by block, summed over scenes.

Truth pixels that decode to 255 (ignore: eroded ISPRS boundaries, unknown colours, LoveDA no-data) and
prediction pixels that are 255 or the prediction's nodata value count as neither right nor wrong, as in the
ISPRS protocol. Memory is bounded by one block of both rasters, whatever the scene size.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rs_deeplab.cli.console import progress
from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.cli.outputs import check_output_folder
from rs_deeplab.evaluation.metrics import confusion_matrix, markdown_table, scores
from rs_deeplab.geo.raster import PathLike, atomic_output, check_complete, open_raster, read_error, source_path
from rs_deeplab.labels.class_names import read_class_names
from rs_deeplab.labels.classes import IGNORE_INDEX, ClassScheme
from rs_deeplab.labels.decoding import decode_label
from rs_deeplab.remote.scenes import scene_name

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 2048
"""Block edge in pixels: a 2048² block of prediction and colour truth needs ~30 MiB while it is scored."""

CONFUSION_CHUNK_PIXELS = 1 << 18
"""Pixels counted into the confusion matrix at a time (its int64 temporaries are ~32 bytes per pixel)."""

REPORT_JSON = "scene_scores.json"
REPORT_MD = "scene_scores.md"


@dataclass(frozen=True)
class SceneCounts:
    """What one scene contributed.

    Attributes:
        confusion: ``(C, C)`` int64 confusion matrix, rows truth, columns prediction.
        ignored_truth: Pixels whose truth is 255 (ignore).
        unpredicted: Pixels with valid truth but a nodata (255) prediction.
    """

    confusion: np.ndarray
    ignored_truth: int
    unpredicted: int

    def __add__(self, other: SceneCounts) -> SceneCounts:
        """Counts of two scenes together."""
        return SceneCounts(
            self.confusion + other.confusion,
            self.ignored_truth + other.ignored_truth,
            self.unpredicted + other.unpredicted,
        )

    def as_report(self, names: Sequence[str]) -> dict[str, Any]:
        """``scores`` (see :func:`score_entry`) plus the ignored and unpredicted pixel counts."""
        return {
            "scores": score_entry(self.confusion, names),
            "ignored_truth_pixels": self.ignored_truth,
            "unpredicted_pixels": self.unpredicted,
        }


def scene_pairs(predictions: Sequence[PathLike], truths: Sequence[PathLike]) -> list[tuple[Path | str, Path | str]]:
    """Pair predictions with truths in the order given (files as Paths, URLs and GDAL paths as GDAL path strings).

    Raises:
        InputError: The lists are empty or of different lengths.
    """
    if not predictions or len(predictions) != len(truths):
        raise InputError(
            f"got {len(predictions)} prediction(s) and {len(truths)} truth raster(s); "
            "pass one --truth per --pred, in the same order"
        )
    return [(source_path(p), source_path(t)) for p, t in zip(predictions, truths, strict=True)]


def truth_band_counts(scheme: ClassScheme | None) -> tuple[int, ...]:
    """Band counts a truth raster may have: colour-coded schemes take 3 (colours) or 1 (class ids), others 1."""
    return (1, 3) if scheme is not None and scheme.encoding == "rgb" else (1,)


def _georeferenced_mismatch(pred: Any, truth: Any) -> str | None:
    """Describe how two rasters' georeferencing differs, or None when they agree or one has none."""
    if pred.crs is not None and truth.crs is not None and pred.crs != truth.crs:
        return f"CRS {pred.crs} vs {truth.crs}"
    if pred.transform.is_identity or truth.transform.is_identity:
        return None
    if not pred.transform.almost_equals(truth.transform, precision=1e-9):
        return f"geotransform {tuple(pred.transform)[:6]} vs {tuple(truth.transform)[:6]}"
    return None


def check_pair(pred: Any, truth: Any, scheme: ClassScheme | None) -> None:
    """Refuse a prediction/truth pair that cannot be compared pixel for pixel.

    Args:
        pred: Open rasterio dataset of the prediction (single-band integer class ids).
        truth: Open rasterio dataset of the ground truth.
        scheme: Class scheme decoding the truth, if any.

    Raises:
        RasterError: Sizes, CRS or transform differ, or a band count or data type is wrong.
    """
    if (pred.width, pred.height) != (truth.width, truth.height):
        raise RasterError(
            f"prediction {pred.name} is {pred.width}×{pred.height} pixels but truth {truth.name} is "
            f"{truth.width}×{truth.height}; both must cover the same scene grid"
        )
    mismatch = _georeferenced_mismatch(pred, truth)
    if mismatch:
        raise RasterError(
            f"prediction {pred.name} and truth {truth.name} are on different grids ({mismatch}); "
            "resample one onto the other"
        )
    if pred.count != 1 or np.dtype(pred.dtypes[0]).kind not in "ui":
        raise RasterError(
            f"prediction {pred.name} has {pred.count} band(s) of {pred.dtypes[0]}; "
            "expected one band of integer class ids (as pipelines/infer.py writes)"
        )
    allowed = truth_band_counts(scheme)
    if truth.count not in allowed:
        what = f"scheme {scheme.name!r} ({scheme.encoding} labels)" if scheme else "no --scheme (class ids)"
        hint = "" if scheme is not None else "; pass --scheme NAME to decode colour-coded truth"
        raise RasterError(
            f"truth {truth.name} has {truth.count} band(s); with {what} it must have "
            f"{' or '.join(map(str, allowed))}{hint}"
        )


def resolve_class_names(
    predictions: Sequence[Any], scheme: ClassScheme | None, class_names: Sequence[str] | None
) -> tuple[str, ...]:
    """Class names in index order: ``class_names``, else the predictions' ``CLASS_NAMES`` tag, else the scheme's.

    Raises:
        InputError: Names are missing, or their count disagrees with the scheme or another source.
    """
    tagged = {tuple(names) for names in map(read_class_names, predictions) if names}
    if len(tagged) > 1:
        raise InputError(f"predictions record different CLASS_NAMES tags {sorted(tagged)}; score them separately")
    tag = next(iter(tagged), None)
    names = tuple(class_names) if class_names else tag or (scheme.classes if scheme else None)
    if not names:
        raise InputError("no class names known: pass --scheme NAME or --class-names a,b,c")
    if len(set(names)) != len(names):
        raise InputError(f"class names must be unique, got {list(names)}")
    if scheme is not None and len(names) != scheme.num_classes:
        raise InputError(
            f"{len(names)} class names {list(names)} but scheme {scheme.name!r} has {scheme.num_classes} "
            f"classes {list(scheme.classes)}; pick the scheme the model was trained with"
        )
    if tag is not None and len(tag) != len(names):
        raise InputError(f"--class-names gives {len(names)} classes but the predictions record {len(tag)}: {list(tag)}")
    return names


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block size must be a positive number of pixels, got {block_size}")


def block_windows(height: int, width: int, size: int) -> list[Window]:
    """Row-major square windows of edge ``size`` covering a raster; edge windows are smaller."""
    return [
        Window(col, row, min(size, width - col), min(size, height - row))
        for row in range(0, height, size)
        for col in range(0, width, size)
    ]


def _check_prediction_values(pred: np.ndarray, num_classes: int, nodata: int | None, name: str) -> None:
    """Refuse class values outside ``0..C-1`` that are neither 255 nor the raster's nodata."""
    outside = (pred >= num_classes) | (pred < 0) if pred.dtype.kind == "i" else pred >= num_classes
    if not outside.any():
        return
    values = np.unique(pred[outside])
    bad = values[(values != IGNORE_INDEX) & (values != (IGNORE_INDEX if nodata is None else nodata))]
    if bad.size:
        raise RasterError(
            f"prediction {name} holds class value(s) {bad[:5].tolist()} but there are {num_classes} classes "
            f"(0..{num_classes - 1}, 255 = nodata); pass the scheme or class names the model was trained with"
        )


def _chunked_confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """:func:`confusion_matrix` of a block, a few rows at a time so its int64 temporaries stay small."""
    rows = max(1, CONFUSION_CHUNK_PIXELS // max(1, pred.shape[1]))
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for top in range(0, pred.shape[0], rows):
        cm += confusion_matrix(pred[top : top + rows], truth[top : top + rows], num_classes)
    return cm


def _read_truth(truth: Any, window: Window, scheme: ClassScheme | None) -> np.ndarray:
    """Decode one window of the truth to uint8 class ids with 255 for ignore (the truth's nodata included)."""
    data = truth.read(window=window)
    ids = decode_label(data, scheme)
    if truth.count == 1 and truth.nodata is not None and not math.isnan(truth.nodata):
        ids = np.where(data[0] == truth.nodata, IGNORE_INDEX, ids).astype(np.uint8)
    return ids


def scene_confusion(
    pred_path: PathLike,
    truth_path: PathLike,
    *,
    num_classes: int,
    scheme: ClassScheme | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    quiet: bool = True,
) -> SceneCounts:
    """Count the confusion matrix of one scene, reading both rasters one block at a time.

    Args:
        pred_path: Single-band integer class raster; 255 (and its nodata value) = not predicted.
        truth_path: Truth raster: 3-band colours (decoded with ``scheme``) or one band of class values.
        num_classes: Number of classes ``C``.
        scheme: Class scheme decoding the truth; None reads one band as class ids.
        block_size: Block edge in pixels (memory bound).
        quiet: No progress bar.

    Raises:
        RasterError: A file is missing or unreadable, the rasters do not match, or the prediction holds
            values outside ``0..C-1`` other than nodata.
    """
    _check_block_size(block_size)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    ignored = unpredicted = 0
    with open_raster(pred_path) as pred, open_raster(truth_path) as truth:
        check_pair(pred, truth, scheme)
        nodata = pred.nodata if pred.nodata is not None and float(pred.nodata).is_integer() else None
        windows = block_windows(pred.height, pred.width, block_size)
        for window in progress(windows, total=len(windows), desc=scene_name(pred_path), quiet=quiet, unit="block"):
            p = _read(pred, window, functools.partial(pred.read, 1, window=window))
            _check_prediction_values(p, num_classes, None if nodata is None else int(nodata), pred.name)
            t = _read(truth, window, functools.partial(_read_truth, truth, window, scheme))
            block = _chunked_confusion(p, t, num_classes)
            cm += block
            valid_truth = int(np.count_nonzero(t != IGNORE_INDEX))
            ignored += t.size - valid_truth
            unpredicted += valid_truth - int(block.sum())
    return SceneCounts(cm, ignored, unpredicted)


def _read(src: Any, window: Window, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()`` of one block of ``src``, a GDAL failure (truncated, corrupt file) as one line naming it."""
    try:
        return read()
    except (RasterioError, CPLE_BaseError) as exc:
        raise read_error(src.name, exc, f"rows {window.row_off}..{window.row_off + window.height}") from None


def score_entry(cm: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready scores of a confusion matrix; NaN (class absent from truth and prediction) becomes null."""

    def num(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    result = scores(cm)
    return {
        "mIoU": num(result.miou),
        "mF1": num(result.mean_f1),
        "OA": num(result.overall_accuracy),
        "pixels": result.pixels,
        "IoU": {n: num(v) for n, v in zip(names, result.iou, strict=True)},
        "F1": {n: num(v) for n, v in zip(names, result.f1, strict=True)},
        "confusion_matrix": cm.tolist(),
    }


def _markdown(report: dict[str, Any], total: np.ndarray, names: Sequence[str]) -> str:
    """The total per-class table followed by one summary row per scene."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}"

    lines = [f"# Scene scores ({len(report['scenes'])} scene(s))", "", markdown_table(scores(total), names), ""]
    lines += ["| prediction | truth | mIoU | mF1 | OA | pixels |", "|---|---|---:|---:|---:|---:|"]
    for scene in report["scenes"]:
        s = scene["scores"]
        lines.append(
            f"| {scene_name(scene['prediction'])} | {scene_name(scene['truth'])} | {pct(s['mIoU'])} | "
            f"{pct(s['mF1'])} | {pct(s['OA'])} | {s['pixels']} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_scenes(
    pairs: Sequence[tuple[PathLike, PathLike]],
    out_dir: PathLike | None = None,
    *,
    scheme: ClassScheme | None = None,
    class_names: Sequence[str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score prediction rasters against their truth and write ``scene_scores.json`` and ``scene_scores.md``.

    Every scene is checked before any is scored; the reports are written (atomically) only when all succeed.

    Args:
        pairs: ``(prediction, truth)`` paths.
        out_dir: Report folder (created if missing); default: the first prediction's folder.
        scheme: Class scheme decoding the truth (colour-coded or dataset-specific values).
        class_names: Class names in index order; default: the predictions' ``CLASS_NAMES`` tag, else the scheme's.
        block_size: Block edge in pixels.
        quiet: No progress bars.

    Returns:
        The report: ``classes``, ``scheme``, ``total`` scores and one ``scenes`` entry per pair.

    Raises:
        InputError, RasterError: Bad input; nothing is written.
    """
    if not pairs:
        raise InputError("no scenes to score; pass --pred and --truth")
    _check_block_size(block_size)
    out = Path(out_dir) if out_dir else _beside(pairs[0][0])
    check_output_folder(out, what=f"report folder {out}")
    names = _check_inputs(pairs, scheme, class_names)
    scenes: list[dict[str, Any]] = []
    total = SceneCounts(np.zeros((len(names), len(names)), dtype=np.int64), 0, 0)
    for pred_path, truth_path in pairs:
        counts = scene_confusion(
            pred_path, truth_path, num_classes=len(names), scheme=scheme, block_size=block_size, quiet=quiet
        )
        total = total + counts
        scenes.append({"prediction": str(pred_path), "truth": str(truth_path), **counts.as_report(names)})
    if not total.confusion.any():
        raise InputError(
            f"no pixel to score in {len(pairs)} scene(s): every truth pixel is ignore (255 or nodata) or "
            "unpredicted (nodata in the prediction); check that --truth, --scheme and --pred belong together"
        )
    for scene in scenes:
        miou = scene["scores"]["mIoU"]
        log.info("%s: mIoU %s", scene["prediction"], "n/a" if miou is None else f"{miou:.4f}")
    report = {
        "classes": list(names),
        "scheme": scheme.name if scheme else None,
        "total": total.as_report(names),
        "scenes": scenes,
    }
    _write_reports(report, total.confusion, names, out)
    return report


def _beside(path: PathLike) -> Path:
    """The default report folder: the prediction's folder, or the current folder for a remote prediction."""
    return Path(path).parent if isinstance(source_path(path), Path) else Path(".")


def _check_inputs(
    pairs: Sequence[tuple[PathLike, PathLike]], scheme: ClassScheme | None, class_names: Sequence[str] | None
) -> tuple[str, ...]:
    """Open every pair once to check it and settle the class names, before anything is scored."""
    preds: list[Any] = []
    try:
        preds.extend(open_raster(p) for p, _ in pairs)
        names = resolve_class_names(preds, scheme, class_names)
        for pred, (_, truth_path) in zip(preds, pairs, strict=True):
            with open_raster(truth_path) as truth:
                check_pair(pred, truth, scheme)
                check_complete(truth, truth_path)
            check_complete(pred, pred.name)
    finally:
        for ds in preds:
            ds.close()
    return names


def _write_reports(report: dict[str, Any], total: np.ndarray, names: Sequence[str], out: Path) -> None:
    """Write the JSON and Markdown reports atomically into ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        (REPORT_JSON, json.dumps(report, indent=2) + "\n"),
        (REPORT_MD, _markdown(report, total, names)),
    ):
        with atomic_output(out / name) as tmp:
            tmp.write_text(text)
