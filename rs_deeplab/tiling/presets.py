"""Dataset presets: find scenes, labels and official splits in a dataset folder by their official file names."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rs_deeplab.cli.errors import InputError
from rs_deeplab.tiling.archives import Entry, list_entries
from rs_deeplab.tiling.scenes import SceneSpec
from rs_deeplab.tiling.tiler import TileSummary, tile_scenes

log = logging.getLogger("rs_deeplab.tiling.tiler")

POTSDAM_VAL = frozenset(
    {
        (2, 13),
        (2, 14),
        (3, 13),
        (3, 14),
        (4, 13),
        (4, 14),
        (4, 15),
        (5, 13),
        (5, 14),
        (5, 15),
        (6, 13),
        (6, 14),
        (6, 15),
        (7, 13),
    }
)
"""Potsdam tiles of the official validation (test) split; the other 24 are training tiles."""
VAIHINGEN_TRAIN = frozenset({1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37})
VAIHINGEN_VAL = frozenset({2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38})

Bands = Literal["rgbir", "rgb", "irrg"]


@dataclass(frozen=True)
class Preset:
    """A dataset's crop size, stride and class scheme, and how to find its scenes.

    Attributes:
        name: Dataset key. size, stride: Default crop size and stride. scheme: Class scheme name.
        find: ``find(root, bands, eroded) -> scenes`` in the official layout.
    """

    name: str
    size: int
    stride: int
    scheme: str
    find: Callable[[Path, Bands, bool], list[SceneSpec]]


def _no_files(root: Path, dataset: str, pattern: str) -> InputError:
    return InputError(
        f"{root}: no {dataset} files found (looked for {pattern} in all subfolders); "
        f"pass the folder holding the {dataset} dataset in its official layout"
    )


POTSDAM_ARCHIVES = {"rgb": "2_Ortho_RGB.zip", "irrg": "3_Ortho_IRRG.zip", "rgbir": "4_Ortho_RGBIR.zip"}
"""The official Potsdam image archive of each ``--bands`` choice."""


def _index_entries(entries: list[Entry], pattern: str) -> dict[tuple[int, ...], str]:
    """Map the integer groups of ``pattern`` (a full-name regex) to entry paths, first match kept."""
    found: dict[tuple[int, ...], str] = {}
    for entry in entries:
        m = re.fullmatch(pattern, entry.name)
        if m:
            found.setdefault(tuple(int(g) for g in m.groups()), entry.path)
    return found


def find_potsdam(root: Path, bands: Bands = "rgbir", eroded: bool = False) -> list[SceneSpec]:
    """ISPRS Potsdam, extracted or as the official zip archives (read in place).

    Images ``top_potsdam_{i}_{j}_{RGB,IRRG,RGBIR}.tif`` (``2_Ortho_RGB.zip`` ...), labels ``_label.tif``
    (``5_Labels_all.zip``) or ``_label_noBoundary.tif`` (``5_Labels_all_noBoundary.zip``). The official split:
    14 validation tiles (``POTSDAM_VAL``), the rest training; tiles without labels are ``test``.

    Raises:
        InputError: No images of ``bands``, no labels at all (names the archive to add), or an unreadable archive.
    """
    entries = list_entries(root, (".tif",))
    suffix = bands.upper()
    images = _index_entries(entries, rf"top_potsdam_(\d+)_(\d+)_{suffix}\.tif")
    if not images:
        raise _no_files(root, "Potsdam", f"top_potsdam_*_{suffix}.tif, extracted or in {POTSDAM_ARCHIVES[bands]}")
    label_name = r"label_noBoundary" if eroded else r"label"
    labels = _index_entries(entries, rf"top_potsdam_(\d+)_(\d+)_{label_name}\.tif")
    if not labels:
        archive = "5_Labels_all_noBoundary.zip" if eroded else "5_Labels_all.zip"
        raise InputError(f"{root}: Potsdam images but no labels in any subfolder or zip; add {archive} there")
    scenes = []
    for ij, image in sorted(images.items()):
        label = labels.get(ij)
        split = "test" if label is None else "val" if ij in POTSDAM_VAL else "train"
        scenes.append(SceneSpec(image, label, split))
    _warn_unlabelled(scenes, "Potsdam")
    return scenes


VAIHINGEN_GT = "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip"
VAIHINGEN_GT_ERODED = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip"


def _vaihingen_rank(entry: Entry) -> int:
    """Preference of a full-label candidate: COMPLETE ground truth, then loose files, then the participants' 16."""
    if entry.in_folder("ground_truth"):
        return 0
    return 2 if entry.in_folder("gts_for_participants") else 1


