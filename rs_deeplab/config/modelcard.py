"""What a trained model needs to predict, as one typed record: the :class:`ModelCard`.

A card holds the architecture (what :func:`rs_deeplab.models.build_model` needs besides the class count), the bands
the model reads and their statistics, the classes and their colours, the training GSD and the inference defaults
(the ``infer`` section of the training config, :class:`rs_deeplab.config.schema.InferConfig`, whose defaults are the
only
ones). Training writes what it holds into every checkpoint (``config``, ``class_names``, ``class_colours``,
``band_stats``, ``in_channels``, ``gsd``, ``band_names``), from which :func:`card_from_state` makes it; exported
models (ONNX, TorchScript) carry it as JSON metadata (:func:`card_to_metadata`, :func:`card_from_metadata`).

Checkpoints are read with ``torch.load(weights_only=True)`` (:func:`load_checkpoint_file`): tensors and plain data
only, so reading a checkpoint never runs code stored in it. This module imports neither the training stack nor
albumentations.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from rs_deeplab.cli.errors import CheckpointError
from rs_deeplab.config.schema import InferConfig, ModelConfig
from rs_deeplab.labels.classes import IGNORE_INDEX, SCHEMES, colour_table

CARD_FORMAT = 1
"""Version of the card's JSON layout (exported models' metadata); a newer one is refused."""
CHECKPOINT_FIX = "pass a checkpoint written by pipelines/train.py (runs/<name>/best.pt), unedited"
EXPORT_FIX = "export the checkpoint again with pipelines/export.py"
CARD_KEYS = ("config", "class_names", "band_stats")
"""What a checkpoint must hold to describe its model (besides the optional colours, GSD, band names)."""

UNSAFE = "Unsupported global: GLOBAL "
"""How ``torch.load(weights_only=True)`` names a pickled object it refuses."""

Colour = tuple[int, int, int, int]


@dataclass(frozen=True)
class Architecture:
    """Which network to build: the keywords of :func:`rs_deeplab.models.build_model` besides classes and bands.

    None for ``backbone`` or ``output_stride`` means the paper's choice (see ``rs_deeplab.models.MODELS``).
    """

    name: str
    backbone: str | None = None
    output_stride: int | None = None
    """The stride the weights were trained at, or an exported model's baked one."""
    head: str = "paper"
    aux_weight: float = 0.4
    msc: tuple[float, ...] | None = None
    """Multi-scale input scales (DeepLab v2); None: one scale."""

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> Architecture:
        """From a config's ``model`` section (unknown keys ignored, missing ones from ``ModelConfig``'s defaults).

        Raises:
            ValueError: A value the config would refuse (an unknown model, an output stride other than 8 or 16).
        """
        known = {k: v for k, v in section.items() if k in ModelConfig.model_fields and k != "weights"}
        m = ModelConfig.model_validate(known)
        return cls(m.name, m.backbone, m.output_stride, m.head, m.aux_weight, None if m.msc is None else tuple(m.msc))

    def to_dict(self) -> dict[str, Any]:
        """Plain form (JSON and ``weights_only`` checkpoints)."""
        return {"name": self.name, **self.build_kwargs()}

    def build_kwargs(self) -> dict[str, Any]:
        """Keywords of :func:`rs_deeplab.models.build_model` (add ``num_classes`` and ``in_channels``)."""
        return {
            "backbone": self.backbone,
            "output_stride": self.output_stride,
            "head": self.head,
            "aux_weight": self.aux_weight,
            "msc": None if self.msc is None else list(self.msc),
        }

    def describe(self) -> str:
        """``deeplabv3plus, resnet18`` for messages."""
        return f"{self.name}, {self.backbone}"


