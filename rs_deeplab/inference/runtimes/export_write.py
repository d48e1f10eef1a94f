"""The pieces of an export that need no checkpoint: the traced wrapper, the ONNX and TorchScript writers, the
check against PyTorch and the exported card.

Below both :mod:`rs_deeplab.inference.runtimes.export` (checkpoint → file, which re-exports these names) and
:mod:`rs_deeplab.inference.runtimes.choice` (a checkpoint run through ONNX Runtime, exported into a cache), so neither
imports the other back.
"""  # noqa: D205

from __future__ import annotations

import inspect
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rs_deeplab.cli.errors import CheckpointError
from rs_deeplab.config.modelcard import ModelCard
from rs_deeplab.inference.predicting.predictor import model_outputs
from rs_deeplab.inference.runtimes.exported import METADATA_KEY, TORCHSCRIPT_EXTRA, load_exported

EXAMPLE_SIZE = 64
"""Side of the example window the graph is traced with (any size runs afterwards)."""
CHECK_SIZES = ((2, 96, 80), (1, 72, 120))
"""Batch, height and width of the windows the export is compared on (all unlike the example's)."""


class MainLogits(torch.nn.Module):
    """The main logits of a segmentation model (an auxiliary output dropped), for tracing."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, bands, H, W)`` → ``(B, classes, H, W)`` logits."""
        return model_outputs(self.model(x))


def exported_card(card: ModelCard, output_stride: int) -> ModelCard:
    """The card of a checkpoint exported at ``output_stride``: the stride is the architecture's, baked in."""
    infer = card.infer.model_copy(update={"output_stride": None})
    return replace(card, architecture=replace(card.architecture, output_stride=output_stride), infer=infer)


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, card: str) -> None:
    """Trace ``model`` to ONNX at ``path`` (dynamic batch, height, width) and store the card in its metadata."""
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    # the TorchScript-based exporter: dynamic_axes as asked, no onnxscript; torch < 2.5 has no dynamo switch
    legacy: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # its deprecation and tracer notes
        torch.onnx.export(
            model,
            (example,),
            str(path),
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            **legacy,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card
    proto.producer_name = "rs_deeplab"
    onnx.save(proto, str(path))


def write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, card: str) -> None:
    """Trace ``model`` to TorchScript at ``path`` with the card as an extra file."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: card})


def check_export(model: torch.nn.Module, path: Path, in_channels: int) -> float:
    """Load the written file as inference does and compare it with ``model`` on :data:`CHECK_SIZES` windows.

    Returns:
        The largest absolute logit difference.

    Raises:
        CheckpointError: The shapes differ or the logits differ beyond float32 rounding (an export bug).
    """
    exported, _ = load_exported(path, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch, height, width in CHECK_SIZES:
        x = torch.randn(batch, in_channels, height, width, generator=generator)
        with torch.no_grad():
            want, got = model(x), exported(x)
        if got.shape != want.shape:
            raise CheckpointError(
                f"{path}: the export returns {tuple(got.shape)} for {tuple(x.shape)}, PyTorch "
                f"{tuple(want.shape)}; report this bug"
            )
        diff = float((got - want).abs().max())
        scale = float(want.abs().max())
        if diff > 1e-3 * max(1.0, scale):
            raise CheckpointError(
                f"{path}: the export's logits differ from PyTorch's by {diff:.3g} (of {scale:.3g}); report this bug"
            )
        worst = max(worst, diff)
    return worst
