"""Settings from a fingerprint of the data (issue 24.2): the decisions, the range test, and real auto runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml
from affine import Affine

from pipelines import train as train_cli
from rs_deeplab.cli.durations import parse_size
from rs_deeplab.cli.errors import ConfigError, InputError
from rs_deeplab.config.schema import load_config
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
from rs_deeplab.training import autoconfig, experiment, lr_range
from rs_deeplab.training.autoconfig import ClassFacts, Fingerprint, area_percentile, derive
from rs_deeplab.training.engine import StepContext
from rs_deeplab.training.experiment import train_experiment
from rs_deeplab.training.transforms import TrainTransform
from tests.trainkit import make_tiles

GB = 2**30


def facts(name: str, share: float, size: float | None, pixels: int = 100_000) -> ClassFacts:
    return ClassFacts(name, share, pixels, crops=10, objects=5, size_median=size, size_p90=size)


def fp(classes: list[ClassFacts], **changes: object) -> Fingerprint:
    base = Fingerprint(
        crops=200,
        val_crops=50,
        scenes=2,
        crop_shape=(512, 512),
        bands=4,
        dtype="uint16",
        band_mean=(1.0,) * 4,
        band_std=(1.0,) * 4,
        gsd=(0.3, 0.3),
        classes=tuple(classes),
        device="cpu",
        cores=2,
        memory=16 * GB,
        memory_source="available now",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_balanced_classes_train_plainly() -> None:
    d = derive(fp([facts("a", 0.4, 600), facts("b", 0.35, 600), facts("c", 0.25, 40)]))  # a, b span the tiles
    v = d.values
    assert (v["train.loss"], v["train.class_weights"], v["data.sampling"]) == ("ce", None, "uniform")
    assert v["data.crop_size"] == 128 and "objects up to 40 px" in d.reasons["data.crop_size"]  # 3 x 40 -> 128
    assert v["data.batch_size"] == 8 and v["data.flips"] == "aerial" and v["data.scale_range"] == [0.8, 1.25]
    assert v["optimizer.lr"] == 1e-3 and set(d.reasons) == set(v) == set(autoconfig.DERIVED) and not d.notes
    assert v["data.num_workers"] == 1  # two cores: one loads, one trains
    gpus = derive(
        fp([facts("a", 0.5, 600), facts("b", 0.5, 600)], device="cuda", cores=16, gpus=2, memory=80 * GB)
    ).values
    assert gpus["data.num_workers"] == 4 and gpus["data.batch_size"] == 16


def test_imbalance_and_object_size_choose_weights_loss_and_sampling() -> None:
    imbalanced = derive(fp([facts("bg", 0.8, 500), facts("field", 0.15, 200), facts("house", 0.05, 60)]))
    assert imbalanced.values["train.loss"] == "ce+dice" and imbalanced.values["train.class_weights"] == "auto"
    assert imbalanced.values["data.sampling"] == "balanced" and "16x" in imbalanced.reasons["train.loss"]
    small = derive(fp([facts("bg", 0.9, 500), facts("car", 0.1, 6)]))
    assert small.values["train.loss"] == "ce+lovasz" and "car (6 px)" in small.reasons["train.loss"]
    rare = derive(fp([facts("bg", 0.999, 500), facts("well", 0.001, 12, pixels=300)]))
    assert rare.values["train.loss"] == "focal+dice" and "well is nearly absent" in rare.reasons["train.loss"]
    assert any("well has only 300 labelled pixels" in n for n in rare.notes)  # it works and says so


def test_one_training_scene_weighs_classes_alike() -> None:
    classes = [facts("bg", 0.7, 500), facts("water", 0.25, 200), facts("house", 0.05, 60)]
    one, several = derive(fp(classes, scenes=1)), derive(fp(classes, scenes=3))
    weights = "train.class_weights"
    assert one.values[weights] == "balanced" and "one training scene" in one.reasons[weights]
    assert several.values[weights] == "auto" and "3 training scenes" in several.reasons[weights]
    assert one.values["train.ema"] == 0.0 and one.by_plan["train.ema"]["value"] == autoconfig.EMA_DECAY
    kept = derive(fp(classes, scenes=1), {"train.ema"}, {"train.ema": 0.5})
    assert kept.kept == {"train.ema": 0.5} and "train.ema" not in kept.by_plan  # the user's, even with many passes


def test_rescaling_widens_only_when_the_schedule_gives_many_passes() -> None:
    classes = [facts("bg", 0.7, 500), facts("house", 0.3, 60)]
    derived = derive(fp(classes, crops=20))
    assert derived.values["data.scale_range"] == [0.8, 1.25] and derived.values["train.ema"] == 0.0
    rule = derived.by_plan["data.scale_range"]
    assert rule["min_passes"] == autoconfig.WIDE_PASSES and rule["value"] == [0.5, 2.0]
    assert set(derived.by_plan) == {"data.scale_range", "train.ema"}
    user = derive(fp(classes), {"data.scale_range"}, {"data.scale_range": [0.9, 1.1]})
    assert "data.scale_range" not in user.by_plan  # the user's
    assert "data.scale_range" not in derive(fp(classes, gsd=())).by_plan  # pixel-only data: 0.5-2 from the start

    def record() -> dict[str, object]:
        return {"fingerprint": fp(classes, crops=20).as_dict(), **derive(fp(classes, crops=20)).as_dict()}

    many, few = record(), record()
    wide = {"data.scale_range": [0.5, 2.0], "train.ema": autoconfig.EMA_DECAY}
    assert autoconfig.adapt_to_plan(many, 2250, 8) == wide  # 900 passes over 20 crops
    assert many["values"]["data.scale_range"] == [0.5, 2.0] and many["by_plan"]["data.scale_range"]["passes"] == 900
    assert "[0.5, 2.0]: the schedule gives 900 passes" in many["reasons"]["data.scale_range"]
    assert many["values"]["train.ema"] == 0.999 and "steadier" in many["reasons"]["train.ema"]
    assert autoconfig.adapt_to_plan(many, 10, 8) == {}  # decided once: a re-plan or a resumed run keeps it
    assert autoconfig.adapt_to_plan(few, 100, 8) == {} and few["values"]["data.scale_range"] == [0.8, 1.25]
    assert "kept: the schedule gives 40 passes" in few["reasons"]["data.scale_range"]
    assert few["values"]["train.ema"] == 0.0 and "kept: the schedule gives 40 passes" in few["reasons"]["train.ema"]
    assert autoconfig.adapt_to_plan(None, 100, 8) == {}


def test_crop_fits_objects_with_context_within_tiles_and_device() -> None:
    two = [facts("bg", 0.7, 2000), facts("building", 0.3, 100)]
    assert derive(fp(two)).values["data.crop_size"] == 256  # 3 x 100 = 300 px wanted, the CPU cap
    assert derive(fp(two, device="cuda")).values["data.crop_size"] == 320
    small_tiles = derive(fp(two, crop_shape=(128, 160)))
    assert small_tiles.values["data.crop_size"] == 128 and "the tiles' size" in small_tiles.reasons["data.crop_size"]
    few = derive(fp(two, crops=9, crop_shape=(128, 128)))
    assert few.values["data.batch_size"] == 4 and "9 training crops allow 4" in few.reasons["data.batch_size"]
    pixel_only = derive(fp(two, gsd=()))
    assert pixel_only.values["data.flips"] == "horizontal" and pixel_only.values["data.scale_range"] == [0.5, 2.0]
    mixed = derive(fp(two, gsd=(0.3, 0.6))).values["data.scale_range"]
    assert mixed[0] <= 0.5 and mixed[1] >= 2.0  # scenes at two pixel sizes: the rescaling covers the ratio


def test_memory_shrinks_the_batch_or_refuses_in_one_line() -> None:
    two = [facts("bg", 0.7, 2000), facts("building", 0.3, 30)]
    full = derive(fp(two)).values["data.batch_size"]  # 8 crops of 96 px
    tight = derive(fp(two, memory=GB // 2, memory_source="auto.memory"))
    assert tight.values["data.batch_size"] < full and any("memory: batch" in n for n in tight.notes)
    with pytest.raises(InputError, match=r"auto: training needs about 94 MB .* more than the 10 MB auto.memory"):
        derive(fp(two, memory=10 * 2**20, memory_source="auto.memory"))


def test_user_values_win_and_one_class_is_refused() -> None:
    two = [facts("bg", 0.9, 500), facts("car", 0.1, 6)]
    user = {"train.loss", "data.crop_size"}
    d = derive(fp(two), user, {"train.loss": "ce", "data.crop_size": 96})
    assert "train.loss" not in d.values and d.kept == {"data.crop_size": 96, "train.loss": "ce"}
    assert d.values["data.batch_size"] == round(8 * 128 * 128 / 96**2)  # the user's crop decides the batch
    with pytest.raises(InputError, match=r"labelled pixels of one class only \(bg\).*--label-fill 0"):
        derive(fp([facts("bg", 1.0, 500), facts("car", 0.0, None, pixels=0)]))


def test_object_sizes_are_weighted_by_area() -> None:
    label = np.zeros((64, 64), np.uint8)
    label[10:40, 10:40] = 1  # one 30 x 30 object
    label[50, ::4] = 1  # and 16 one-pixel slivers
    sizes = autoconfig.object_sizes([label], 2)[1]
    assert len(sizes) == 17 and np.median(sizes) < 2  # by count the class looks tiny
    assert area_percentile(sizes, 50) == pytest.approx(2 * math.sqrt(900 / math.pi))  # by area it is the object
    assert area_percentile(np.array([]), 50) is None


def test_pick_lr_takes_a_tenth_of_the_best_rate() -> None:
    lrs = [lr_range.rate(i) for i in range(lr_range.STEPS)]
    losses = [2.0 - 0.3 * math.log10(lr / 1e-5) if lr < 1e-2 else 1.1 + 100 * (lr - 1e-2) for lr in lrs]  # falls, rises
    lr, reason = lr_range.pick_lr(lrs, losses)
    assert lr is not None and 5e-4 < lr < 3e-3 and "a tenth of it" in reason
    assert lr_range.pick_lr(lrs, [2.0 + i for i in range(len(lrs))]) == (None, "the loss never fell below its start")
    assert lr_range.pick_lr(lrs, [float("nan")] * 5)[0] is None
    falling = [1.0 / (1 + i) for i in range(len(lrs))]
    assert lr_range.pick_lr(lrs, falling)[0] == lr_range.BOUNDS["adamw"][1]  # the minimum at the end: clamped
    assert lr_range.pick_lr(lrs, falling, lr_range.BOUNDS["sgd"])[0] == pytest.approx(0.1)
    assert lr_range.pays(budget=600, iterations=0, step_seconds=0.5)
    assert not lr_range.pays(budget=60, iterations=0, step_seconds=0.5)
    assert lr_range.pays(budget=None, iterations=1000) and not lr_range.pays(budget=None, iterations=100)


def test_range_test_puts_the_model_and_optimiser_back() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    ctx = StepContext(optimizer=opt, lr_schedule=sched, device=torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = ([(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16), dtype=torch.uint8))] for _ in range(60))
    result = lr_range.range_test(model, batches, ctx)
    assert 6 <= len(result.losses) <= lr_range.STEPS and result.lrs[0] == lr_range.START
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and BN statistics
    assert opt.param_groups[0]["lr"] == 1e-3 and not opt.state and sched.last_epoch == 0


def test_memory_sizes_parse() -> None:
    assert parse_size("8GB") == 8 * GB and parse_size("512mb") == 512 * 2**20 and parse_size("1.5GiB") == 1.5 * GB
    for bad in ("lots", "-1GB", "0", "8 parsecs"):
        with pytest.raises(ValueError, match="not a memory size"):
            parse_size(bad)


def auto_config(folder: Path, tiles: Path, **sections: dict[str, object]) -> Path:
    cfg: dict[str, object] = {
        "work_dir": str(folder / "runs" / "auto"),
        "auto": {"enabled": True},
        "data": {"source": "tiles", "root": str(tiles), "scheme": "potsdam", "num_workers": 0, "batch_size": 2},
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16},
        "optimizer": {"name": "adamw"},
        "schedule": {"iterations": 6, "min_lr": 0.0},
        "train": {"eval_every": 3, "checkpoint_every": 3, "log_every": 1},
    }
    for key, values in sections.items():
        cfg[key] = {**cfg[key], **values}  # type: ignore[dict-item]
    path = folder / "auto.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_an_auto_run_derives_records_and_resumes_with_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lr_range, "STEPS", 5)  # a range test that fits a 6-iteration smoke run
    monkeypatch.setattr(lr_range, "ITERATION_SHARE", 1.0)
    path = auto_config(tmp_path, make_tiles(tmp_path, crop=64))
    result = train_experiment(load_config(path))
    record = json.loads((result.run_dir / "auto.json").read_text())
    values, fingerprint = record["values"], record["fingerprint"]
    assert fingerprint["crops"] == 9 and fingerprint["crop_shape"] == [64, 64] and fingerprint["bands"] == 4
    assert fingerprint["gsd"] == [0.1] and len(fingerprint["classes"]) == 6 and fingerprint["sampled"] == 9
    assert sum(c["share"] for c in fingerprint["classes"]) == pytest.approx(1.0)
    assert values["data.crop_size"] == 64 and "data.batch_size" not in values  # the config's batch and workers win
    assert record["kept"] == {"data.batch_size": 2, "data.num_workers": 0}
    assert set(values) | set(record["kept"]) == set(autoconfig.DERIVED)
    assert len(record["range_test"]["lrs"]) <= 5 and record["reasons"]["optimizer.lr"]
    written = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert written["data"]["crop_size"] == 64 and written["train"]["loss"] == values["train.loss"]
    assert written["optimizer"]["lr"] == pytest.approx(values["optimizer.lr"])
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    assert state["auto"]["values"] == values and state["optimizer"]["param_groups"][0]["lr"] <= values["optimizer.lr"]
    # resumed with more iterations: the settings it started with, no second fingerprint or range test
    monkeypatch.setattr(autoconfig, "fingerprint", lambda *a, **k: pytest.fail("fingerprinted again"))
    again = train_experiment(load_config(path, ["schedule.iterations=9"]))
    assert again.iterations == 9
    assert json.loads((again.run_dir / "auto.json").read_text())["values"] == values


class RangeSpy(TrainTransform):
    """A training transform that notes the scale range each sample was drawn with."""

    drawn: ClassVar[list[tuple[float, float]]] = []

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        RangeSpy.drawn.append(self.scale_range)
        return super().__call__(image, mask, seed)


def spy_on_ranges(monkeypatch: pytest.MonkeyPatch, wide_passes: float) -> None:
    """Training transforms note their scale range in ``RangeSpy.drawn``; ``wide_passes`` passes widen it."""
    monkeypatch.setattr(experiment, "TrainTransform", RangeSpy)
    monkeypatch.setattr(autoconfig, "WIDE_PASSES", wide_passes)
    monkeypatch.setattr(RangeSpy, "drawn", [])


@pytest.mark.slow
def test_a_budgeted_auto_run_widens_the_rescaling_after_its_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy_on_ranges(monkeypatch, 4)  # 20 iterations of 2 over 9 crops are 4.4 passes
    path = auto_config(
        tmp_path,
        make_tiles(tmp_path, crop=64),
        schedule={"budget": "10m", "iterations": 20},
        auto={"enabled": True, "lr_test": False},
    )
    result = train_experiment(load_config(path))
    record = json.loads((result.run_dir / "auto.json").read_text())
    assert record["values"]["data.scale_range"] == [0.5, 2.0] and record["by_plan"]["data.scale_range"]["passes"] == 4.4
    assert "[0.5, 2.0]: the schedule gives 4 passes" in record["reasons"]["data.scale_range"]
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["data"]["scale_range"] == [0.5, 2.0]
    # the probe's 12 iterations drew mild rescaling; the 8 after the plan the wide one, two crops each
    assert result.iterations == 20 and RangeSpy.drawn == [(0.8, 1.25)] * 24 + [(0.5, 2.0)] * 16
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    assert state["auto"]["values"]["data.scale_range"] == [0.5, 2.0] and state["config"]["train"]["ema"] == 0.999
    assert state["ema_updates"] == 8 and "train_weights" in state  # the average followed the 8 steps after the plan


@pytest.mark.slow
def test_a_fixed_schedule_decides_before_training_and_resumes_with_the_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy_on_ranges(monkeypatch, 1)  # 6 iterations of 2 over 9 crops are 1.3 passes
    path = auto_config(tmp_path, make_tiles(tmp_path, crop=64), auto={"enabled": True, "lr_test": False})
    first = train_experiment(load_config(path))
    assert RangeSpy.drawn == [(0.5, 2.0)] * 12
    monkeypatch.setattr(autoconfig, "WIDE_PASSES", 1000)  # a resumed run does not decide again
    again = train_experiment(load_config(path, ["schedule.iterations=9"]))
    assert again.iterations == 9 and RangeSpy.drawn == [(0.5, 2.0)] * 18
    record = json.loads((first.run_dir / "auto.json").read_text())
    assert record["by_plan"]["data.scale_range"]["passes"] == 1.3


def one_class_tiles(folder: Path) -> Path:
    transform = Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
    specs = []
    for split in ("train", "val"):
        image = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
        colours = SCHEMES["potsdam"].encode_colours(np.full((64, 64), 2, np.uint8))
        specs.append(
            SceneSpec(
                write_geotiff(folder / f"{split}.tif", image, crs="EPSG:32633", transform=transform),
                write_geotiff(folder / f"{split}_l.tif", colours, crs="EPSG:32633", transform=transform),
                split,
            )
        )
    tile_scenes(specs, folder / "tiles", size=64, stride=64, scheme="potsdam", workers=1, quiet=True)
    return folder / "tiles"


def test_auto_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = auto_config(tmp_path, one_class_tiles(tmp_path))
    assert train_cli.main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labelled pixels of one class only (low_vegetation)" in err, err
    assert not (tmp_path / "runs" / "auto").exists()
    path = auto_config(tmp_path / "two", make_tiles(tmp_path / "two"))
    assert train_cli.main([str(path), "--quiet", "auto.memory=4MB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the 4 MB auto.memory; raise auto.memory" in err, err
    with pytest.raises(ConfigError, match="not a memory size"):
        load_config(path, ["auto.memory=plenty"])


def test_auto_needs_a_tile_index(tmp_path: Path) -> None:
    from rs_deeplab.sample import write_voc
    from rs_deeplab.training.datasets import VOCSource

    write_voc(tmp_path, n_train=1, n_val=1)
    source = VOCSource(tmp_path, "train")
    with pytest.raises(InputError, match=r"auto: reads the per-class pixel counts of a tile index.*enabled: false"):
        autoconfig.fingerprint(source, source, None, device="cpu")
