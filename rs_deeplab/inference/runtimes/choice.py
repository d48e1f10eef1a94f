"""Which runtime runs a checkpoint: PyTorch, or ONNX Runtime in float32 or int8; decided once per load, said once.

``--runtime auto`` (the command line's default) runs a checkpoint through ONNX Runtime on a CPU when onnxruntime and
onnx are installed and the model exports, and through PyTorch otherwise (saying why once); on a GPU, ``auto`` is
PyTorch. ``--runtime onnx`` insists (a missing package or a model that does not export is one line, exit 2) and
``--runtime torch`` never exports. The export is cached beside the checkpoint
(:mod:`rs_deeplab.inference.runtimes.onnx_cache`).
Every inference feature works on the exported model: flips and scales run the exported graph on other window sizes
(its height and width are dynamic), an output stride and multi-scale inputs (``model.msc``) are baked into the export
(the stride is part of the cache key), and the CRF and ``--probs`` take the same softmax probabilities.

``--int8`` (``precision="int8"``) quantizes the float32 export for ONNX Runtime
(:mod:`rs_deeplab.inference.runtimes.quantize`,
static, calibrated on windows of the first scene) and runs on the CPU only.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rs_deeplab.cli.errors import CheckpointError, InputError
from rs_deeplab.config.modelcard import ModelCard
from rs_deeplab.inference.runtimes.onnx_cache import (
    ExportFailedError,
    ExportSettings,
    cached_export,
    file_digest,
    say_once,
)

log = logging.getLogger("rs_deeplab.inference")

RUNTIMES = ("auto", "torch", "onnx")
PRECISIONS = ("fp32", "int8")
ORT_HINT = "pip install onnxruntime onnx"
OPSET = 17


def check_choice(runtime: str, precision: str) -> None:
    """Refuse an unknown runtime or precision, and int8 with PyTorch (it quantizes for ONNX Runtime).

    Raises:
        InputError: One line naming the option and what to pass instead.
    """
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime}: choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and runtime == "torch":
        raise InputError("--int8 quantizes the model for ONNX Runtime, not PyTorch; drop --runtime torch (or --int8)")


def missing_packages() -> str | None:
    """The package (onnxruntime, onnx) that running a checkpoint through ONNX Runtime needs and cannot import."""
    for name in ("onnxruntime", "onnx"):
        try:
            __import__(name)
        except ImportError:
            return name
    return None


def resolve_runtime(runtime: str, precision: str, device: torch.device, missing: str | None) -> str:
    """``torch`` or ``onnx`` for a checkpoint on ``device``, given what is not installed (pure but for the log).

    Raises:
        InputError: A bad choice (:func:`check_choice`), int8 on a GPU, or ``onnx``/int8 without the packages.
    """
    check_choice(runtime, precision)
    if precision == "int8" and device.type != "cpu":
        raise InputError(
            f"--int8 runs on the CPU (ONNX Runtime) and this run uses {device}; add --device cpu, or "
            "drop --int8 (a GPU runs bf16/fp16 with --amp)"
        )
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return "torch"
    if missing is not None:
        if runtime == "onnx" or precision == "int8":
            option = "--int8" if precision == "int8" else "--runtime onnx"
            raise InputError(f"{option} needs {missing}, which is not installed; {ORT_HINT} (or pass --runtime torch)")
        say_once(
            "%s is not installed: running the checkpoint with PyTorch on the CPU (%s for ONNX Runtime, about "
            "2x faster here)",
            missing,
            ORT_HINT,
        )
        return "torch"
    return "onnx"


def baked_stride(card: ModelCard, output_stride: int | None) -> int | None:
    """The output stride an export bakes in: the one asked for, else ``infer.output_stride``, else the one the model
    was trained with (None: its architecture's default).
    """  # noqa: D205
    return output_stride or card.infer.output_stride or card.architecture.output_stride


def export_for_cache(
    model: torch.nn.Module, card: ModelCard, checkpoint: Path, stride: int | None, tmp: Path
) -> dict[str, Any]:
    """Export ``model`` at ``stride`` (None: its own) to ``tmp`` and check it against PyTorch; the facts to record.

    Raises:
        ExportFailedError: The tracer refuses the model, or the export's logits differ from PyTorch's.
    """
    from rs_deeplab.inference.runtimes.export_write import (
        EXAMPLE_SIZE,
        MainLogits,
        check_export,
        exported_card,
        write_onnx,
    )
    from rs_deeplab.inference.runtimes.exported import card_text
    from rs_deeplab.models import set_output_stride

    start = time.perf_counter()
    before = getattr(model, "output_stride", None)
    try:
        if stride and before is not None and stride != before:
            set_output_stride(model, stride)
        stride = int(getattr(model, "output_stride", stride) or 0)
        wrapper = MainLogits(model).eval()
        example = torch.zeros(1, card.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE)
        try:
            write_onnx(wrapper, example, tmp, OPSET, card_text(exported_card(card, stride), checkpoint))
            difference = check_export(wrapper, tmp, card.in_channels)
        except (InputError, OSError, MemoryError, KeyboardInterrupt):  # not the model's fault: nothing recorded
            raise
        except Exception as exc:  # the tracer and ONNX Runtime raise many types; all mean "does not export"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ExportFailedError(f"{checkpoint}: its model does not export to ONNX ({reason})") from None
    finally:
        if before is not None and getattr(model, "output_stride", before) != before:
            set_output_stride(model, before)  # the PyTorch model stays as loaded (it may still run)
    seconds = time.perf_counter() - start
    log.info(
        "%s: exported to ONNX for ONNX Runtime at output stride %d in %.1f s (max logit difference %.2g); cached in %s",
        checkpoint.name,
        stride,
        seconds,
        difference,
        tmp.parent,
    )
    return {"output_stride": stride, "max_logit_difference": difference, "seconds": round(seconds, 2)}


def onnx_checkpoint(
    checkpoint: Path,
    model: Callable[[], torch.nn.Module],
    card: ModelCard,
    *,
    output_stride: int | None,
    precision: str,
    calibration: Sequence[str] = (),
    digest: str | None = None,
) -> tuple[Path, Mapping[str, Any]]:
    """The cached ONNX file running ``checkpoint`` (built from ``model()`` when missing), and its recorded facts.

    Raises:
        ExportFailedError: The model does not export.
        InputError: int8 without a scene to calibrate on.
        CheckpointError: No writable cache folder.
    """
    import json

    from rs_deeplab.inference.runtimes.onnx_cache import sidecar

    digest = digest or file_digest(checkpoint)
    stride = baked_stride(card, output_stride)
    export: Callable[[Path], Mapping[str, Any]] = lambda tmp: export_for_cache(model(), card, checkpoint, stride, tmp)  # noqa: E731
    fp32 = cached_export(checkpoint, ExportSettings(stride, OPSET), export, digest=digest)
    path = fp32
    if precision == "int8":
        from rs_deeplab.inference.runtimes.quantize import calibration_key, quantize_for_cache

        if not calibration:
            raise InputError("--int8 calibrates the quantization on windows of a scene; pass one")
        settings = ExportSettings(stride, OPSET, "int8", calibration_key(calibration))
        build: Callable[[Path], Mapping[str, Any]] = lambda tmp: quantize_for_cache(fp32, tmp, card, calibration)  # noqa: E731
        path = cached_export(checkpoint, settings, build, digest=digest)
    facts: Mapping[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        facts = json.loads(sidecar(path).read_text())
    return path, facts


def checkpoint_on_onnx(
    checkpoint: Path,
    model: Callable[[], torch.nn.Module],
    card: ModelCard,
    device: torch.device,
    *,
    runtime: str,
    output_stride: int | None,
    precision: str,
    calibration: Sequence[str] = (),
    strict: bool = False,
) -> tuple[torch.nn.Module | None, str]:
    """An :class:`~rs_deeplab.inference.runtimes.exported.OnnxModule` running ``checkpoint``, and a note for the run's
    fingerprint; None (and the reason, said once) where ``auto`` falls back to PyTorch.

    Raises:
        InputError, CheckpointError: ``runtime="onnx"`` (or int8) and the model does not export; see
            :func:`onnx_checkpoint`.
    """  # noqa: D205
    from rs_deeplab.inference.runtimes.exported import OnnxModule

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path, facts = onnx_checkpoint(
                checkpoint, model, card, output_stride=output_stride, precision=precision, calibration=calibration
            )
    except (ExportFailedError, OSError) as exc:
        if isinstance(exc, OSError):
            exc = CheckpointError(f"{checkpoint}: cannot write its ONNX export ({exc.strerror or exc})")
        if runtime == "onnx" or precision == "int8":
            option = "--int8" if precision == "int8" else "--runtime onnx"
            raise CheckpointError(f"{exc}; {option} cannot run it: pass --runtime torch") from None
        say_once("%s; running it with PyTorch (pass --runtime torch to skip the attempt)", exc, level=logging.WARNING)
        return None, "torch"
    module = OnnxModule(path, device, strict=strict)  # strict: --device cuda, and the session would run on the CPU
    note = f"onnx-{precision}"
    if precision == "int8":
        agreement, windows = facts.get("agreement"), facts.get("check_windows")
        if isinstance(agreement, float):
            note += f":agreement={agreement:.4f}"
            say_once(
                "int8 model (%s quantization, cached as %s): %.2f%% of pixels equal to float32's on %s windows of %s",
                facts.get("method", "static"),
                path.name,
                100 * agreement,
                windows,
                ", ".join(Path(s).name for s in calibration),
            )
    say_once(
        "running %s with ONNX Runtime (%s, %d threads; --runtime torch for PyTorch)",
        checkpoint.name,
        precision,
        module.threads,
    )
    return module, note