def _vaihingen_labels(entries: list[Entry], eroded: bool) -> dict[int, str]:
    """Area → label path: ``_noBoundary`` files when ``eroded``, else same-named files outside ``top/``."""
    pattern = r"top_mosaic_09cm_area(\d+)_noBoundary\.tif" if eroded else r"top_mosaic_09cm_area(\d+)\.tif"
    ranked: dict[int, tuple[int, str]] = {}
    for entry in entries:
        m = re.fullmatch(pattern, entry.name)
        top = bool(entry.folders) and entry.folders[-1].lower() == "top"
        if not m or (not eroded and (top or entry.in_folder("eroded"))):
            continue
        rank = 0 if eroded else _vaihingen_rank(entry)
        if int(m.group(1)) not in ranked or rank < ranked[int(m.group(1))][0]:
            ranked[int(m.group(1))] = (rank, entry.path)
    return {area: path for area, (_, path) in ranked.items()}


def find_vaihingen(root: Path, bands: Bands = "rgbir", eroded: bool = False) -> list[SceneSpec]:
    """ISPRS Vaihingen (IRRG), extracted or as the official zip archives (read in place).

    Images ``top/top_mosaic_09cm_area{N}.tif`` (``ISPRS_semantic_labeling_Vaihingen.zip``); labels of the same
    name from the ground-truth COMPLETE archive or its extracted files (in a ``*ground_truth*`` folder or loose
    outside ``top/``), else ``gts_for_participants/``; eroded ones ``..._noBoundary.tif``.

    Raises:
        InputError: No images, no labels at all (names the ground-truth archive to add), or an unreadable archive.
    """
    entries = list_entries(root, (".tif",))
    images: dict[int, str] = {}
    for entry in entries:
        m = re.fullmatch(r"top_mosaic_09cm_area(\d+)\.tif", entry.name)
        if m and entry.folders and entry.folders[-1].lower() == "top":
            images.setdefault(int(m.group(1)), entry.path)
    if not images:
        raise _no_files(
            root, "Vaihingen", "top/top_mosaic_09cm_area*.tif, extracted or in ISPRS_semantic_labeling_Vaihingen.zip"
        )
    labels = _vaihingen_labels(entries, eroded)
    if not labels:
        archive = VAIHINGEN_GT_ERODED if eroded else VAIHINGEN_GT
        raise InputError(
            f"{root}: Vaihingen images but no labels in any subfolder or zip; add {archive} (or its files) there"
        )
    scenes = []
    for area, image in sorted(images.items()):
        label = labels.get(area)
        split = "train" if area in VAIHINGEN_TRAIN else "val" if area in VAIHINGEN_VAL else "test"
        scenes.append(SceneSpec(image, label, "test" if label is None else split))
    _warn_unlabelled(scenes, "Vaihingen")
    return scenes


def find_loveda(root: Path, bands: Bands = "rgbir", eroded: bool = False) -> list[SceneSpec]:
    """LoveDA, extracted or as the official ``Train.zip``/``Val.zip``/``Test.zip`` (read in place).

    Images ``{Train,Val,Test}/{Urban,Rural}/images_png/{id}.png`` with masks in ``masks_png/{id}.png``; the split
    and domain come from the folder names; keys are ``{split}_{domain}_{id}``.
    """
    images: dict[str, tuple[str, str]] = {}
    masks: dict[str, str] = {}
    for entry in list_entries(root, (".png",)):
        if len(entry.folders) < 3 or entry.folders[-1] not in ("images_png", "masks_png"):
            continue
        split, domain = entry.folders[-3], entry.folders[-2]
        key = f"{split}_{domain}_{Path(entry.name).stem}".lower()
        if entry.folders[-1] == "masks_png":
            masks.setdefault(key, entry.path)
        else:
            images.setdefault(key, (entry.path, split.lower()))
    if not images:
        raise _no_files(
            root, "LoveDA", "{Train,Val}/{Urban,Rural}/images_png/*.png, extracted or in Train.zip, Val.zip"
        )
    if not masks:
        raise InputError(f"{root}: LoveDA images but no masks_png in any subfolder or zip; add Train.zip and Val.zip")
    return [SceneSpec(image, masks.get(key), split, key) for key, (image, split) in sorted(images.items())]


def _isaid_split(entry: Entry) -> str | None:
    """The innermost ``train``/``val``/``test`` folder above ``entry``, or None."""
    return next((f.lower() for f in reversed(entry.folders) if f.lower() in ("train", "val", "test")), None)


