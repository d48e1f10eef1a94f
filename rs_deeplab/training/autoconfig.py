"""Settings from a fingerprint of the data and the machine: ``auto.enabled`` (``configs/own_data.yaml``).

Before training, :func:`fingerprint` reads the tile index and a sample of label crops: the number of crops and
scenes, the crops' size, bands and dtype, the pixel size (GSD) of each scene, each class's share of the labelled
pixels and the size of its objects (connected components), and the machine: cores, memory and GPUs.
:func:`derive` (pure) turns that into settings, each with the reason it was chosen:

- ``data.crop_size``: about three times the larger objects' diameter (an object with its surroundings), within the
  tiles and a device cap;
- ``data.batch_size``: a number of pixels per step suited to the device, at most half the crops, halved
  until the estimated training memory fits (``auto.memory`` or the memory free now); ``data.num_workers`` from the
  cores (half of them feed a CPU run, all but one per GPU feed a GPU);
- ``train.class_weights``, ``train.loss`` and ``data.sampling``: from the imbalance between classes and the size of
  the rarest objects (CE when balanced, CE + Dice when imbalanced, CE + Lovász for small objects, focal + Dice when a
  class is nearly absent); ``1/frequency`` weights when one scene trains (its class mix says little about the
  region's), ``1/sqrt(frequency)`` when several do;
- ``data.scale_range``, ``data.flips``, ``data.photometric``: overhead imagery at one pixel size gets flips and 90°
  rotations, mild rescaling and per-band jitter; the rescaling widens to 0.5-2 once the schedule is known
  (:func:`adapt_to_plan`) if it gives the crops hundreds of passes, which a few crops would otherwise be memorised
  in;
- ``train.ema``: in the same many-passes regime, evaluate and keep a moving average of the weights, which is
  steadier than a last iterate that over-fits the crops;
- ``optimizer.weight_decay``: stronger for few crops (AdamW);
- ``optimizer.lr``: a short learning-rate range test (:mod:`rs_deeplab.training.lr_range`) where it pays for
  itself.

Any value set in the config file or on the command line wins (pydantic's ``model_fields_set``). The derived
values, the fingerprint and the reasons are logged, written to ``auto.json`` in the run folder and kept in the
checkpoints, so a resumed run trains with the settings it started with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.config.schema import ExperimentConfig
from rs_deeplab.runtime.cores import usable_cores

log = logging.getLogger("rs_deeplab.training.autoconfig")

SAMPLE_CROPS = 96
"""Label crops read for object sizes (spread over the training split)."""
CONTEXT = 3.0
"""A crop spans this many diameters of the larger objects (the object and its surroundings)."""
MIN_CROP = 64
CROP_CAP = {"cpu": 256, "cuda": 512}
"""Largest derived crop side per device type (larger crops cost iterations a time budget could spend)."""
BATCH_PIXELS = {"cpu": 8 * 128 * 128, "cuda": 16 * 512 * 512}
"""Pixels per training step the derived batch aims at."""
TRAIN_BYTES_PER_PIXEL = 6_000
"""Estimated training memory per input pixel (activations, gradients; float32, ResNet-50 DeepLab v3+: an upper
bound for the smaller backbones)."""
MEMORY_SHARE = 0.5
"""Share of the memory a batch may take (the rest: model, optimiser, loader workers, the system)."""
BALANCED_RATIO = 4.0
"""Classes whose pixel shares differ less than this are balanced: plain cross-entropy, uniform sampling."""
SMALL_OBJECTS = 8.0
"""A class whose median object is narrower than this (pixels: half a feature cell at output stride 16) has small
objects, which cross-entropy on a coarse score map barely sees."""
NEARLY_ABSENT = 0.002
"""A class under this share of the labelled pixels is nearly absent."""
FEW_CROPS = 1000
"""Fewer training crops than this are memorised within minutes: stronger weight decay."""
WIDE_PASSES = 200
"""Passes over the training crops from which the rescaling widens to :data:`WIDE_SCALE`. New Brunswick's 10-minute
run gives ~900 (20 crops), where 0.5-2 raised the held-out mIoU by ~0.03; the generated scenes' 3 minutes give ~50
(98 crops), where it cost ~0.07: harder crops need iterations a short run does not have (bench/RESULTS.md)."""
WIDE_SCALE = [0.5, 2.0]
EMA_DECAY = 0.999
"""``train.ema`` when the schedule gives :data:`WIDE_PASSES` passes: an average over the last ~1,000 iterations
(fewer early on: the decay warms up). A short run's poly decay already ends on small steps, and an average lags
it (the generated scenes in 3 minutes: 0.666 with it, 0.698 without, one run each)."""
FEW_PIXELS = 500
"""A class with fewer labelled pixels than this is warned about (it is kept)."""
DERIVED = (
    "data.crop_size",
    "data.batch_size",
    "data.num_workers",
    "data.sampling",
    "data.scale_range",
    "data.flips",
    "data.photometric",
    "train.class_weights",
    "train.loss",
    "train.ema",
    "optimizer.lr",
    "optimizer.weight_decay",
)
"""Every key :func:`derive` may set."""


@dataclass(frozen=True)
class ClassFacts:
    """One class in the training split."""

    name: str
    share: float
    """Of the labelled pixels (index counts)."""
    pixels: int
    crops: int
    """Training crops holding some of it."""
    objects: int
    """Connected components in the sampled crops."""
    size_median: float | None
    """Diameter (pixels, of a circle of the same area) of the object a median pixel of the class lies in
    (:func:`area_percentile`), in the sampled crops; None: no object."""
    size_p90: float | None
    """The same at the 90th percentile."""


@dataclass(frozen=True)
class Fingerprint:
    """What :func:`derive` decides from: the training data and the machine."""

    crops: int
    val_crops: int
    scenes: int
    crop_shape: tuple[int, int]
    """The smallest training crop (height, width)."""
    bands: int
    dtype: str
    band_mean: tuple[float, ...]
    band_std: tuple[float, ...]
    gsd: tuple[float, ...]
    """Pixel size of each training scene (metres), empty for pixel-only data."""
    classes: tuple[ClassFacts, ...]
    device: str
    """``cpu`` or ``cuda``."""
    cores: int
    memory: int
    """Bytes training may use: ``auto.memory``, or the memory available now (per GPU on CUDA)."""
    memory_source: str
    gpus: int = 0
    sampled: int = 0
    """Label crops read for object sizes."""

    def as_dict(self) -> dict[str, Any]:
        """For ``auto.json`` and checkpoints."""
        return asdict(self)


@dataclass(frozen=True)
class Derived:
    """The settings :func:`derive` chose, with reasons; the user's values are listed apart."""

    values: dict[str, Any]
    reasons: dict[str, str]
    kept: dict[str, Any] = field(default_factory=dict)
    """Keys the user set (config or command line), with their values: not derived."""
    notes: list[str] = field(default_factory=list)
    """Warnings and adaptations (a class of a handful of pixels, a batch halved for memory)."""
    by_plan: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Values decided once the schedule is known (:func:`adapt_to_plan`): key → ``min_passes``, ``value`` and, once
    decided, ``passes``."""

    def as_dict(self) -> dict[str, Any]:
        """For ``auto.json`` and checkpoints."""
        return asdict(self)


def memory_limit(stated: int | None) -> tuple[int, str]:
    """Bytes training may use: ``stated`` (``auto.memory``), else the memory available now within any cgroup limit."""
    if stated is not None:
        return stated, "auto.memory"
    import psutil

    available = int(psutil.virtual_memory().available)
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if text != "max":
            available = min(available, max(int(text) - used, 0))
    except (OSError, ValueError):
        pass
    return available, "available now"


def object_sizes(labels: Sequence[np.ndarray], num_classes: int) -> list[np.ndarray]:
    """Diameters (pixels, of the circle of the same area) of each class's connected components in ``labels``."""
    from scipy import ndimage

    sizes: list[list[float]] = [[] for _ in range(num_classes)]
    for label in labels:
        for c in np.unique(label):
            if c >= num_classes:
                continue  # 255: ignore
            parts, n = ndimage.label(label == c)
            if n:
                areas = np.bincount(parts.ravel())[1:]
                sizes[int(c)].extend((2.0 * np.sqrt(areas / math.pi)).tolist())
    return [np.asarray(s, dtype=np.float64) for s in sizes]


