"""The prediction page of an inference run (``x.html`` beside ``x.gpkg``): the run's details for the page writer.

The page itself is :mod:`rs_deeplab.report.prediction` (torch-free); this module only gathers what inference knows
(the model's card, runtime, TTA, CRF, timing, and for a mosaic the composite of its scenes) for it.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Any

import rasterio

from rs_deeplab.cli.errors import RsDeeplabError
from rs_deeplab.config.modelcard import card_to_metadata, read_checkpoint
from rs_deeplab.inference.infer import InferOptions, InferResult
from rs_deeplab.inference.runtimes.exported import (
    METADATA_KEY,
    ONNX_SUFFIXES,
    TORCHSCRIPT_EXTRA,
    TORCHSCRIPT_SUFFIXES,
    read_card,
)
from rs_deeplab.report.composite import write_composite
from rs_deeplab.report.page import PageOutput
from rs_deeplab.report.prediction import PredictionInputs, card_colours, model_rows, write_prediction_page


def write_result_page(
    page: Path, result: InferResult, options: InferOptions | None = None, title: str | None = None
) -> PageOutput:
    """Write the prediction page of an :func:`~rs_deeplab.inference.infer.infer_scenes` run.

    One scene: its composite, classes and polygons; a mosaic of several: the mosaic's classes over a composite of
    all its scenes on the mosaic's grid (:mod:`rs_deeplab.report.composite`, written to a temporary folder while
    the page is written), and all polygons; ``--separate`` scenes: the first scene's. The model card comes from
    the checkpoint, or from the card an exported model (``.onnx``, ``.ts``) carries; where it cannot be read, the
    page shows the run's details only.
    """
    options = options or InferOptions()
    card = model_card(result.checkpoint)
    first = result.rasters[0]
    details = {
        "checkpoint": str(result.checkpoint),
        "runtime": first.runner,
        "prediction GSD": None if first.gsd is None else f"{first.gsd:g} m",
        "TTA": _tta_text(options, card),
        "CRF": "DenseCRF" if options.crf else "off",
        "seconds": f"{result.seconds:.1f}",
        "scenes": str(len(result.rasters)),
    }
    with tempfile.TemporaryDirectory(prefix="rs_deeplab_page_") as staging:
        scene, notes = _scene_and_notes(result, Path(staging))
        inputs = PredictionInputs(
            labels=result.region.vrt if result.region is not None else first.labels,  # --separate: the first scene
            scene=scene,
            polygons=result.polygons,
            model=model_rows(card, details),
            class_names=first.class_names,
            colours=card_colours(card),
            title=title,
            notes=notes,
        )
        return write_prediction_page(page, inputs)


def model_card(model: Path) -> dict[str, Any] | None:
    """The card of a checkpoint (``.pt``/``.pth``) or exported model (``.onnx``, ``.ts``) as
    :func:`~rs_deeplab.config.modelcard.card_to_metadata` writes it; None where there is none or it cannot be read.

    An exported model's card is its JSON metadata (:data:`~rs_deeplab.inference.runtimes.exported.METADATA_KEY`), read
    without running the model: ONNX's ``metadata_props`` through ``onnx.load`` (weights stored outside the file
    are not read), TorchScript's extra file straight from its zip archive.
    """  # noqa: D205
    suffix = model.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            return card_to_metadata(read_checkpoint(model)[0])
        if suffix in ONNX_SUFFIXES:
            return card_to_metadata(read_card(model, _onnx_metadata(model)))
        if suffix in TORCHSCRIPT_SUFFIXES:
            return card_to_metadata(read_card(model, _torchscript_metadata(model)))
    except RsDeeplabError:
        return None
    return None


def _onnx_metadata(model: Path) -> str | None:
    """The JSON card in an ONNX model's ``metadata_props`` (None: no ``onnx`` package, unreadable, no card)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # onnx's own errors (DecodeError, ...) for a damaged file
        return None
    return next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)


def _torchscript_metadata(model: Path) -> str | None:
    """The JSON card among a TorchScript archive's extra files (``<archive>/extra/rs_deeplab.json``), or None."""
    try:
        with zipfile.ZipFile(model) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}")), None)
            return None if name is None else archive.read(name).decode("utf-8")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):
        return None


def _scene_and_notes(result: InferResult, staging: Path) -> tuple[str | Path | None, tuple[str, ...]]:
    """The raster the page draws the scene composite from, and what the page says about a run of several scenes.

    One scene, or ``--separate`` scenes: the (first) scene. A mosaic: the composite of its scenes on its grid,
    written in ``staging``.
    """
    first = result.rasters[0]
    if result.region is None:
        if len(result.rasters) == 1:
            return first.scene, ()
        return first.scene, (
            f"{len(result.rasters)} separate scenes: the map shows the first; the legend's areas are all scenes'.",
        )
    count = len(result.rasters)
    region = result.region
    try:
        composite = write_composite([r.scene for r in result.rasters], region.grid, region.owned, staging)
    except (RsDeeplabError, rasterio.errors.RasterioError) as exc:
        return None, (
            f"A mosaic of {count} scenes: the map shows its classes; the scenes' composite could not be drawn ({exc}).",
        )
    return composite, (
        f"A mosaic of {count} scenes: the map shows its classes over the composite of all {count} scenes.",
    )


def _tta_text(options: InferOptions, card: dict[str, Any] | None) -> str:
    """The test-time augmentation the run used: ``--tta``/``--scales`` or the checkpoint's ``infer`` settings."""
    infer = (card or {}).get("infer") or {}
    scales = [float(s) for s in (options.scales or infer.get("scales") or (1.0,))]
    parts = (["flips"] if options.tta or infer.get("tta") else []) + ([f"scales {scales}"] if scales != [1.0] else [])
    return ", ".join(parts) or "off"
