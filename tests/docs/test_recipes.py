"""Every shipped config against the published row it claims, and docs/recipes.md's table against both.

The recipes are documentation data outside the installed package (``docs/recipes_data.py``); the tests import them
with the repository root on ``sys.path``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.models import resnet18

from docs import recipes_data as recipes
from pipelines import tile as tile_cli
from rs_deeplab.config.schema import ExperimentConfig, load_config
from rs_deeplab.models.weights import IMAGENET_WEIGHTS
from rs_deeplab.tiling.presets import PRESETS
from rs_deeplab.training.experiment import train_experiment
from tests.trainkit import make_tiles

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
BY_CONFIG = {r.config: r for r in recipes.RECIPES}


def setting(cfg: ExperimentConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, Path):
        actual = actual.as_posix()
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected, strict=True))
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return actual == pytest.approx(expected, rel=1e-9, abs=1e-12)
    return type(actual) is type(expected) and actual == expected if isinstance(expected, bool) else actual == expected


def mismatches(recipe: recipes.Recipe, cfg: ExperimentConfig) -> list[str]:
    """``key: config X, source Y`` for every recorded setting the config does not match."""
    out = []
    for key, expected in recipe.settings.items():
        if key.startswith("tile."):
            continue
        actual = setting(cfg, key)
        if not same(actual, expected):
            out.append(f"{key}: config {actual!r}, source {expected!r}")
    return out


def tile_args(recipe: recipes.Recipe) -> Any:
    assert recipe.tile is not None
    words = shlex.split(recipe.tile)
    assert words[:2] == ["python", "pipelines/tile.py"]
    return tile_cli.build_parser().parse_args(words[2:])


def test_every_config_is_a_published_recipe_or_an_own_one() -> None:
    shipped = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")}
    published, own = set(BY_CONFIG), set(recipes.OWN_RECIPES)
    assert len(BY_CONFIG) == len(recipes.RECIPES), "two recipes name one config"
    assert not published & own
    assert shipped == published | own


@pytest.mark.parametrize("recipe", recipes.RECIPES, ids=lambda r: r.config)
def test_config_matches_its_published_source(recipe: recipes.Recipe) -> None:
    cfg = load_config(CONFIGS / recipe.config)
    assert mismatches(recipe, cfg) == []
    assert cfg.name == Path(recipe.config).stem
    # the header names the row and the command that trains it
    header = (CONFIGS / recipe.config).read_text()
    assert recipe.command in header
    assert f"{recipe.miou:.2f}" in header or f"{recipe.miou:g}" in header


def test_a_changed_setting_is_reported() -> None:
    recipe = BY_CONFIG["potsdam_r50.yaml"]
    cfg = load_config(CONFIGS / recipe.config, ["optimizer.head_lr_mult=10", "data.flips=aerial", "model.weights=null"])
    found = mismatches(recipe, cfg)
    assert [m.split(":")[0] for m in found] == ["model.weights", "optimizer.head_lr_mult", "data.flips"]


@pytest.mark.parametrize("recipe", [r for r in recipes.RECIPES if r.tile], ids=lambda r: r.config)
def test_tile_command_prepares_what_the_config_reads(recipe: recipes.Recipe) -> None:
    args = tile_args(recipe)  # the command parses with the real tiler's options
    s = recipe.settings
    cfg = load_config(CONFIGS / recipe.config)
    assert cfg.data.source == "tiles" and args.out == cfg.data.root
    assert args.preset == s["tile.preset"] and PRESETS[args.preset].scheme == cfg.data.scheme
    assert (args.size, args.stride) == (s["tile.size"], s["tile.stride"])
    assert args.eroded == s.get("tile.eroded", False)
    assert args.bands == s.get("tile.bands", "rgbir")
    assert (CONFIGS / recipe.config).read_text().count(recipe.tile) == 1  # the config's header says the same


def test_mmseg_rows_share_mmsegs_model_and_schedule() -> None:
    for recipe in recipes.RECIPES:
        if recipe.source.startswith("mmseg "):
            assert {k: recipe.settings[k] for k in recipes.MMSEG_V3PLUS} == recipes.MMSEG_V3PLUS
            # mmseg's names: r50-d8 is output stride 8, 4xb4 is 4 GPUs x 4 images
            name = recipe.source.split()[1]
            gpus, batch = name.split("_")[1].split("-")[0].split("xb")
            assert (int(gpus), int(batch)) == (recipe.gpus, recipe.settings["data.batch_size"])
            assert f"r{recipe.settings['model.backbone'].removeprefix('resnet')}" in name
            assert f"{recipe.settings['schedule.iterations'] // 1000}k" in name


@pytest.mark.slow
def test_recipes_page_is_the_generated_one() -> None:
    page = (ROOT / recipes.PAGE).read_text()
    assert page.count(recipes.START) == 1 and page.count(recipes.END) == 1
    assert recipes.render_section() in page
    assert recipes.update_page(page) == page
    for recipe in recipes.RECIPES:  # every row: config, published mIoU and command
        row = next(line for line in page.splitlines() if line.startswith(f"| `{recipe.config}` |"))
        assert f"| {recipe.miou:.2f} |" in row and recipe.command in row
    for path in recipes.OWN_RECIPES:
        assert not any(line.startswith(f"| `{path}`") for line in page.splitlines())  # not in the table


def test_recipes_live_outside_the_installed_package() -> None:
    assert Path(recipes.__file__).resolve() == ROOT / "docs" / "recipes_data.py"
    assert not (ROOT / "rs_deeplab" / "training" / "recipes.py").exists()
    readme = (ROOT / "README.md").read_text()
    assert "](docs/recipes.md)" in readme  # the front door links the page


def test_gpu_hours_follow_images_and_flops() -> None:
    by = BY_CONFIG
    # the reference row is calibrated: 80k x 16 images x 3 passes at 26.44 images/s
    assert recipes.gpu_hours(by["potsdam_r50.yaml"]) == pytest.approx(80_000 * 16 * 3 / 26.44 / 3600)
    assert recipes.gpu_hours(by["potsdam_r18.yaml"]) < recipes.gpu_hours(by["potsdam_r50.yaml"])
    assert recipes.gpu_hours(by["potsdam_r50.yaml"]) < recipes.gpu_hours(by["potsdam_r101.yaml"])
    # same model and images, 896 crops cost (896/512)^2 of 512 crops, within the head's fixed parts
    ratio = recipes.gpu_hours(by["isaid_r50.yaml"]) / recipes.gpu_hours(by["vaihingen_r50.yaml"])
    assert ratio == pytest.approx((896 / 512) ** 2, rel=0.05)


def test_own_recipes_are_labelled_and_load() -> None:
    for path in recipes.OWN_RECIPES:
        cfg = load_config(CONFIGS / path)
        assert cfg.name
        if path.startswith("own/"):
            assert (CONFIGS / path).read_text().startswith("# Own recipe")
    own = load_config(CONFIGS / "own" / "potsdam_rgbir_r50.yaml")
    assert (own.model.output_stride, own.infer.output_stride) == (16, 8)


@pytest.mark.usefixtures("one_torch_thread")
def test_potsdam_recipe_trains_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The R-18 Potsdam recipe as shipped (mmseg head, aux loss, ImageNet weights, RGB jitter), scaled to toy size."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(5)
    imagenet = resnet18(weights=None).state_dict()
    torch.save(imagenet, hub / Path(IMAGENET_WEIGHTS["resnet18"].url).name)
    tiles = make_tiles(tmp_path / "data")
    small = [
        f"data.root={tiles}",
        "data.bands=[1,2,3]",
        "data.crop_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        "schedule.iterations=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.log_every=1",
        f"work_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(CONFIGS / "potsdam_r18.yaml", small)
    result = train_experiment(cfg)
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    recipe = BY_CONFIG["potsdam_r18.yaml"]
    saved = ExperimentConfig.model_validate(state["config"])
    differing = {m.split(":")[0] for m in mismatches(recipe, saved)}
    assert differing == {"data.root", "data.crop_size", "data.batch_size", "schedule.iterations"}  # only the toy scale
    keys = state["model"].keys()
    assert any(k.startswith("aux_head.") for k in keys) and any(k.startswith("decode_head.") for k in keys)
    first = state["model"]["encoder.conv1.weight"]
    start = imagenet["conv1.weight"]
    cosine = torch.nn.functional.cosine_similarity(first.flatten(), start.flatten(), dim=0)
    assert cosine > 0.99  # two small steps from the ImageNet file, not from a random start


def test_rgb_jitter_on_four_bands_is_one_clear_error(tmp_path: Path) -> None:
    from rs_deeplab.cli.errors import InputError

    tiles = make_tiles(tmp_path / "data")  # RGBIR tiles, as the own RGBIR recipe reads
    cfg = load_config(
        CONFIGS / "potsdam_r18.yaml", [f"data.root={tiles}", "model.weights=null", f"work_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(InputError, match=r"data.photometric: rgb .* has 4 bands; use data.photometric: bands"):
        train_experiment(cfg)
    assert not (tmp_path / "run").exists()  # stopped before writing anything
