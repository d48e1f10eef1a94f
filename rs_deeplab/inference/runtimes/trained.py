"""Trained checkpoints and exported models as inference models: a picklable description and the loaded model.

:class:`TrainedModel` is a small picklable description of a checkpoint (``.pt``) or an exported model (``.onnx``,
``.ts``; see :mod:`rs_deeplab.inference.runtimes.exported`), so a Dask worker can be sent it instead of the weights.
:meth:`TrainedModel.load` reads the file once and returns a :class:`LoadedModel` (the module and its
:class:`~rs_deeplab.config.modelcard.ModelCard`), owned by whoever called it: there is no process-wide cache. A Dask
worker
keeps its model in a holder on the worker object (:func:`worker_model`), one model per worker at a time.

The model is built from the card with :func:`rs_deeplab.models.build_model`; nothing here imports the training stack.
A checkpoint may run through ONNX Runtime instead of PyTorch (``runtime``;
:mod:`rs_deeplab.inference.runtimes.choice`): the
description carries the choice, so each Dask worker decides for its own device.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rs_deeplab.cli.console import one_line
from rs_deeplab.cli.errors import CheckpointError, InputError
from rs_deeplab.config.modelcard import ModelCard, read_checkpoint
from rs_deeplab.models import build_model, set_output_stride


def newest_checkpoint(root: Path = Path("runs")) -> Path:
    """The most recently written ``<root>/*/best.pt``.

    Raises:
        CheckpointError: None exists.
    """
    found = sorted(root.glob("*/best.pt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        raise CheckpointError(
            f"no checkpoint found under {root}/*/best.pt; train one first (make demo or pipelines/train.py) "
            "or pass --checkpoint"
        )
    return found[-1]


CHECKPOINT_SUFFIXES = (".pt", ".pth")
EXPORTED_SUFFIXES = (".onnx", ".ts")


