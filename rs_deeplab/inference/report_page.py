"""The prediction page of an inference run (``x.html`` beside ``x.gpkg``): the run's details for the page writer.

The page itself is :mod:`rs_deeplab.report.prediction` (torch-free); this module only gathers what inference knows
(the checkpoint's card, runtime, TTA, CRF, timing) for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rs_deeplab.errors import RsDeeplabError
from rs_deeplab.inference.pipeline import InferOptions, InferResult
from rs_deeplab.modelcard import card_to_metadata, read_checkpoint
from rs_deeplab.report.page import PageOutput
from rs_deeplab.report.prediction import PredictionInputs, card_colours, model_rows, write_prediction_page


def write_result_page(
    page: Path, result: InferResult, options: InferOptions | None = None, title: str | None = None
) -> PageOutput:
    """Write the prediction page of an :func:`~rs_deeplab.inference.pipeline.infer_scenes` run.

    One scene: its composite, classes and polygons; a mosaic of several: the mosaic's classes and all polygons;
    ``--separate`` scenes: the first scene's. The model card comes from the checkpoint (an exported model shows
    the run's details only).
    """
    options = options or InferOptions()
    card: dict[str, Any] | None = None
    if result.checkpoint.suffix in (".pt", ".pth"):  # an exported model: the page shows the run's details only
        try:
            card = card_to_metadata(read_checkpoint(result.checkpoint)[0])
        except RsDeeplabError:
            card = None
    first = result.rasters[0]
    single = result.region is None and len(result.rasters) == 1
    details = {
        "checkpoint": str(result.checkpoint),
        "runtime": first.runner,
        "prediction GSD": None if first.gsd is None else f"{first.gsd:g} m",
        "TTA": _tta_text(options, card),
        "CRF": "DenseCRF" if options.crf else "off",
        "seconds": f"{result.seconds:.1f}",
        "scenes": str(len(result.rasters)),
    }
    inputs = PredictionInputs(
        labels=result.region.vrt if result.region is not None else first.labels,  # --separate: the first scene
        scene=first.scene if single else None,
        polygons=result.polygons,
        model=model_rows(card, details),
        class_names=first.class_names,
        colours=card_colours(card),
        title=title,
        notes=_notes(result, single),
    )
    return write_prediction_page(page, inputs)


def _tta_text(options: InferOptions, card: dict[str, Any] | None) -> str:
    """The test-time augmentation the run used: ``--tta``/``--scales`` or the checkpoint's ``infer`` settings."""
    infer = (card or {}).get("infer") or {}
    scales = [float(s) for s in (options.scales or infer.get("scales") or (1.0,))]
    parts = (["flips"] if options.tta or infer.get("tta") else []) + ([f"scales {scales}"] if scales != [1.0] else [])
    return ", ".join(parts) or "off"


def _notes(result: InferResult, single: bool) -> tuple[str, ...]:
    """What the page says about a run of several scenes."""
    if single:
        return ()
    if result.region is not None:
        return (f"A mosaic of {len(result.rasters)} scenes: the map shows its classes (the scene composite is drawn "
                "for a single scene only).",)  # fmt: skip
    return (f"{len(result.rasters)} separate scenes: the map shows the first; the legend's areas are all scenes'.",)
