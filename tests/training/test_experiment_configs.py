"""Every shipped config trains an iteration, evaluates and checkpoints, on tiny synthetic data in its dataset's layout.

The backbones start from random weights here (``model.weights=null``): loading torchvision's ImageNet files is
tested in ``test_imagenet_weights.py``, and with a recipe as shipped in ``test_recipes.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rs_deeplab.config.schema import ExperimentConfig, load_config
from rs_deeplab.sample import write_cityscapes, write_isaid, write_loveda, write_potsdam, write_vaihingen, write_voc
from rs_deeplab.tiling.presets import tile_preset
from rs_deeplab.training.experiment import train_experiment
from tests.training.test_experiment_own_data import own_tiles

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.stem != "demo")


def _tiled(preset: str, write: Callable[[Path], object], **options: object) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        write(folder / "raw")
        tile_preset(preset, folder / "raw", folder / "tiles", size=128, stride=128, quiet=True, **options)
        return folder / "tiles"

    return make


def _potsdam(root: Path) -> object:
    return write_potsdam(root, ids=((2, 10), (2, 13)), size=256, gsd=0.1)


def layout(cfg: ExperimentConfig, path: Path) -> str:
    """The layout a config reads: its scheme (``own`` without one), and for Potsdam the bands its tile command names."""
    scheme = cfg.data.scheme or "own"
    return "potsdam_rgbir" if scheme == "potsdam" and "rgbir" in path.stem else scheme


LAYOUTS: dict[str, Callable[[Path], Path]] = {
    "potsdam": _tiled("potsdam", _potsdam, bands="rgb", eroded=True),  # the mmseg recipes' RGB tiles
    "potsdam_rgbir": _tiled("potsdam", _potsdam),
    "vaihingen": _tiled("vaihingen", lambda r: write_vaihingen(r, areas=(1, 2), size=256)),
    "loveda": _tiled("loveda", lambda r: write_loveda(r, per_folder=1, size=256)),
    "isaid": _tiled("isaid", lambda r: write_isaid(r, per_split=1, size=(256, 256))),
    "voc": lambda folder: write_voc(
        folder, n_train=4, n_val=1
    ),  # one validation image: a ResNet-101 evaluates it whole
    "cityscapes": lambda folder: write_cityscapes(folder, per_split=2, size=(128, 256)),
    "own": own_tiles,  # configs/own_data.yaml: 5-band uint16 tiles whose class names come from the index
}


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: make(tmp_path_factory.mktemp(name)) for name, make in LAYOUTS.items()}


def test_every_config_has_a_layout() -> None:
    layouts = {layout(load_config(p), p) for p in CONFIGS}
    assert layouts == set(LAYOUTS) and len(CONFIGS) >= 12


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_evaluates_and_checkpoints(path: Path, data_roots: dict[str, Path], tmp_path: Path) -> None:
    recipe: ExperimentConfig = load_config(path)
    crop = [64, 96] if isinstance(recipe.data.crop_size, tuple) else 64
    cfg: ExperimentConfig = load_config(
        path,
        [
            f"data.root={data_roots[layout(recipe, path)]}",
            f"work_dir={tmp_path / 'run'}",
            f"data.crop_size={crop}",
            "data.batch_size=2",
            "data.num_workers=0",
            "schedule.iterations=1",
            "train.eval_every=1",
            "train.checkpoint_every=1",
            "model.weights=null",
        ],
    )
    result = train_experiment(cfg)
    assert result.iterations == 1 and result.last.is_file() and result.best is not None and result.best.is_file()
    assert 0.0 <= result.best_miou <= 1.0