def find_isaid(root: Path, bands: Bands = "rgbir", eroded: bool = False) -> list[SceneSpec]:
    """iSAID, extracted or as downloaded (``{split}/images/part*.zip``, ``{split}/Semantic_masks/images.zip``).

    Images ``{split}/images/P{NNNN}.png`` with masks ``{split}/Semantic_masks/images/P{NNNN}_instance_color_RGB.png``;
    the split comes from the folder name.
    """
    images: dict[tuple[str, str], str] = {}
    masks: dict[tuple[str, str], str] = {}
    for entry in list_entries(root, (".png",)):
        split = _isaid_split(entry)
        m = re.fullmatch(r"(P\d+)(_instance_color_RGB)?\.png", entry.name)
        if split is None or m is None:
            continue
        if m.group(2) and entry.in_folder("Semantic_masks"):
            masks.setdefault((split, m.group(1)), entry.path)
        elif not m.group(2) and not entry.in_folder("Semantic_masks"):
            images.setdefault((split, m.group(1)), entry.path)
    if not images:
        raise _no_files(root, "iSAID", "{train,val}/images/P*.png, extracted or in {train,val}/images/part*.zip")
    if not masks:
        raise InputError(f"{root}: iSAID images but no masks; add {{train,val}}/Semantic_masks/images.zip there")
    return [SceneSpec(image, masks.get(sid), sid[0]) for sid, image in sorted(images.items())]


def _warn_unlabelled(scenes: list[SceneSpec], dataset: str) -> None:
    missing = [Path(s.image).name for s in scenes if s.label is None]
    if missing:
        log.warning("%s: %d scenes have no labels and go to split 'test': %s", dataset, len(missing), missing[:3])


PRESETS: dict[str, Preset] = {
    "potsdam": Preset("potsdam", 512, 256, "potsdam", find_potsdam),
    "vaihingen": Preset("vaihingen", 512, 256, "vaihingen", find_vaihingen),
    "loveda": Preset("loveda", 512, 256, "loveda", find_loveda),
    "isaid": Preset("isaid", 896, 512, "isaid", find_isaid),
}
"""Every dataset preset of ``pipelines/tile.py --preset``."""


def get_preset(name: str) -> Preset:
    """The preset called ``name`` or a one-line error listing them."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def find_scenes(name: str, root: str | Path, *, bands: Bands = "rgbir", eroded: bool = False) -> list[SceneSpec]:
    """Scenes, labels and splits of dataset ``name`` under ``root``.

    Raises:
        InputError: Unknown preset, ``root`` is not a folder, an option the dataset does not have, or no files.
    """
    preset = get_preset(name)
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{base}: not a folder; --preset {name} needs the dataset's root folder")
    if bands != "rgbir" and name != "potsdam":
        raise InputError(f"--bands applies to --preset potsdam only ({name} images have fixed bands)")
    if bands not in POTSDAM_ARCHIVES:
        raise InputError(f"--bands must be rgbir, rgb or irrg, got {bands!r}")
    if eroded and name not in ("potsdam", "vaihingen"):
        raise InputError(f"--eroded applies to the ISPRS presets (potsdam, vaihingen), not {name}")
    return preset.find(base, bands, eroded)


def _check_out_beside(root: Path, out: Path) -> None:
    """Refuse crops written into the dataset folder (where the next run would search them as dataset files).

    Raises:
        InputError: ``out`` is ``root`` or inside it.
    """
    if root.is_dir() and out.resolve().is_relative_to(root.resolve()):
        raise InputError(f"--out {out} is inside the dataset folder {root}; choose an output folder outside it")


def tile_preset(
    name: str,
    root: str | Path,
    out: str | Path = "tiles",
    *,
    bands: Bands = "rgbir",
    eroded: bool = False,
    size: int | None = None,
    stride: int | None = None,
    **options: Any,
) -> TileSummary:
    """Tile a whole dataset folder with its preset's size, stride, class scheme and official splits.

    Args:
        name: Preset (``potsdam``, ``vaihingen``, ``loveda``, ``isaid``).
        root: The dataset's root folder, in its official layout.
        out: Output folder.
        bands: Potsdam only: ``rgbir`` (4-band), ``rgb`` or ``irrg`` images.
        eroded: ISPRS only: the eroded ``noBoundary`` labels (boundaries ignored) instead of the full ones.
        size: Crop size; the preset's when None.
        stride: Crop stride; the preset's when None (and ``size // 2`` when only ``size`` is given).
        **options: Passed on to :func:`rs_deeplab.tiling.tiler.tile_scenes` (``min_valid``, ``workers``, ...).
    """
    preset = get_preset(name)
    _check_out_beside(Path(root), Path(out))
    scenes = find_scenes(name, root, bands=bands, eroded=eroded)
    if size is None:
        size = preset.size
        stride = preset.stride if stride is None else stride
    # official labels: an image without any labelled pixel (LoveDA no-data) is normal there, not a mistake
    return tile_scenes(scenes, out, size=size, stride=stride, scheme=preset.scheme, check_labels=False, **options)
