"""Training on one's own tiles: class names from the index, auto class weights, balanced sampling, collapse warning."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine

from rs_deeplab.cli.errors import ConfigError, InputError
from rs_deeplab.config.modelcard import read_checkpoint
from rs_deeplab.config.schema import ExperimentConfig, apply_overrides, load_config, validate_config
from rs_deeplab.evaluation.metrics import collapse_warning
from rs_deeplab.geo.gsd import rasters_gsd
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.infer import InferOptions, _tta
from rs_deeplab.labels.classes import ISPRS_CLASSES, class_colours, colour_table, distinct_colours
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
from rs_deeplab.training import autoconfig
from rs_deeplab.training.checkpoint import load_checkpoint
from rs_deeplab.training.datasets.sampling import IterationBatchSampler, balanced_weights
from rs_deeplab.training.datasets.tiles import TileIndexSource, auto_class_weights
from rs_deeplab.training.experiment import class_weights, train_experiment, warn_if_collapsed
from tests.trainkit import REPO, blob_scene, write_config


def own_tiles(folder: Path, dtype: str = "uint16", bands: int = 5) -> Path:
    """Two scenes of ``bands`` bands of ``dtype`` whose labels use ids 1..3 only (class 0 never occurs)."""
    specs = []
    transform = Affine(0.5, 0, 2_500_000, 0, -0.5, 7_500_000)
    for split, seed in (("train", 3), ("val", 4)):
        image, classes = blob_scene(seed, 96)
        labels = (classes % 3 + 1).astype(np.uint8)
        labels[:4] = 255
        pixels = np.concatenate([image, image[:1]])[:bands].astype(dtype) * 7
        img = write_geotiff(folder / f"{split}.tif", pixels, crs="EPSG:2953", transform=transform)
        lbl = write_geotiff(folder / f"{split}_label.tif", labels[None], crs="EPSG:2953", transform=transform)
        specs.append(SceneSpec(img, lbl, split))
    tile_scenes(specs, folder / "tiles", size=48, stride=48, workers=1, quiet=True)
    return folder / "tiles"


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return own_tiles(tmp_path_factory.mktemp("own"))


def test_class_names_and_counts_come_from_the_index(tiles: Path) -> None:
    source = TileIndexSource(tiles, "train")
    assert source.class_names == ("class_0", "1", "2", "3")  # id 0 absent from the labels keeps its place
    assert source.class_counts.shape == (len(source), 4)
    assert source.class_counts[:, 0].sum() == 0 and (source.class_counts[:, 1:].sum(0) > 0).all()


def test_auto_class_weights_are_inverse_sqrt_frequency() -> None:
    weights = auto_class_weights(np.array([900, 100, 0]))
    assert weights == pytest.approx([0.5, 1.5, 0.0])  # 1/sqrt(0.9), 1/sqrt(0.1), normalised to mean 1
    assert auto_class_weights(np.array([10**8] * 10 + [1]))[10] == 10.0  # capped
    balanced = auto_class_weights(np.array([900, 100, 0]), power=1.0)  # train.class_weights: balanced
    assert balanced == pytest.approx([0.2, 1.8, 0.0])  # 1/0.9 and 1/0.1, normalised to mean 1
    assert balanced[0] * 900 == pytest.approx(balanced[1] * 100)  # each class weighs alike in the loss
    spread = auto_class_weights(np.array([5000, 400, 10]), power=1.0, spread=10.0)  # 500x apart
    assert spread[2] / spread[0] == pytest.approx(10.0) and spread[1] / spread[0] == pytest.approx(10.0)
    assert spread.mean() == pytest.approx(1.0)  # the large class keeps a tenth of the rare ones' weight, not 1/500
    with pytest.raises(InputError):
        auto_class_weights(np.zeros(3))


def test_auto_class_weights_favour_the_rare_class(tiles: Path) -> None:
    source = TileIndexSource(tiles, "train")
    cfg = validate_config({"train": {"class_weights": "auto"}}, ExperimentConfig)
    weights = class_weights(cfg, source, torch.device("cpu"))
    assert weights is not None
    counts = source.class_counts.sum(0)
    rare, common = int(np.argmin(np.where(counts > 0, counts, counts.max() + 1))), int(np.argmax(counts))
    assert weights[rare] > weights[common] and weights[0] == 0
    # the weighted loss of predicting the common class everywhere grows: the rare class counts more
    target = torch.tensor([[[common] * 9 + [rare]]])
    logits = torch.zeros(1, 4, 1, 10)
    logits[:, common] = 3.0
    plain = torch.nn.functional.cross_entropy(logits, target)
    weighted = torch.nn.functional.cross_entropy(logits, target, weight=weights)
    assert weighted > plain
    balanced = class_weights(
        validate_config({"train": {"class_weights": "balanced"}}, ExperimentConfig), source, torch.device("cpu")
    )
    assert balanced is not None and balanced[rare] / balanced[common] > weights[rare] / weights[common]
    present = counts > 0
    share = (balanced.numpy() * counts)[present]  # each class's weighted share of the loss: alike (up to 30x apart)
    kept = balanced.numpy()[present]
    assert share.max() / share.min() == pytest.approx(1.0) or kept.max() / kept.min() == pytest.approx(30.0)
    explicit = validate_config({"train": {"class_weights": [1, 2]}}, ExperimentConfig)
    with pytest.raises(InputError, match="2 values but the data has 4 classes"):
        class_weights(explicit, source, torch.device("cpu"))


def test_class_weights_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train.class_weights: .*'auto', 'balanced', a list"):
        validate_config(apply_overrides({}, ["train.class_weights=median"]), ExperimentConfig)
    with pytest.raises(ConfigError, match=r"data.sampling: .*'uniform' or 'balanced'"):
        validate_config(apply_overrides({}, ["data.sampling=rare"]), ExperimentConfig)


def drawn(sampler: IterationBatchSampler) -> list[int]:
    return [i for batch in sampler for i, _ in batch]


def test_balanced_sampling_moves_class_frequency_toward_the_rare_class() -> None:
    rng = np.random.default_rng(0)
    counts = np.zeros((50, 2), np.int64)
    counts[:, 0] = rng.integers(900, 1000, 50)
    counts[:5, 1] = 200  # 5 of 50 crops hold the rare class
    options = {"batch_size": 4, "iterations": 200, "seed": 3}
    uniform = counts[drawn(IterationBatchSampler(50, **options))].sum(0)
    balanced = counts[drawn(IterationBatchSampler(50, weights=balanced_weights(counts), **options))].sum(0)
    assert balanced[1] / balanced.sum() > 3 * uniform[1] / uniform.sum()


def test_balanced_sampling_is_deterministic_resumable_and_rank_split() -> None:
    weights = balanced_weights(np.array([[100, 0], [90, 10], [50, 50], [100, 0], [0, 0]]))
    assert weights[4] == 0 and weights[2] > weights[1] > weights[0]
    full = drawn(IterationBatchSampler(5, batch_size=4, iterations=6, seed=1, weights=weights))
    assert full == drawn(IterationBatchSampler(5, batch_size=4, iterations=6, seed=1, weights=weights))
    assert full != drawn(IterationBatchSampler(5, batch_size=4, iterations=6, seed=2, weights=weights))
    assert 4 not in full
    resumed = drawn(IterationBatchSampler(5, batch_size=4, iterations=6, seed=1, weights=weights, start_iteration=2))
    assert resumed == full[8:]
    ranks = [
        list(IterationBatchSampler(5, batch_size=2, iterations=6, seed=1, weights=weights, rank=r, world_size=2))
        for r in range(2)
    ]
    together = [i for a, b in zip(*ranks, strict=True) for i, _ in a + b]
    assert together == full


def test_collapse_warning() -> None:
    names = ["background", "water", "road"]
    collapsed = np.array([[50, 0, 0], [10, 0, 0], [5, 0, 0]])
    assert "predicts 'background' everywhere" in (collapse_warning(collapsed, names) or "")
    missed = np.array([[50, 3, 0], [10, 8, 0], [5, 0, 0]])
    assert "IoU 0" in (collapse_warning(missed, names) or "") and "road" in (collapse_warning(missed, names) or "")
    unlabelled = np.array([[50, 3, 0], [10, 8, 0], [0, 0, 0]])  # road has no validation labels: nothing to say
    assert collapse_warning(unlabelled, names) is None


def test_collapse_is_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rs_deeplab.train"):
        warn_if_collapsed(40, np.array([[50, 0], [10, 0]]), ["a", "b"])
        warn_if_collapsed(80, np.array([[50, 1], [10, 9]]), ["a", "b"])
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line and line.startswith("iteration 40:") and "'a' everywhere" in line


def test_distinct_colours_are_deterministic_and_distinct() -> None:
    colours = distinct_colours(12)
    assert colours == distinct_colours(12) and len(set(colours)) == 12
    assert class_colours(ISPRS_CLASSES, "potsdam")[1] == (0, 0, 255)
    assert class_colours(["a", "b"], "potsdam") == distinct_colours(2)


def test_own_template_loads() -> None:
    cfg = load_config(REPO / "configs" / "own_data.yaml")
    assert cfg.data.scheme == "own" and cfg.auto.enabled and cfg.model.weights is None
    assert cfg.schedule.budget == "10m" and "iterations" not in cfg.schedule.model_fields_set
    derived = {k for k in autoconfig.DERIVED if k.split(".")[1] in getattr(cfg, k.split(".")[0]).model_fields_set}
    assert not derived  # the recipe leaves every derived key to the fingerprint


@pytest.mark.slow
def test_own_data_trains_end_to_end(tiles: Path, tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "own.yaml",
        tiles,
        tmp_path / "run",
        data={"scheme": None, "sampling": "balanced", "crop_size": 32},
        train={"class_weights": "auto", "loss": "ce+0.5*lovasz", "eval_every": 2},
        schedule={"iterations": 2, "min_lr": 0.0},
    )
    result = train_experiment(load_config(path))
    state = load_checkpoint(result.last)
    assert state["class_names"] == ["class_0", "1", "2", "3"] and state["in_channels"] == 5
    assert state["class_colours"] == [list(c) for c in distinct_colours(4)]
    assert state["gsd"] == pytest.approx(0.5)  # the crops' pixel size in EPSG:2953 metres
    assert state["band_names"] is None  # the generated scene's bands have no descriptions
    assert 0.0 <= result.best_miou <= 1.0
    card, _ = read_checkpoint(result.last)  # inference colours own classes as training did, flips both ways
    assert card.colormap == colour_table(distinct_colours(4)) and card.gsd == pytest.approx(0.5)
    assert card.in_channels == 5 and card.class_names == ("class_0", "1", "2", "3") and card.scheme == ""
    assert _tta(InferOptions(tta=True), card).vflip


def test_training_gsd_is_the_median_of_the_scenes_and_none_without_crs(tmp_path: Path) -> None:
    from rs_deeplab.sample import write_voc
    from rs_deeplab.training.datasets import VOCSource

    write_voc(tmp_path / "voc", n_train=2, n_val=1)
    assert rasters_gsd(VOCSource(tmp_path / "voc", "train").scene_images()) is None  # JPEGs: pixels only
    paths = []
    for i, size in enumerate((0.5, 0.5, 2.0)):
        transform = Affine(size, 0, 2_500_000, 0, -size, 7_500_000)
        paths.append(
            write_geotiff(tmp_path / f"s{i}.tif", np.zeros((1, 8, 8), np.uint8), crs="EPSG:2953", transform=transform)
        )
    assert rasters_gsd(paths) == pytest.approx(0.5)


def test_auto_weights_need_a_tile_index(tmp_path: Path) -> None:
    from rs_deeplab.sample import write_voc
    from rs_deeplab.training.datasets import VOCSource
    from rs_deeplab.training.experiment import split_class_counts

    write_voc(tmp_path, n_train=1, n_val=1)
    with pytest.raises(InputError, match=r"data\.sampling: balanced reads the per-class pixel counts"):
        split_class_counts(VOCSource(tmp_path, "train"), "data.sampling: balanced")
