"""Typed, frozen experiment configuration: a strict YAML loader with ``key.sub=value`` overrides."""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rs_deeplab.cli.durations import parse_duration, parse_size
from rs_deeplab.cli.errors import ConfigError
from rs_deeplab.config.loss_spec import parse_loss
from rs_deeplab.config.model_choices import DEFAULT_OUTPUT_STRIDES, msc_problem

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]

DatasetName = Literal["potsdam", "vaihingen", "loveda", "isaid", "voc", "cityscapes"]


class StrictModel(BaseModel):
    """Base of every config section: immutable, unknown keys rejected, defaults validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(StrictModel):
    """Where training data comes from and how batches are made."""

    source: Literal["tiles", "voc", "cityscapes"] = "tiles"
    """``tiles``: a tiler output folder holding ``index.gpkg``; ``voc``/``cityscapes``: the dataset root."""
    root: Path = Path("tiles")
    scheme: DatasetName | Literal["own"] | None = None
    """A benchmark dataset's class names and colours (see DESIGN.md, Labels); ``own``/null for your own data: the
    class names come from the tile index and colours are generated."""
    train_split: str = "train"
    val_split: str = "val"
    bands: list[PositiveInt] | None = None
    """1-based bands to read from each image; None reads all of them."""
    crop_size: PositiveInt | tuple[PositiveInt, PositiveInt] = 512
    """Training crop side, or ``[height, width]`` (Cityscapes uses ``[512, 1024]``)."""
    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.0)
    flips: Literal["aerial", "horizontal", "none"] = "aerial"
    """``aerial``: horizontal and vertical flips plus 90° rotations; ``horizontal``: VOC/Cityscapes style."""
    photometric: Literal["bands", "rgb", "none"] = "bands"
    """Colour jitter: ``bands`` works on normalised values of any band count; ``rgb`` is mmsegmentation's
    ``PhotoMetricDistortion`` on raw 8-bit values of three bands (brightness, contrast, saturation, hue), for
    published-table parity; ``none``, as the DeepLab papers train."""
    batch_size: PositiveInt = 8
    num_workers: NonNegInt = 4
    max_class_ratio: Annotated[float, Field(gt=0, le=1)] = 0.75
    """Random crops where one class covers more than this fraction are retried."""
    sampling: Literal["uniform", "balanced"] = "uniform"
    """``uniform``: every training crop equally often; ``balanced`` (tiles only): crops holding rare classes more
    often, from the index's per-class pixel counts (:func:`rs_deeplab.training.datasets.sampling.balanced_weights`)."""

    @model_validator(mode="after")
    def _check_scale(self) -> DataConfig:
        low, high = self.scale_range
        if low > high:
            raise ValueError(f"scale_range must be [low, high] with low <= high, got [{low}, {high}]")
        return self