def area_percentile(diameters: np.ndarray, q: float) -> float | None:
    """The diameter of the object that the ``q``-th percentile pixel belongs to (percentile weighted by area).

    Weighting by area keeps a class's many slivers (label edges, fragments) from making its objects look small:
    the median is the size of the object a typical pixel of the class lies in. None without objects.
    """
    if len(diameters) == 0:
        return None
    ordered = np.sort(diameters)
    cumulative = np.cumsum(ordered**2)
    return float(ordered[np.searchsorted(cumulative, q / 100 * cumulative[-1])])


def fingerprint(
    train: Any, val: Any, stats: Any, *, device: str, memory: int | None = None, gpus: int = 0
) -> Fingerprint:
    """Read the training split's index counts, a sample of its label crops and the machine.

    Args:
        train: The training :class:`~rs_deeplab.training.datasets.tiles.TileIndexSource` (index counts, scenes).
        val: The validation source (its crop count).
        stats: The training split's band statistics (:class:`~rs_deeplab.training.transforms.ChannelStats`).
        device: ``cpu`` or ``cuda``.
        memory: ``auto.memory`` in bytes, or None for the memory available now.
        gpus: GPUs in use.

    Raises:
        InputError: The data is not a tile index (no per-class pixel counts).
    """
    from rs_deeplab.geo.raster import open_raster

    counts = getattr(train, "class_counts", None)
    if counts is None:
        raise InputError(
            f"auto: reads the per-class pixel counts of a tile index (data.source: tiles); "
            f"{type(train).__name__} has none: set auto.enabled: false and give the settings"
        )
    counts = np.asarray(counts, dtype=np.int64)
    total = max(int(counts.sum()), 1)
    step = max(1, len(train) // SAMPLE_CROPS)
    picked = list(range(0, len(train), step))[:SAMPLE_CROPS]
    labels = [train.read_label(i) for i in picked]
    sizes = object_sizes(labels, len(train.class_names))
    shapes = [lab.shape for lab in labels]
    gsd: list[float] = []
    dtype = "unknown"
    for image in train.scene_images():
        with open_raster(image) as src:
            dtype = str(src.dtypes[0])
            if src.crs is not None and not src.transform.is_identity:
                gsd.append(float(abs(src.res[0])))
    classes = tuple(
        ClassFacts(
            name=str(name),
            share=float(counts[:, c].sum()) / total,
            pixels=int(counts[:, c].sum()),
            crops=int((counts[:, c] > 0).sum()),
            objects=len(sizes[c]),
            size_median=area_percentile(sizes[c], 50),
            size_p90=area_percentile(sizes[c], 90),
        )
        for c, name in enumerate(train.class_names)
    )
    limit, source = memory_limit(memory)
    if device == "cuda" and memory is None:
        import torch

        limit, source = int(torch.cuda.mem_get_info()[0]), "free on the GPU now"
    return Fingerprint(
        crops=len(train),
        val_crops=len(val) if val is not None else 0,
        scenes=len(set(getattr(train, "scenes", []))),
        crop_shape=(min(s[0] for s in shapes), min(s[1] for s in shapes)),
        bands=len(stats.mean),
        dtype=dtype,
        band_mean=tuple(stats.mean),
        band_std=tuple(stats.std),
        gsd=tuple(gsd),
        classes=classes,
        device=device,
        cores=usable_cores(),
        memory=limit,
        memory_source=source,
        gpus=gpus,
        sampled=len(labels),
    )


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MB"


def derive(
    fp: Fingerprint, user: set[str] | None = None, current: dict[str, Any] | None = None, *, optimizer: str = "adamw"
) -> Derived:
    """Settings for ``fp``'s data and machine, each with its reason (pure).

    Args:
        fp: The fingerprint.
        user: Dotted keys the user set (``data.crop_size``...): not derived, their ``current`` values are used in
            the later decisions (a user's crop size sets the batch).
        current: The config's values of the keys in :data:`DERIVED`.
        optimizer: ``optimizer.name``: its usual rate from random weights until a range test picks one.

    Raises:
        InputError: The training split has fewer than two classes, or a batch of two of the smallest crops does
            not fit the memory.
    """
    user, current = user or set(), current or {}
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    notes: list[str] = []

    def decide(key: str, value: Any, reason: str) -> Any:
        if key in user:
            return current.get(key)
        values[key], reasons[key] = value, reason
        return value

    present = [c for c in fp.classes if c.pixels > 0]
    if len(present) < 2:
        only = present[0].name if present else "none"
        raise InputError(
            f"auto: the training split has labelled pixels of one class only ({only}): a model has "
            "nothing to tell apart; label at least two classes (e.g. tile.py --label-fill 0 "
            "--classes background,<your classes>)"
        )
    for c in fp.classes:
        if 0 < c.pixels < FEW_PIXELS:
            notes.append(
                f"class {c.name} has only {c.pixels} labelled pixels in {c.crops} training crop(s): kept, "
                "with the highest weight and its crops drawn more often; expect a low IoU until more of it "
                "is labelled"
            )
        elif c.pixels == 0:
            notes.append(f"class {c.name} has no training pixels: the model cannot learn it (its weight is 0)")

    # crop: the larger objects of the classes that form objects (narrower than the tiles) with their surroundings
    tile = min(fp.crop_shape)
    things = [c.size_p90 for c in present if c.size_p90 is not None and c.size_p90 < tile]
    need = _round_up(max(CONTEXT * max(things), MIN_CROP), 32) if things else tile
    cap = CROP_CAP.get(fp.device, 512)
    crop = max(min(need, tile, cap), min(MIN_CROP, tile))
    why = (
        f"objects up to {max(things):.0f} px across (90th percentile) need ~{need} px with context"
        if things
        else "every class spans whole crops"
    )
    limit = "the tiles' size" if crop == tile else f"the {fp.device} cap" if crop == cap else "enough"
    crop = decide("data.crop_size", crop, f"{why}; {crop} px ({limit}; tiles are {tile} px)")
    side = crop if isinstance(crop, int) else int(min(crop))

    # batch: pixels per step for the device, half the crops at most, halved until it fits the memory
    aim = max(2, round(BATCH_PIXELS.get(fp.device, BATCH_PIXELS["cpu"]) / (side * side)))
    batch = min(aim, 16, max(2, fp.crops // 2))  # a step never sees more than half the crops
    why = f"{aim} crops of {side} px per step suit the {fp.device}" + (
        f", {fp.crops} training crops allow {batch}" if batch < min(aim, 16) else ""
    )
    per_sample = TRAIN_BYTES_PER_PIXEL * side * side
    budget = MEMORY_SHARE * fp.memory
    smallest = TRAIN_BYTES_PER_PIXEL * MIN_CROP * MIN_CROP * 2
    if smallest > budget:
        raise InputError(
            f"auto: training needs about {_gb(smallest / MEMORY_SHARE)} of memory even at batch 2 "
            f"of {MIN_CROP} px crops, more than the {_gb(fp.memory)} {fp.memory_source}; raise "
            "auto.memory or free memory"
        )
    if "data.batch_size" in user and current.get("data.batch_size", 0) * per_sample > budget:
        notes.append(
            f"memory: the config's batch {current['data.batch_size']} of {side} px crops may need more than "
            f"{_gb(fp.memory)} {fp.memory_source}: kept as set"
        )
    fits = batch
    while fits > 2 and fits * per_sample > budget:
        fits //= 2
    if fits < batch:
        why += f"; {fits} to fit {_gb(budget)} ({MEMORY_SHARE:.0%} of {_gb(fp.memory)} {fp.memory_source})"
        notes.append(f"memory: batch {fits} instead of {batch} to fit {_gb(fp.memory)} {fp.memory_source}")
        batch = fits
    if batch * per_sample > budget and "data.crop_size" not in user:
        shrunk = side
        while shrunk > MIN_CROP and 2 * TRAIN_BYTES_PER_PIXEL * shrunk * shrunk > budget:
            shrunk -= 32
        notes.append(
            f"memory: {_gb(fp.memory)} {fp.memory_source} fits batch 2 of {shrunk} px crops, not {side} px: "
            f"crops shrunk to {shrunk} px"
        )
        values["data.crop_size"], side = shrunk, shrunk
        reasons["data.crop_size"] += f"; shrunk to {shrunk} px to fit the memory"
    batch = decide("data.batch_size", batch, why)

    # loader workers: the cores a process has, less the one that trains (at least one; four feed any GPU)
    per_process = max(fp.cores // max(fp.gpus, 1), 1)
    workers = min(max(per_process - 1, 1), 4) if fp.device == "cuda" else min(max(per_process // 2, 1), 4)
    decide(
        "data.num_workers",
        workers,
        f"{fp.cores} core(s) for {max(fp.gpus, 1)} process(es) on the {fp.device}: "
        f"{workers} loader worker(s) leave the rest to the model",
    )

    # imbalance: weights, loss and sampling
    shares = [c.share for c in present]
    ratio = max(shares) / min(shares)
    rarest = min(present, key=lambda c: c.share)
    small = [c for c in present if c.size_median is not None and c.size_median < SMALL_OBJECTS]
    balanced = ratio < BALANCED_RATIO
    imbalance = f"the largest class has {ratio:.0f}x the pixels of the rarest ({rarest.name}, {rarest.share:.2%})"
    if balanced:
        decide("train.class_weights", None, f"classes balanced ({imbalance}, under {BALANCED_RATIO:.0f}x)")
        decide("train.loss", "ce", f"classes balanced ({imbalance}): cross-entropy")
        decide("data.sampling", "uniform", "classes balanced: every crop equally often")
    elif fp.scenes == 1:
        decide(
            "train.class_weights",
            "balanced",
            f"{imbalance}; one training scene: its class mix is one place's, "
            "not a region's, so every class counts alike (1/frequency weights, at most 30x apart)",
        )
    else:
        decide(
            "train.class_weights",
            "auto",
            f"{imbalance}; {fp.scenes} training scenes: 1/sqrt(frequency) weights, capped at 10",
        )
    if not balanced:
        if rarest.share < NEARLY_ABSENT:
            loss = (
                "focal+dice",
                f"{rarest.name} is nearly absent ({rarest.share:.2%} of the pixels): focal loss "
                "stops the easy pixels of the large classes from drowning it, Dice weighs every class alike",
            )
        elif small:
            names = ", ".join(f"{c.name} ({c.size_median:.0f} px)" for c in small)
            loss = (
                "ce+lovasz",
                f"small objects ({names} median diameter): Lovász-softmax optimises each "
                "class's IoU, which small objects barely move under cross-entropy alone",
            )
        else:
            loss = ("ce+dice", f"{imbalance}: Dice weighs every class's overlap alike")
        decide("train.loss", *loss)
        decide("data.sampling", "balanced", f"{imbalance}: crops holding rare classes drawn more often")

    # augmentation: overhead imagery has no up; one pixel size keeps objects' sizes
    by_plan: dict[str, dict[str, Any]] = {}
    if fp.gsd:
        spread = max(fp.gsd) / min(fp.gsd)
        low, high = min(0.8, 1 / spread), max(1.25, spread)
        decide("data.flips", "aerial", "georeferenced overhead imagery has no up: flips and 90° rotations")
        how = "one pixel size" if spread < 1.05 else f"pixel sizes {min(fp.gsd):.3g}-{max(fp.gsd):.3g} m"
        decide(
            "data.scale_range",
            [round(low, 3), round(high, 3)],
            f"{how}: objects keep their size, rescaled {low:.2f}-{high:.2f}",
        )
        if "data.scale_range" not in user and low > WIDE_SCALE[0] and high < WIDE_SCALE[1]:
            by_plan["data.scale_range"] = {
                "min_passes": WIDE_PASSES,
                "value": WIDE_SCALE,
                "why": "more views of crops seen this often",
            }
    else:
        decide("data.flips", "horizontal", "pixel-only data (no CRS): may have an up, horizontal flips only")
        decide("data.scale_range", [0.5, 2.0], "pixel-only data: unknown pixel size, rescaled 0.5-2")
    jitter = f"{fp.bands} band(s) of {fp.dtype}: brightness and contrast jitter per band on normalised values"
    decide("data.photometric", "bands", jitter)
    decide("train.ema", 0.0, "the last iterate's weights, unless the schedule gives many passes")
    if "train.ema" not in user:
        by_plan["train.ema"] = {
            "min_passes": WIDE_PASSES,
            "value": EMA_DECAY,
            "why": "a moving average of the weights is steadier than a last iterate that "
            "over-fits crops seen this often",
        }
    usual = {"adamw": 1e-3, "sgd": 1e-2}.get(optimizer, 1e-3)
    decide("optimizer.lr", usual, f"{optimizer}'s usual rate from random weights (no range test yet)")
    if optimizer == "adamw":
        decay = 0.05 if fp.crops < FEW_CROPS else 0.01
        why = (
            f"{fp.crops} training crops, fewer than {FEW_CROPS}: AdamW's stronger decay against memorising them"
            if fp.crops < FEW_CROPS
            else "AdamW's usual decoupled weight decay"
        )
    else:
        decay, why = 5e-4, "SGD's usual weight decay (the DeepLab papers')"
    decide("optimizer.weight_decay", decay, why)
    return Derived(
        values=values, reasons=reasons, kept={k: current.get(k) for k in sorted(user)}, notes=notes, by_plan=by_plan
    )


def undecided(record: dict[str, Any] | None) -> bool:
    """Whether ``record`` holds values that wait for the schedule (:func:`adapt_to_plan` has not run on it)."""
    return record is not None and any("passes" not in rule for rule in record.get("by_plan", {}).values())


def adapt_to_plan(record: dict[str, Any] | None, iterations: int, samples_per_iteration: int) -> dict[str, Any]:
    """Decide the values that wait for the schedule (:attr:`Derived.by_plan`), once; the values that change.

    ``iterations`` (planned, in all) times ``samples_per_iteration`` (batch x processes x accumulation) over the
    training crops is the number of passes over them. Updates ``record``'s values, reasons and ``by_plan`` (a
    resumed run finds them decided and changes nothing).
    """
    if record is None or not undecided(record):
        return {}
    crops = max(int(record["fingerprint"]["crops"]), 1)
    passes = iterations * samples_per_iteration / crops
    changed: dict[str, Any] = {}
    for key, rule in record.get("by_plan", {}).items():
        rule["passes"] = round(passes, 1)
        seen = f"the schedule gives {passes:.0f} passes over the {crops} training crops"
        if passes >= rule["min_passes"]:
            changed[key] = record["values"][key] = rule["value"]
            record["reasons"][key] += f"; {rule['value']}: {seen} (at least {rule['min_passes']}): {rule['why']}"
        else:
            record["reasons"][key] += f"; kept: {seen} (under the {rule['min_passes']} that widen it)"
        log.info("auto %s = %s: %s", key, record["values"][key], record["reasons"][key])
    return changed


def user_keys(cfg: ExperimentConfig) -> set[str]:
    """The keys of :data:`DERIVED` the config sets (in the file or on the command line)."""
    out = set()
    for key in DERIVED:
        section, name = key.split(".")
        if name in getattr(cfg, section).model_fields_set:
            out.add(key)
    return out


def current_values(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config's values of :data:`DERIVED`."""
    return {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in DERIVED}


def apply(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with ``values`` (dotted keys) set, validated again; the user's set fields stay marked as set."""
    from rs_deeplab.config.schema import validate_config

    data = cfg.model_dump(mode="python")
    for key, value in values.items():
        section, name = key.split(".")
        data[section][name] = value
    updated = validate_config(data, ExperimentConfig, source="auto")
    _keep_fields_set(cfg, updated)  # what the user set stays the user's alone (a budget's cap, resume, the logs)
    return updated


def _keep_fields_set(source: Any, target: Any) -> None:
    """Give ``target`` (and its sub-models) the set-field markers of ``source``."""
    from pydantic import BaseModel

    object.__setattr__(target, "__pydantic_fields_set__", set(source.model_fields_set))
    for name in type(source).model_fields:
        mine, theirs = getattr(source, name), getattr(target, name)
        if isinstance(mine, BaseModel) and isinstance(theirs, BaseModel):
            _keep_fields_set(mine, theirs)


def describe(derived: Derived) -> list[str]:
    """Log lines: one per derived value with its reason, the user's values, the notes."""
    lines = [f"auto {key} = {derived.values[key]}: {derived.reasons[key]}" for key in derived.values]
    lines += [f"auto {key} = {value}: set in the config" for key, value in derived.kept.items()]
    lines += [f"auto: {note}" for note in derived.notes]
    return lines


def configure(
    cfg: ExperimentConfig, env: Any, train: Any, val: Any, stats: Any, state: dict[str, Any] | None, device: Any
) -> tuple[ExperimentConfig, dict[str, Any] | None]:
    """``cfg`` with the derived settings (``auto.enabled``), and the record of them; ``cfg`` and None when off.

    A resumed run takes the settings its checkpoint recorded; a fresh one fingerprints the data on rank 0, and
    every rank applies what rank 0 derived.
    """
    from rs_deeplab.cli.durations import parse_size
    from rs_deeplab.training.distributed import broadcast_from_main

    if not cfg.auto.enabled:
        return cfg, None
    record: dict[str, Any] | None = (state or {}).get("auto")
    if record is None:
        if env.is_main:
            memory = parse_size(cfg.auto.memory) if cfg.auto.memory else None
            try:  # a problem becomes every rank's one line, not a rank left waiting
                fp = fingerprint(
                    train,
                    val,
                    stats,
                    device=device.type,
                    memory=memory,
                    gpus=env.world_size if device.type == "cuda" else 0,
                )
                derived = derive(fp, user_keys(cfg), current_values(cfg), optimizer=cfg.optimizer.name)
                record = {"fingerprint": fp.as_dict(), **derived.as_dict()}
            except InputError as exc:
                record = {"error": str(exc)}
        record = broadcast_from_main(record)
        assert record is not None  # rank 0's
        if "error" in record:
            raise InputError(record["error"])
        for line in describe(Derived(record["values"], record["reasons"], record["kept"], record["notes"])):
            log.info("%s", line)
    else:
        log.info(
            "auto: resuming with the settings derived at the start: %s",
            ", ".join(f"{k} = {v}" for k, v in record["values"].items()),
        )
    return apply(cfg, record["values"]), record


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """``auto.json``: the fingerprint, the derived values and their reasons, the user's values, the notes."""
    import json

    from rs_deeplab.geo.raster import atomic_output

    with atomic_output(run_dir / "auto.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")


def pick_rate(
    cfg: ExperimentConfig,
    env: Any,
    record: dict[str, Any] | None,
    wrapped_model: Any,
    loader: Any,
    ctx: Any,
    budget: float | None,
) -> float | None:
    """Run the learning-rate range test when auto derives ``optimizer.lr`` and it pays; the rate or None.

    Updates ``record`` (value, reason, the test's curve) either way. Fresh single-process runs only: the test's
    early stops are one process's decisions.
    """
    from rs_deeplab.training import lr_range

    if record is None or "optimizer.lr" not in record["values"] or "range_test" in record:
        return None
    values, reasons = record["values"], record["reasons"]
    if not cfg.auto.lr_test:
        why = "auto.lr_test is off"
    elif env.world_size > 1:
        why = "several processes (the test runs on one: run it once alone, or set optimizer.lr)"
    elif (budget is None or "iterations" in cfg.schedule.model_fields_set) and not lr_range.pays(
        budget=None, iterations=cfg.schedule.iterations
    ):
        why = f"{lr_range.STEPS} test steps are more than {lr_range.ITERATION_SHARE:.0%} of the iterations"
    else:
        import itertools

        batches = iter(loader)
        steps = iter(lambda: list(itertools.islice(batches, ctx.grad_accum)), [])
        bounds = lr_range.BOUNDS.get(cfg.optimizer.name, lr_range.BOUNDS["adamw"])
        result = lr_range.range_test(wrapped_model, steps, ctx, budget=budget, bounds=bounds)
        del batches
        record["range_test"] = {
            "lrs": result.lrs,
            "losses": result.losses,
            "seconds": round(result.seconds, 2),
            "reason": result.reason,
        }
        if result.lr is not None:
            values["optimizer.lr"], reasons["optimizer.lr"] = result.lr, f"{result.reason} ({result.seconds:.0f} s)"
            log.info("auto optimizer.lr = %.3g: %s", result.lr, reasons["optimizer.lr"])
            return result.lr
        why = result.reason
    record["range_test"] = record.get("range_test") or {"reason": why}
    reasons["optimizer.lr"] += f"; range test not used: {why}"
    log.info("auto optimizer.lr = %.3g: %s", values["optimizer.lr"], reasons["optimizer.lr"])
    return None