def model_kind(path: Path) -> str:
    """``checkpoint`` or ``exported`` from a model file's suffix.

    Raises:
        CheckpointError: Any other suffix.
    """
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in EXPORTED_SUFFIXES:
        return "exported"
    raise CheckpointError(
        f"{path}: is neither a training checkpoint (.pt) nor an exported model (.onnx, .ts); "
        "pass runs/<name>/best.pt or a file written by pipelines/export.py"
    )


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint or exported model to run (a picklable description; :meth:`load` reads it).

    A checkpoint can run at another output stride (e.g. trained at 16, inferred at 8); an exported model's stride
    is baked in. ``runtime`` is ``torch`` (the library's default: the module as trained), ``onnx`` or ``auto`` (ONNX
    Runtime on a CPU where it is installed and the model exports, else PyTorch; the command line's default);
    ``precision="int8"`` quantizes for ONNX Runtime, calibrated on the first of ``calibration``'s scenes.
    """

    path: Path
    output_stride: int | None = None
    runtime: str = "torch"
    precision: str = "fp32"
    calibration: tuple[str, ...] = ()
    strict_device: bool = False
    """``--device cuda`` was asked for explicitly: an ONNX session that would run on the CPU is an error (else a
    warning, once)."""

    @property
    def key(self) -> tuple[str, int]:
        """The file and its modification time: a changed checkpoint is another model."""
        try:
            return str(self.path.resolve()), self.path.stat().st_mtime_ns
        except OSError:
            raise CheckpointError(f"{self.path}: checkpoint not found; pass an existing --checkpoint") from None

    def fingerprint(self) -> str:
        """Identifies the weights and the output stride (for resuming an interrupted run)."""
        path, mtime = self.key
        return f"{path}:{mtime}:{self.path.stat().st_size}:os{self.output_stride}"

    def runtime_on(self, device: torch.device) -> str:
        """The runtime a checkpoint runs on ``device``: ``torch`` or ``onnx`` (see ``resolve_runtime``)."""
        from rs_deeplab.inference.runtimes.choice import missing_packages, resolve_runtime

        missing = missing_packages() if self.runtime != "torch" and device.type == "cpu" else None
        return resolve_runtime(self.runtime, self.precision, device, missing)

    def onnx_export(
        self, model: Callable[[], torch.nn.Module], card: ModelCard, device: torch.device
    ) -> tuple[torch.nn.Module | None, str]:
        """The checkpoint's cached ONNX export with this model's choices (``checkpoint_on_onnx``), and its note."""
        from rs_deeplab.inference.runtimes.choice import checkpoint_on_onnx

        return checkpoint_on_onnx(
            self.path,
            model,
            card,
            device,
            runtime=self.runtime,
            output_stride=self.output_stride,
            precision=self.precision,
            calibration=self.calibration,
            strict=self.strict_device,
        )

    def load(self, device: torch.device) -> LoadedModel:
        """Read the file (once) and return the model in eval mode on ``device`` with its card.

        Raises:
            CheckpointError: Missing, unreadable or unsafe file, an invalid card, weights unlike the architecture;
                with ``runtime="onnx"`` or int8, a model that does not export.
            InputError: An output stride for an exported model baked at another one; a runtime or precision that
                cannot run here (see :func:`rs_deeplab.inference.runtimes.choice.resolve_runtime`).
        """
        from rs_deeplab.inference.runtimes.choice import check_choice

        check_choice(self.runtime, self.precision)
        if model_kind(self.path) == "exported":
            if self.precision != "fp32":
                raise InputError(
                    f"--int8: {self.path} is an exported model, which runs as it was exported; pass "
                    "the training checkpoint (.pt) or drop the option"
                )
            from rs_deeplab.inference.runtimes.exported import load_exported

            module, card = load_exported(self.path, device, strict=self.strict_device)
            baked = card.architecture.output_stride
            if self.output_stride is not None and self.output_stride != baked:
                raise InputError(
                    f"--output-stride {self.output_stride}: {self.path} is an exported model whose "
                    f"output stride ({baked}) is baked in; drop --output-stride or export the "
                    f"checkpoint again with pipelines/export.py --output-stride {self.output_stride}"
                )
            return LoadedModel(self, module, card)
        runtime = self.runtime_on(device)
        card, weights = read_checkpoint(self.path, map_location="cpu")
        built: list[torch.nn.Module] = []

        def model() -> torch.nn.Module:  # built when needed (a cached export runs without it)
            if not built:
                built.append(model_from_weights(self.path, card, weights, device))
                if self.output_stride is not None:
                    set_output_stride(built[0], self.output_stride)
            return built[0]

        if runtime == "onnx":
            onnx_module, note = self.onnx_export(model, card, device)
            if onnx_module is not None:
                return LoadedModel(self, onnx_module, card, note)
        return LoadedModel(self, model(), card)


@dataclass
class LoadedModel:
    """A model read from a file: the module (eval mode) and its card; owned by whoever loaded it.

    Inference may move its module to the device it runs on (it is nobody else's).
    """

    source: TrainedModel
    """The file (and output stride) it was read from; what Dask workers are sent, and the resume fingerprint."""
    module: torch.nn.Module
    card: ModelCard
    runtime: str = "torch"
    """What runs a checkpoint: ``torch``, or ``onnx-fp32``/``onnx-int8`` (with ``:agreement=`` the int8 model's
    share of pixels equal to float32's); part of the fingerprint, so it is recorded in every output raster."""

    @property
    def on_onnx(self) -> bool:
        """Whether a checkpoint runs through ONNX Runtime (an export of it, baked at its output stride)."""
        return self.runtime.startswith("onnx")

    def at_output_stride(self, output_stride: int) -> LoadedModel:
        """This model run at another output stride (a checkpoint's module is changed in place, not read again).

        Raises:
            InputError: An exported model, whose stride is baked in at another one.
        """
        if output_stride == self.source.output_stride:
            return self
        if self.on_onnx:  # the export bakes in the stride it was asked for, else infer.output_stride: maybe this one
            from rs_deeplab.inference.runtimes.choice import baked_stride

            moved = replace(self.source, output_stride=output_stride)
            if baked_stride(self.card, self.source.output_stride) == output_stride:
                return replace(self, source=moved)
            return moved.load(torch.device("cpu"))
        if model_kind(self.source.path) == "exported":
            if output_stride == self.card.architecture.output_stride:
                return self
            raise InputError(
                f"output stride {output_stride}: {self.source.path} is an exported model whose "
                f"output stride ({self.card.architecture.output_stride}) is baked in"
            )
        set_output_stride(self.module, output_stride)
        return replace(self, source=replace(self.source, output_stride=output_stride))

    def fingerprint(self) -> str:
        """The source's fingerprint (see :meth:`TrainedModel.fingerprint`), and the runtime when not PyTorch."""
        base = self.source.fingerprint()
        if self.on_onnx:
            return f"{base}:{self.runtime}"
        return base if self.source.precision == "fp32" else f"{base}:{self.source.precision}"  # Dask workers

    def on_runtime(self, device: torch.device) -> LoadedModel:
        """This model run the way its source asks (``runtime``, ``precision``): a checkpoint read with PyTorch
        switches to its (cached) ONNX export where that applies; anything else is returned as it is.

        Lets a script check its inputs with the PyTorch model's card first and export only then.

        Raises:
            InputError, CheckpointError: As :meth:`TrainedModel.load`.
        """  # noqa: D205
        src = self.source
        if self.on_onnx or model_kind(src.path) != "checkpoint" or src.runtime_on(device) == "torch":
            return self
        module, note = src.onnx_export(lambda: self.module, self.card, device)
        return self if module is None else replace(self, module=module, runtime=note)


class ModelHolder:
    """One loaded model at a time, for a long-lived process that runs many tasks (a Dask worker).

    Asking for another file, output stride, runtime, precision or device replaces the model; the holder's owner
    decides its lifetime.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: tuple[tuple[Any, ...], LoadedModel] | None = None

    def get(self, trained: TrainedModel, device: torch.device) -> LoadedModel:
        """The model of ``trained`` on ``device``, read on the first call (and after the file changed)."""
        want = (
            *trained.key,
            trained.output_stride,
            trained.runtime,
            trained.precision,
            trained.calibration,
            trained.strict_device,
            str(device),
        )
        with self._lock:
            if self._held is None or self._held[0] != want:
                self._held = None  # the previous model is released before the next one is read
                self._held = (want, trained.load(device))
            return self._held[1]


HOLDER_ATTRIBUTE = "rs_deeplab_model"
"""Attribute of a Dask worker holding its :class:`ModelHolder`."""


def worker_model(trained: TrainedModel, device: torch.device) -> LoadedModel:
    """The model of ``trained`` for the Dask worker running this task, kept on that worker between tasks.

    Outside a Dask worker the model is read for this call only.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return trained.load(device)
    holder = vars(worker).setdefault(HOLDER_ATTRIBUTE, ModelHolder())  # atomic: one holder per worker
    return holder.get(trained, device)


def module_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers (for resuming runs of models given as objects)."""
    h = hashlib.sha1(usedforsecurity=False)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build_from_card(card: ModelCard) -> torch.nn.Module:
    """The network a card describes, with random weights (see :func:`rs_deeplab.models.build_model`)."""
    arch = card.architecture
    return build_model(arch.name, num_classes=card.num_classes, in_channels=card.in_channels, **arch.build_kwargs())


def build_uninitialised(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()``'s network with its tensors allocated but not initialised: for weights that are loaded next.

    Random initialisation is most of a model's build time (a ResNet-50 DeepLab: 0.35 s of 0.4 on a 2-core CPU), and
    a checkpoint's weights overwrite every value it draws. The network is built on torch's ``meta`` device, then
    given memory. Where the build cannot run there, or a buffer would not come from a state dict (a non-persistent
    one), it is built as usual. Either way, everything the state dict holds must be loaded before the model is used.
    """
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # a builder that cannot run on meta: the usual build says what is wrong, if anything
        return build()
    loaded = set(model.state_dict())
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    if any(name not in loaded for name in names):
        return build()
    return model.to_empty(device="cpu")


def load_trained_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the model a checkpoint was trained with and load its weights (eval mode on ``device``).

    Raises:
        CheckpointError: See :func:`rs_deeplab.config.modelcard.read_checkpoint`; or weights unlike the architecture
            (another class or band count, another backbone).
    """
    card, weights = read_checkpoint(path, map_location="cpu")
    return model_from_weights(path, card, weights, device), card


def model_from_weights(
    path: Path, card: ModelCard, weights: Mapping[str, torch.Tensor], device: torch.device
) -> torch.nn.Module:
    """The network ``card`` describes with the checkpoint ``path``'s ``weights``, in eval mode on ``device``.

    Raises:
        CheckpointError: An architecture this version cannot build, or weights unlike it; one line.
    """
    arch = card.architecture
    try:
        model = build_uninitialised(lambda: build_from_card(card))  # every tensor is loaded below, or it fails
    except InputError as exc:
        raise CheckpointError(
            f"{path}: records an architecture this rs_deeplab cannot build ({exc}); retrain it with this version"
        ) from None
    problem = weights_mismatch(model.state_dict(), weights)
    if problem:
        raise CheckpointError(
            f"{path}: its weights do not fit the architecture it records ({arch.describe()}, "
            f"{card.num_classes} classes, {card.in_channels} bands): {problem}; "
            "pass the checkpoint this run wrote, unedited"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: its weights do not fit the architecture it records ({arch.describe()}): {one_line(exc)[:200]}"
        ) from None
    return model.to(device).eval()


def weights_mismatch(expected: Mapping[str, Any], given: Any) -> str | None:
    """One line saying how a state dict differs from a model's (missing, unexpected, other shapes); None: it fits."""
    if not isinstance(given, Mapping):
        return f"the weights are a {type(given).__name__}, not a state dict"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(getattr(given[k], "shape", ())) != tuple(expected[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} {what} (e.g. {keys[0]})")
    return None if not parts else "tensors " + ", ".join(parts)