class ModelConfig(StrictModel):
    """Which DeepLab to build; None means the paper's default."""

    name: Literal["deeplabv1", "deeplabv2", "deeplabv3", "deeplabv3plus"] = "deeplabv3plus"
    backbone: str | None = None
    output_stride: Literal[8, 16] | None = None
    head: Literal["paper", "mmseg"] = "paper"
    """``mmseg``: 512-channel ASPP with rates 12/24/36 and an auxiliary FCN head, for published-table parity."""
    weights: Literal["imagenet"] | Path | None = None
    """Encoder initialisation: ``imagenet`` for torchvision's ImageNet weights of the backbone (read from torch's hub
    cache ``$TORCH_HOME/hub/checkpoints/``, downloaded there once when missing), a local ImageNet state_dict file
    or null for random weights."""
    aux_weight: NonNegFloat = 0.4
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Probability for every dropout layer; None keeps each architecture's own (0.5 in ASPP/fc6/fc7)."""
    msc: list[PositiveFloat] | None = None
    """Multi-scale inputs (DeepLab v2, section 4), e.g. ``[1.0, 0.75, 0.5]``: the network (shared weights) runs on
    the input at each scale, the score maps are fused by their per-position maximum, and training adds a loss per
    scale to the fused output's; inference runs the fused model. null: one scale."""
    msc_weight: NonNegFloat = 1.0
    """Weight of each scale's loss when ``msc`` is set (the fused output's weighs 1; the paper weighs all 1)."""

    @field_validator("msc")
    @classmethod
    def _check_msc(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            problem = msc_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value


class OptimizerConfig(StrictModel):
    """Optimiser settings; the DeepLab papers use SGD with momentum 0.9 and weight decay 5e-4."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: NonNegFloat = 5e-4
    head_lr_mult: Annotated[float, Field(ge=1)] = 10.0
    nesterov: bool = False


class ScheduleConfig(StrictModel):
    """Iteration-based learning-rate schedule (poly, or DeepLab v1's steps) with optional linear warmup."""

    iterations: PositiveInt = 80_000
    policy: Literal["poly", "step"] = "poly"
    """``poly``: ``(1 - it/iterations)^power`` down to ``min_lr``; ``step``: times ``gamma`` every ``step_size``."""
    power: PositiveFloat = 0.9
    min_lr: NonNegFloat = 1e-4
    step_size: PositiveInt = 2000
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    warmup_iters: NonNegInt = 0
    warmup_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1
    budget: str | float | None = None
    """Wall-clock time to train for, e.g. ``15m`` or ``1h30m``, instead of an iteration count: the run measures
    its speed and plans iterations, decay, warm-up and evaluations to end in time (:mod:`rs_deeplab.training.budget`);
    ``iterations`` set as well caps the plan."""

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value)
        return value


class TrainConfig(StrictModel):
    """Engine switches: precision, compilation, accumulation, evaluation and logging cadence."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    """Mixed precision on CUDA (``auto``: bf16 from compute capability 8.0, fp16 with a GradScaler below); the CPU
    always trains in float32."""
    channels_last: bool = True
    compile: bool = False
    grad_accum: PositiveInt = 1
    sync_bn: bool = True
    class_weights: list[NonNegFloat] | Literal["auto", "balanced"] | None = None
    """One loss weight per class, or from each class's pixel frequency in the training split (tiles only), normalised
    to mean 1 over the classes present and capped at 10: ``auto`` its inverse square root, ``balanced`` its inverse
    (every class counts alike), the rarer classes at most 30 times the most frequent
    (:func:`rs_deeplab.training.datasets.tiles.auto_class_weights`)."""
    loss: str = "ce"
    """Sum of terms ``[weight*]name`` with names ``ce``, ``dice``, ``lovasz`` (Lovász-softmax), ``focal`` (γ=2):
    ``ce``, ``ce+dice``, ``ce+0.5*lovasz``; each term ignores 255 and uses the class weights."""
    ema: float = Field(0.0, ge=0.0, lt=1.0)
    """Decay per iteration of a moving average of the weights that evaluation, ``best.pt``, ``last.pt``'s ``model``
    and inference use (e.g. 0.999; warmed up over the first iterations,
    :mod:`rs_deeplab.training.averaging`); 0: the last iterate's weights."""
    eval_every: PositiveInt = 4000
    checkpoint_every: PositiveInt = 1000
    log_every: PositiveInt = 50

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, value: str) -> str:
        parse_loss(value)
        return value

    @field_validator("class_weights", mode="before")
    @classmethod
    def _check_class_weights(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("auto", "balanced"):
            raise ValueError("expected 'auto', 'balanced', a list of one weight per class or null")
        return value


class InferConfig(StrictModel):
    """Sliding-window inference defaults recorded with every trained model."""

    size: PositiveInt = 512
    stride: PositiveInt = 256
    batch_size: PositiveInt = 8
    window: Literal["hann", "gaussian"] = "hann"
    tta: bool = False
    scales: list[PositiveFloat] = [1.0]
    crf: bool = False
    output_stride: Literal[8, 16] | None = None
    """Run inference at another output stride than training (trained at 16, inferred at 8: DeepLab v3 §4.1)."""
    scenes: list[Path] = []
    """Held-out scenes that ``pipelines/infer.py`` runs on when no scene is given."""

    @model_validator(mode="after")
    def _check_stride(self) -> InferConfig:
        if self.stride > self.size:
            raise ValueError(f"stride ({self.stride}) must not exceed size ({self.size}); windows would leave gaps")
        return self


class AutoConfig(StrictModel):
    """Settings derived from a fingerprint of the data and the machine (:mod:`rs_deeplab.training.autoconfig`)."""

    enabled: bool = False
    """Derive crop size, batch, class weights, loss, sampling, augmentation and learning rate; values set in the
    config or on the command line win."""
    memory: str | None = None
    """Memory training may use, e.g. ``8GB`` (per GPU on CUDA); null: what is free when the run starts."""
    lr_test: bool = True
    """Pick ``optimizer.lr`` with a short range test where it pays for itself (:mod:`rs_deeplab.training.lr_range`)."""

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value


class ExperimentConfig(StrictModel):
    """One experiment: everything ``pipelines/train.py`` and ``pipelines/infer.py`` need."""

    name: str = "experiment"
    work_dir: Path | None = None
    """Output folder; ``runs/<name>`` when None."""
    seed: int = 0
    resume: bool = True
    """Continue from ``last.pt`` in the work dir when it exists."""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    auto: AutoConfig = AutoConfig()
    """Derived settings (own data); off unless ``auto.enabled: true``."""

    @model_validator(mode="after")
    def _check_msc_crop(self) -> ExperimentConfig:
        problem = msc_crop_problem(self.model, self.data.crop_size)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def run_dir(self) -> Path:
        """The folder checkpoints, logs and plots go to."""
        return self.work_dir if self.work_dir is not None else Path("runs") / self.name


def msc_crop_problem(model: ModelConfig, crop_size: int | tuple[int, int]) -> str | None:
    """Why a scale of ``model.msc`` shrinks the training crop below the network's output stride, or None."""
    if not model.msc:
        return None
    stride = model.output_stride or DEFAULT_OUTPUT_STRIDES[model.name].get(model.head, 8)
    side = min(crop_size) if isinstance(crop_size, tuple) else crop_size
    for scale in sorted(model.msc):
        if int(side * scale) < stride:
            need = math.ceil(stride / scale)
            return (
                f"model.msc: scale {scale:g} makes the {side}-pixel training crop {int(side * scale)} pixels, smaller "
                f"than the output stride {stride} of {model.name}; drop {scale:g} from model.msc or raise "
                f"data.crop_size to at least {need}"
            )
    return None


M = TypeVar("M", bound=BaseModel)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.sub=value`` strings; values are read as YAML scalars or flow lists (``[1, 2]``)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key.sub=value, e.g. optimizer.lr=0.01")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.sub=value`` override set (missing sections are created)."""
    result = _deep_copy(data)
    for path, value in parse_overrides(overrides):
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file, bad syntax or a non-mapping document."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder; pass a YAML config file such as configs/demo.yaml")
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass a YAML file such as configs/demo.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (binary content); pass a YAML config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config ({exc.strerror or exc}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: {_yaml_problem(exc)}; fix the file (YAML key: value lines)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where, and what the parser found."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not a text file (character {exc.character!r} at byte {exc.position})"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or "invalid YAML"
    return f"YAML syntax error{where}: {problem}"


def validate_config(data: Mapping[str, Any], model: type[M], *, source: str = "config") -> M:
    """Validate ``data`` against ``model``, turning the first pydantic error into a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def load_config(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    model: type[M] = ExperimentConfig,  # type: ignore[assignment]
) -> M:
    """Load a YAML config file, apply ``key.sub=value`` overrides and validate it strictly.

    Args:
        path: YAML file.
        overrides: Strings such as ``optimizer.lr=0.01`` or ``data.bands=[1,2,3]``.
        model: The config model to validate against.

    Returns:
        The frozen, validated config. For :class:`ExperimentConfig`, ``name`` defaults to the file's stem.

    Raises:
        ConfigError: Missing file, bad YAML, unknown key, wrong type or out-of-range value.
    """
    data = apply_overrides(read_yaml(path), overrides)
    if model is ExperimentConfig:
        data.setdefault("name", Path(path).stem)
    return validate_config(data, model, source=str(path))


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """Plain-data view of a config (paths as strings), as written to ``config.yaml`` and checkpoints."""
    return config.model_dump(mode="json")


def dump_config(config: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML beside an output, atomically."""
    from rs_deeplab.geo.raster import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    return Path(path)


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line: ``source: key.path: problem (given X); allowed ...`` for the first error, with a count of others."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc) or "<top level>"
    given = first.get("input")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, first["loc"][:-1])
        where = ".".join(loc[:-1]) or "the top level"
        text = f"{key}: unknown key (given {given!r}); allowed keys under {where}: {', '.join(allowed)}"
    elif not loc and first["type"] == "value_error":  # a check across sections names its own keys
        text = str(first.get("ctx", {}).get("error", first["msg"])).rstrip(".")
    else:
        shown = given if not isinstance(given, dict) else "a mapping"
        text = f"{key}: {first['msg'].rstrip('.')} (given {shown!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}: {text}{more}"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = _unwrap_model(field.annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _unwrap_model(annotation: Any) -> Any:
    if _is_model(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None
