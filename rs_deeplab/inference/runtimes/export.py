"""Export a training checkpoint as a deployable model: ONNX (default) or TorchScript, with its card inside.

The exported graph takes float32 ``(B, bands, H, W)`` (batch, height and width dynamic) and returns the main
logits ``(B, classes, H, W)`` (no auxiliary head) at the output stride chosen here, which is then fixed; a model
trained with multi-scale inputs (``model.msc``) exports its fused output, every scale's pass in the graph. The card
(:func:`rs_deeplab.config.modelcard.card_to_metadata`) carries what inference needs besides the weights. The
file is checked against the PyTorch model at two window sizes other than the export's, then renamed into place:
a failed export leaves nothing under the final name.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rs_deeplab.cli.errors import CheckpointError, InputError
from rs_deeplab.geo.raster import atomic_output, temporary_sibling
from rs_deeplab.inference.runtimes.export_write import (
    EXAMPLE_SIZE,
    MainLogits,
    check_export,
    exported_card,
    write_onnx,
    write_torchscript,
)
from rs_deeplab.inference.runtimes.exported import (
    EXTRA_HINT,
    ONNX_SUFFIXES,
    TORCHSCRIPT_SUFFIXES,
    card_text,
)
from rs_deeplab.inference.runtimes.trained import load_trained_model, model_kind
from rs_deeplab.models import set_output_stride

log = logging.getLogger(__name__)

FORMATS = {"onnx": ONNX_SUFFIXES[0], "torchscript": TORCHSCRIPT_SUFFIXES[0]}
"""Export formats and the suffix each one's file must have."""
MIN_OPSET = 17


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    path: Path
    format: str
    output_stride: int
    max_difference: float
    """Largest absolute logit difference between the exported and the PyTorch model on the check windows."""
    seconds: float


def is_exported_model(path: Path, fmt: str) -> bool:
    """Whether ``path`` holds a model of ``fmt`` (ONNX that parses; TorchScript: a zip archive), any project's."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if fmt == "torchscript":
        return head == b"PK\x03\x04"
    try:
        import onnx
    except ImportError:  # the ONNX protobuf starts with its ir_version field
        return head[:1] == b"\x08"
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not an ONNX model
        return False
    return True


def export_format(out: Path, fmt: str | None, *, force: bool = False) -> str:
    """The format to write: ``fmt``, or the one ``out``'s suffix names; checks ``out`` is writable.

    An existing file at ``out`` is replaced only when it is a model of that format, or with ``force``.

    Raises:
        InputError: Unknown format, a suffix unlike the format's, a missing or read-only folder, an existing
            file that is not a model (without ``force``).
    """
    suffix = out.suffix.lower()
    if fmt is None:
        fmt = next((name for name, s in FORMATS.items() if s == suffix), None)
        if fmt is None:
            raise InputError(f"--out {out}: write a .onnx (ONNX) or .ts (TorchScript) file, e.g. --out model.onnx")
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if suffix != FORMATS[fmt]:
        raise InputError(
            f"--out {out}: a {fmt} export is written to a {FORMATS[fmt]} file; use --out "
            f"{out.with_suffix(FORMATS[fmt])}"
        )
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist; create it first")
    probe = temporary_sibling(out)
    try:
        if out.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder")
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable folder and a file name"
        ) from None
    if not force and out.is_file() and out.stat().st_size > 0 and not is_exported_model(out, fmt):
        raise InputError(
            f"--out {out}: exists and is not {'an ONNX' if fmt == 'onnx' else 'a TorchScript'} model; "
            "remove it, choose another name, or pass --force to replace it"
        )
    return fmt


def export_model(
    checkpoint: Path,
    out: Path,
    *,
    fmt: str | None = None,
    output_stride: int | None = None,
    opset: int = MIN_OPSET,
    force: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` (a training ``.pt``) to ``out`` with its card, checked against PyTorch.

    Args:
        checkpoint: A checkpoint written by training.
        out: ``.onnx`` or ``.ts`` file (replaced atomically).
        fmt: ``onnx`` or ``torchscript``; None: from ``out``'s suffix.
        output_stride: The stride to bake in; None: the checkpoint's ``infer.output_stride``, else as trained.
        opset: ONNX opset (17 or newer).
        force: Replace an existing ``out`` even when it is not a model.

    Raises:
        InputError: Bad ``out``/``fmt``/``opset``/``output_stride``, or a missing optional dependency.
        CheckpointError: ``checkpoint`` is missing, unreadable or not a ``.pt`` training checkpoint.
    """
    start = time.perf_counter()
    fmt = export_format(out, fmt, force=force)
    if opset < MIN_OPSET:
        raise InputError(f"--opset {opset}: the export needs opset {MIN_OPSET} or newer")
    if model_kind(checkpoint) != "checkpoint":
        raise CheckpointError(f"{checkpoint}: is already an exported model; export a training checkpoint (.pt)")
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint not found; pass an existing runs/<name>/best.pt")
    if fmt == "onnx":
        _require("onnx")
        _require("onnxruntime")
    model, card = load_trained_model(checkpoint, torch.device("cpu"))
    stride = output_stride or card.infer.output_stride or card.architecture.output_stride
    if stride is not None and int(stride) != getattr(model, "output_stride", stride):
        set_output_stride(model, int(stride))
    stride = int(getattr(model, "output_stride", stride or 0))
    wrapper = MainLogits(model).eval()
    example = torch.zeros(1, card.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE)
    text = card_text(exported_card(card, stride), checkpoint)
    with atomic_output(out) as tmp:
        if fmt == "onnx":
            write_onnx(wrapper, example, tmp, opset, text)
        else:
            write_torchscript(wrapper, example, tmp, text)
        difference = check_export(wrapper, tmp, card.in_channels)
    seconds = time.perf_counter() - start
    log.info(
        "%s: %s export at output stride %d, max logit difference %.2g, %.1f s", out, fmt, stride, difference, seconds
    )
    return ExportResult(out, fmt, stride, difference, seconds)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise InputError(f"exporting to ONNX needs {module}, which is not installed; {EXTRA_HINT}") from None


def describe(result: ExportResult) -> dict[str, Any]:
    """A summary for the command line."""
    return {
        "format": result.format,
        "output stride": result.output_stride,
        "max logit difference": f"{result.max_difference:.2g}",
        "seconds": f"{result.seconds:.1f}",
    }