@dataclass(frozen=True)
class ModelCard:
    """Everything inference needs from a trained model besides its weights; validated when made.

    Raises:
        ValueError: Parts that contradict each other (statistics for another band count, colours of classes the
            model lacks...); readers turn it into a :class:`~rs_deeplab.cli.errors.CheckpointError` naming the file.
    """

    architecture: Architecture
    class_names: tuple[str, ...]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bands: tuple[int, ...] | None = None
    """1-based scene bands the model was trained on (None: all bands, ``in_channels`` of them)."""
    band_names: tuple[str, ...] | None = None
    """Names of the bands the model sees (the training crops' band descriptions); None when they were unnamed."""
    colormap: dict[int, Colour] | None = None
    """Colour table of the label raster ``{class: (r, g, b, a)}`` (255, ignore, transparent); None: no colours."""
    scheme: str = ""
    """The class scheme of the training data (``potsdam``, ``voc``, ...; empty for own classes)."""
    gsd: float | None = None
    """Ground sampling distance (metres per pixel) of the training scenes; None for pixel-only data."""
    infer: InferConfig = field(default_factory=InferConfig)
    """Inference defaults: window size and stride, batch size, blending window, TTA, held-out scenes..."""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        n, c = len(self.class_names), self.in_channels
        if not n or not all(isinstance(name, str) and name for name in self.class_names):
            return f"class names {list(self.class_names)!r} must be one or more non-empty names"
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            return f"in_channels {c!r} must be a positive whole number"
        if len(self.mean) != c or len(self.std) != c:
            return f"band statistics for {len(self.mean)}/{len(self.std)} bands (mean/std), the model reads {c}"
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            return "band statistics hold a value that is not a finite number"
        if self.bands is not None and (len(self.bands) != c or any(b < 1 for b in self.bands)):
            return f"bands {list(self.bands)} must be {c} band numbers counted from 1"
        if self.band_names is not None and len(self.band_names) != c:
            return f"{len(self.band_names)} band names for {c} bands"
        if self.colormap is not None:
            extra = sorted(k for k in self.colormap if not (0 <= k < n or k == IGNORE_INDEX))
            if extra:
                return f"colours for class(es) {extra} of a model with {n} classes"
        if self.gsd is not None and not (math.isfinite(self.gsd) and self.gsd > 0):
            return f"gsd {self.gsd!r} must be a positive number of metres per pixel"
        return None

    @property
    def num_classes(self) -> int:
        """Classes the model predicts (logit channels)."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain form: JSON-ready, and loadable with ``torch.load(weights_only=True)`` (see :meth:`from_dict`).

        Besides the fields it names the window (``window``) and the architecture's output stride at the top level,
        for people reading an exported model's metadata; :meth:`from_dict` ignores them.
        """
        infer = self.infer.model_dump(mode="json")
        if infer.get("output_stride") is None:
            infer.pop("output_stride", None)
        return {
            "format": CARD_FORMAT,
            "class_names": list(self.class_names),
            "class_colours": None if self.colormap is None else [[k, *v] for k, v in sorted(self.colormap.items())],
            "mean": list(self.mean),
            "std": list(self.std),
            "bands": None if self.bands is None else list(self.bands),
            "band_names": None if self.band_names is None else list(self.band_names),
            "in_channels": self.in_channels,
            "gsd": self.gsd,
            "window": {"size": self.infer.size, "stride": self.infer.stride},
            "output_stride": self.architecture.output_stride,
            "infer": infer,
            "model": self.architecture.to_dict(),
            "scheme": self.scheme,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict` (also reads the cards of models exported before this class existed).

        Raises:
            ValueError, KeyError, TypeError: A damaged card; readers name the file (:func:`card_from_metadata`).
        """
        if int(data["format"]) > CARD_FORMAT:
            raise ValueError(
                f"card format {data['format']} is newer than this rs_deeplab reads ({CARD_FORMAT}); update rs_deeplab"
            )
        colours = data.get("class_colours")
        return cls(
            architecture=Architecture.from_dict(data.get("model") or {}),
            class_names=tuple(str(n) for n in data["class_names"]),
            in_channels=int(data["in_channels"]),
            mean=tuple(float(m) for m in data["mean"]),
            std=tuple(float(s) for s in data["std"]),
            bands=None if data.get("bands") is None else tuple(int(b) for b in data["bands"]),
            band_names=None if not data.get("band_names") else tuple(str(b) for b in data["band_names"]),
            colormap=None if colours is None else {int(c[0]): _rgba(c[1:]) for c in colours},
            scheme=str(data.get("scheme") or ""),
            gsd=None if data.get("gsd") is None else float(data["gsd"]),
            infer=infer_settings(data.get("infer") or {}),
        )


def infer_settings(section: Mapping[str, Any]) -> InferConfig:
    """A config's ``infer`` section as :class:`InferConfig` (unknown keys ignored, missing ones its defaults).

    Raises:
        ValueError: A value the config would refuse (a stride above the window size...).
    """
    return InferConfig.model_validate({k: v for k, v in section.items() if k in InferConfig.model_fields})


def card_from_training(
    config: Mapping[str, Any],
    class_names: Sequence[str],
    band_stats: Mapping[str, Sequence[float]],
    *,
    in_channels: int | None = None,
    class_colours: Sequence[Sequence[int]] | None = None,
    gsd: Any = None,
    band_names: Sequence[str] | None = None,
) -> ModelCard:
    """The card of a model trained with ``config`` (a plain config dictionary) on data of these classes and bands.

    Colours: ``class_colours`` when there is one per class, else the scheme's when it has as many classes, else
    none. ``in_channels`` defaults to the statistics' band count; a ``gsd`` that is no positive number is None.

    Raises:
        ValueError, KeyError, TypeError: Parts missing or contradicting each other.
    """
    data = config.get("data") or {}
    scheme_name = str(data.get("scheme") or "")
    scheme = SCHEMES.get(scheme_name)
    names = tuple(str(n) for n in class_names)
    if class_colours is not None and len(class_colours) == len(names):
        colormap: dict[int, Colour] | None = colour_table([(int(c[0]), int(c[1]), int(c[2])) for c in class_colours])
    elif scheme is not None and scheme.num_classes == len(names):
        colormap = dict(scheme.colormap())
    else:
        colormap = None
    mean = tuple(float(m) for m in band_stats["mean"])
    bands = data.get("bands")
    return ModelCard(
        architecture=Architecture.from_dict(config["model"]),
        class_names=names,
        in_channels=len(mean) if in_channels is None else int(in_channels),
        mean=mean,
        std=tuple(float(s) for s in band_stats["std"]),
        bands=None if bands is None else tuple(int(b) for b in bands),
        band_names=None if not band_names else tuple(str(b) for b in band_names),
        colormap=colormap,
        scheme=scheme_name,
        gsd=_positive(gsd),
        infer=infer_settings(config.get("infer") or {}),
    )


def _positive(value: Any) -> float | None:
    """A recorded GSD, if it is a positive finite number."""
    try:
        gsd = float(value)
    except (TypeError, ValueError):
        return None
    return gsd if math.isfinite(gsd) and gsd > 0 else None


def _rgba(values: Sequence[Any]) -> Colour:
    r, g, b, a = (int(v) for v in values)
    return r, g, b, a


def _legacy_globals() -> list[Any]:
    """The types earlier checkpoints pickled besides tensors and plain data (each builds an array, dtype or string).

    NumPy's RNG state (an array) and ``torch.__version__`` (a string subclass).
    """
    from torch.torch_version import TorchVersion

    reconstruct = getattr(getattr(np, "_core", np.core), "multiarray")._reconstruct  # noqa: B009
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), TorchVersion]


def load_checkpoint_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state dictionary, read with ``torch.load(weights_only=True)``: tensors and plain data only.

    Checkpoints of earlier versions, which also held NumPy's RNG state as an array, are read with exactly those
    NumPy types allowed (their RNG state comes back as an array). Anything else pickled in the file (an object,
    a function) is refused without running it.

    Raises:
        CheckpointError: Missing file, unreadable/corrupt file, objects other than tensors and plain data, or no
            dictionary; one line naming the file and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found; train first (pipelines/train.py) or pass --checkpoint")
    try:
        state = _safe_load(p, map_location)
    except pickle.UnpicklingError as exc:
        if UNSAFE not in str(exc):  # a damaged pickle stream
            raise CheckpointError(f"{p}: not a readable checkpoint (UnpicklingError); it may be truncated") from None
        found = str(exc).split(UNSAFE, 1)[1].split(" ", 1)[0]
        raise CheckpointError(
            f"{p}: holds objects other than tensors and plain data ({found}), "
            "which are not loaded (they could run code); retrain, or re-save it with torch.save "
            "holding only tensors, numbers, strings, lists and dicts"
        ) from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(exc).__name__}); it may be truncated") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: not an rs_deeplab checkpoint (holds a {type(state).__name__})")
    return state


def _safe_load(path: Path, map_location: str | torch.device) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign file: our own error follows
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            if UNSAFE not in str(exc):
                raise
            with torch.serialization.safe_globals(_legacy_globals()):  # a checkpoint of an earlier version
                return torch.load(path, map_location=map_location, weights_only=True)


def card_from_state(path: Path, state: Mapping[str, Any]) -> ModelCard:
    """The card of a loaded checkpoint, from its config, classes, statistics, colours, GSD and band names.

    Raises:
        CheckpointError: Keys missing, or parts that contradict each other; one line naming the file and the fix.
    """
    missing = [k for k in CARD_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an rs_deeplab checkpoint (missing {', '.join(missing)}); {CHECKPOINT_FIX}")
    try:
        return card_from_training(
            state["config"],
            state["class_names"],
            state["band_stats"],
            in_channels=state.get("in_channels"),
            class_colours=state.get("class_colours"),
            gsd=state.get("gsd"),
            band_names=state.get("band_names"),
        )
    except ValidationError as exc:
        raise CheckpointError(
            f"{path}: its recorded settings are invalid ({_first_error(exc)}); {CHECKPOINT_FIX}"
        ) from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path}: its model card is invalid ({_short(exc)}); {CHECKPOINT_FIX}") from None


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """A training checkpoint (``.pt``/``.pth``) as its card and the model's weights (a state dict).

    Raises:
        CheckpointError: Missing, unreadable or unsafe file, keys missing, an invalid card, no weights; one line.
    """
    p = Path(path)
    state = load_checkpoint_file(p, map_location)
    if "model" not in state:
        raise CheckpointError(f"{p}: not an rs_deeplab checkpoint (missing model); {CHECKPOINT_FIX}")
    card = card_from_state(p, state)
    weights = state["model"]
    if not isinstance(weights, Mapping) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(
            f"{p}: its weights are a {type(weights).__name__}, not a state dict of tensors; {CHECKPOINT_FIX}"
        )
    return card, dict(weights)


def card_to_metadata(card: ModelCard, source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The JSON card stored in an exported model: :meth:`ModelCard.to_dict` and the checkpoint it came from."""
    return {**card.to_dict(), "source": None if source is None else str(source)}


def card_from_metadata(path: Path, text: str | None, what: str = "rs_deeplab") -> ModelCard:
    """The card stored (as JSON text under the key ``what``) in the exported model ``path``.

    Raises:
        CheckpointError: No card (not written by ``pipelines/export.py``), damaged, or of a newer format.
    """
    if not text:
        raise CheckpointError(
            f"{path}: has no {what} metadata (bands, statistics, classes), so it was not "
            "exported by this project; export a checkpoint with python pipelines/export.py "
            "CHECKPOINT --out MODEL.onnx"
        )
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"a {type(data).__name__}, not an object")
        return ModelCard.from_dict(data)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: its {what} metadata is damaged ({_first_error(exc)}); {EXPORT_FIX}") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        if "newer than this rs_deeplab" in str(exc):
            raise CheckpointError(f"{path}: {exc}") from None
        raise CheckpointError(f"{path}: its {what} metadata is damaged ({_short(exc)}); {EXPORT_FIX}") from None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", ""))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"
