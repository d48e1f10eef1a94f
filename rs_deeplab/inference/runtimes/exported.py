"""Exported models (ONNX, TorchScript) as inference models: their metadata as a card, their runtime as a module.

``pipelines/export.py`` writes a model with a JSON card (:data:`METADATA_KEY`): band indices and names, mean/std,
class names and colours, GSD, the ``infer`` settings (window size and stride), the architecture and its baked
output stride. Here an exported file becomes a ``torch.nn.Module`` (:class:`OnnxModule` runs an ONNX Runtime
session; :class:`ScriptedModule` a ``torch.jit`` module) plus its :class:`~rs_deeplab.config.modelcard.ModelCard`, so it
runs through the same streaming, blending, resuming and vectorizing path as a checkpoint. Neither needs the training
stack. A checkpoint runs through :class:`OnnxModule` too, exported on the fly
(:mod:`rs_deeplab.inference.runtimes.choice`).

ONNX Runtime's intra-op threads are the cores the process may use (CPU affinity and cgroup quota, see
:func:`rs_deeplab.runtime.devices.usable_cores`), divided among the tasks a Dask worker runs at once.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rs_deeplab.cli.errors import CheckpointError, InputError
from rs_deeplab.config.modelcard import ModelCard, card_from_metadata, card_to_metadata
from rs_deeplab.geo.raster import short_message

log = logging.getLogger(__name__)

METADATA_KEY = "rs_deeplab"
"""Key of the JSON card in ONNX ``metadata_props`` (and ``rs_deeplab.json`` among TorchScript extra files)."""
TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".ts",)
EXTRA_HINT = "pip install onnxruntime onnx"
CUDA_PROVIDER = "CUDAExecutionProvider"


def card_text(card: ModelCard, source: Path | str | None = None) -> str:
    """The JSON card stored in an exported model (see :func:`rs_deeplab.config.modelcard.card_to_metadata`)."""
    return json.dumps(card_to_metadata(card, source), default=str)


def read_card(path: Path, text: str | None) -> ModelCard:
    """The :class:`ModelCard` stored in an exported model's metadata.

    Raises:
        CheckpointError: No card (not written by ``pipelines/export.py``), unreadable, or of a newer format.
    """
    return card_from_metadata(path, text, METADATA_KEY)


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line :class:`InputError` naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"running an ONNX model needs onnxruntime, which is not installed; {EXTRA_HINT}") from None
    return onnxruntime


def dask_worker_tasks() -> int:
    """How many tasks the Dask worker running this code runs at once (1 outside a worker)."""
    if "distributed" not in sys.modules:  # a worker process has imported it; no need to import it here
        return 1
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return 1
    return max(1, int(getattr(getattr(worker, "state", worker), "nthreads", 1) or 1))


def session_threads() -> tuple[int, int]:
    """ONNX Runtime intra-op threads for one session here, and the tasks sharing the cores (threads × tasks <=
    cores this process may use).
    """  # noqa: D205
    from rs_deeplab.runtime.cores import usable_cores
    from rs_deeplab.runtime.devices import intra_op_threads

    tasks = dask_worker_tasks()
    return intra_op_threads(usable_cores(), tasks), tasks


def check_cuda_session(path: Path, got: Sequence[str], available: Sequence[str], *, strict: bool) -> None:
    """Make a session asked to run on CUDA that runs on the CPU known: a warning once, or an error when ``strict``.

    Args:
        path: The model.
        got: ``session.get_providers()``: what the session runs on.
        available: ``onnxruntime.get_available_providers()``: what this ONNX Runtime was built with.
        strict: ``--device cuda`` was asked for explicitly (not ``auto``).

    Raises:
        InputError: ``strict`` and the session has no CUDA provider.
    """
    if CUDA_PROVIDER in got:
        return
    if CUDA_PROVIDER in available:
        why = "its CUDA provider did not load (CUDA or cuDNN libraries missing, or not the ones onnxruntime-gpu needs)"
    else:
        why = "this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu)"
    if strict:
        raise InputError(
            f"--device cuda: ONNX Runtime would run {path} on the CPU: {why}; fix that, or pass "
            "--runtime torch (for a checkpoint) or --device auto to accept the CPU"
        )
    from rs_deeplab.inference.runtimes.onnx_cache import say_once

    say_once(
        "%s runs on the CPU, not the GPU: %s (--device cuda makes this an error)", path, why, level=logging.WARNING
    )


class OnnxModule(torch.nn.Module):
    """An ONNX Runtime session as a module: float32 ``(B, bands, h, w)`` in, logits out, on the input's device.

    The session runs on the CUDA provider when ``device`` is a GPU and ONNX Runtime has it, else on the CPU with
    :func:`session_threads` threads that do not spin-wait between calls; a GPU asked for and not had is said once,
    or with ``strict`` (``--device cuda``) an error (:func:`check_cuda_session`). It always computes in
    float32 at its inputs and outputs: the predictor applies no AMP or channels_last.
    """

    fixed_precision = True
    """Tells :class:`~rs_deeplab.inference.predicting.predictor.Predictor` to feed float32 and not to autocast."""

    def __init__(self, path: Path, device: torch.device, *, strict: bool = False) -> None:
        super().__init__()
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        self.threads, _ = session_threads()
        options.intra_op_num_threads = self.threads
        # no spin-waiting after a call: the reader, blending and writer threads (and a Dask worker's other tasks)
        # need those cores; on predict_scene it took ONNX Runtime from 1.6x to 2.0x PyTorch's windows/s here
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if device.type == "cuda" and CUDA_PROVIDER in available:
            providers.insert(0, (CUDA_PROVIDER, {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise CheckpointError(
                f"{path}: not a readable ONNX model ({short_message(str(exc))}); "
                "export it again with pipelines/export.py"
            ) from None
        if device.type == "cuda":  # a CUDA provider that fails to load falls back to the CPU without an error
            check_cuda_session(path, self.session.get_providers(), available, strict=strict)
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def metadata(self) -> str | None:
        """The JSON card stored in the model, if any."""
        meta: dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        return meta.get(METADATA_KEY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on ``x`` (moved to host float32) and return the logits on ``x``'s device."""
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: batch})[:1]
        return torch.from_numpy(logits).to(x.device)


class ScriptedModule(torch.nn.Module):
    """A TorchScript model (traced by ``pipelines/export.py``) run in float32, like :class:`OnnxModule`."""

    fixed_precision = True

    def __init__(self, scripted: torch.nn.Module) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the scripted model."""
        return self.scripted(x.float())


def load_exported(path: Path, device: torch.device, *, strict: bool = False) -> tuple[torch.nn.Module, ModelCard]:
    """An exported model (``.onnx`` or ``.ts``) in eval mode on ``device`` and its card.

    Raises:
        CheckpointError: Unreadable file, or no/damaged metadata.
        InputError: ONNX Runtime is not installed (names the extra); ``strict`` and an ONNX session asked for the
            GPU that runs on the CPU.
    """
    if path.suffix.lower() in ONNX_SUFFIXES:
        onnx_module = OnnxModule(path, device, strict=strict)
        return onnx_module.eval(), read_card(path, onnx_module.metadata())
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            scripted = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable TorchScript model ({short_message(str(exc))}); "
            "export it again with pipelines/export.py --format torchscript"
        ) from None
    text = extra[TORCHSCRIPT_EXTRA]
    card = read_card(path, text.decode() if isinstance(text, bytes) else text)
    return ScriptedModule(scripted).eval(), card
