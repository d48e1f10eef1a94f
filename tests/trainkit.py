"""Helpers for training tests: tiny labelled scenes tiled into an index, and small configs."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import pytest
import yaml
from affine import Affine

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
# class colours in R, G, B, NIR: separable enough to learn in a few iterations, noisy enough not to be trivial
BASE = np.array(
    [
        [200, 200, 200, 30],
        [180, 60, 60, 40],
        [90, 160, 70, 150],
        [40, 110, 40, 200],
        [230, 230, 50, 60],
        [220, 40, 40, 90],
    ],
    dtype=np.float32,
)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread, as in the scripts run with ``OMP_NUM_THREADS=1``: the same floating-point sums, so a run in
    the test's process matches a subprocess's bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def blob_scene(seed: int, size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """A 4-band image of noisy discs on grass and its ISPRS class raster."""
    rng = np.random.default_rng(seed)
    classes = np.full((size, size), 2, np.uint8)
    for _ in range(size // 6):
        x, y = (int(v) for v in rng.integers(0, size, 2))
        cv2.circle(classes, (x, y), int(rng.integers(5, size // 8)), int(rng.integers(0, 6)), -1)
    image = np.clip(BASE[classes].transpose(2, 0, 1) + rng.normal(0, 25, (4, size, size)), 0, 255)
    return image.astype(np.uint8), classes


def make_tiles(
    folder: Path, *, size: int = 192, crop: int = 64, seeds: tuple[int, int] = (1, 2), val_size: int | None = None
) -> Path:
    """Two scenes (train, val) written as GeoTIFFs with colour labels and tiled into ``folder/tiles``.

    ``val_size`` makes the validation scene smaller (``crop`` gives exactly one validation crop).
    """
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    transform = Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
    for split, seed in zip(("train", "val"), seeds, strict=True):
        image, classes = blob_scene(seed, size if split == "train" or val_size is None else val_size)
        img = write_geotiff(folder / f"{split}.tif", image, crs="EPSG:32633", transform=transform)
        colours = SCHEMES["potsdam"].encode_colours(classes)
        lbl = write_geotiff(folder / f"{split}_label.tif", colours, crs="EPSG:32633", transform=transform)
        specs.append(SceneSpec(img, lbl, split))
    tile_scenes(specs, folder / "tiles", size=crop, stride=crop, scheme="potsdam", workers=1, quiet=True)
    return folder / "tiles"


DEMO_QUICK = [
    *("schedule.iterations=2", "data.crop_size=96", "data.batch_size=2", "data.num_workers=0"),
    *("train.eval_every=2", "train.checkpoint_every=2"),
]
"""Overrides that make the demo's training two iterations on small crops, in this process."""


TWO_ITERATIONS: dict[str, dict[str, object]] = {
    "schedule": {"iterations": 2},
    "train": {"eval_every": 2, "checkpoint_every": 2},
}
""":func:`write_config` sections of a run of two iterations that evaluates and saves at the second."""


def write_config(path: Path, tiles: Path, work_dir: Path, **sections: dict[str, object]) -> Path:
    """A tiny DeepLab v3+ ResNet-18 experiment on ``tiles``; ``sections`` update the defaults."""
    cfg: dict[str, dict[str, object]] = {
        "data": {
            "source": "tiles",
            "root": str(tiles),
            "scheme": "potsdam",
            "crop_size": 48,
            "batch_size": 2,
            "num_workers": 0,
        },
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16},
        "optimizer": {"lr": 0.01},
        "schedule": {"iterations": 6, "min_lr": 0.0},
        "train": {"eval_every": 3, "checkpoint_every": 2, "log_every": 1},
    }
    for key, values in sections.items():
        cfg.setdefault(key, {}).update(values)
    path.write_text(yaml.safe_dump({"work_dir": str(work_dir), **cfg}))
    return path


def train_tiny(folder: Path) -> Path:
    """A real checkpoint trained for 4 iterations on :func:`make_tiles` (9 validation crops of 64 px); its config
    names ``folder/val.tif`` as the held-out scene and infers with 64-pixel windows every 32 pixels."""
    from rs_deeplab.config.schema import load_config
    from rs_deeplab.training.experiment import train_experiment

    tiles = make_tiles(folder)
    infer = {"size": 64, "stride": 32, "batch_size": 4, "scenes": [str(folder / "val.tif")]}
    cfg = write_config(
        folder / "exp.yaml",
        tiles,
        folder / "runs" / "tiny",
        schedule={"iterations": 4},
        train={"eval_every": 4, "checkpoint_every": 4, "log_every": 2},
        infer=infer,
    )
    result = train_experiment(load_config(cfg))
    assert result.best is not None
    return result.best


def _shared_root(factory: pytest.TempPathFactory) -> Path:
    """The folder every pytest-xdist worker of this run sees (the run's temporary folder without xdist)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_run(factory: pytest.TempPathFactory, name: str, compute: Callable[[], T]) -> T:
    """``compute()`` once for the whole test run, however many pytest-xdist workers ask; the others wait for it.

    The first caller computes under a file lock and pickles the result; later callers (other modules, other
    workers) read it back. Work stealing may split a module between the workers, or hand one worker the same module
    twice: a module-scoped fixture built this way still runs once. What the result names on disk is shared: a test
    that changes it works on a copy. A ``compute`` that fails records nothing, and the next caller tries again.
    """
    root = _shared_root(factory)
    record = root / f"{name}.pickle"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.exists():
            tmp = record.with_suffix(".partial")
            tmp.write_bytes(pickle.dumps(compute()))
            tmp.replace(record)
        result: T = pickle.loads(record.read_bytes())
        return result


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict[str, Path]]) -> dict[str, Path]:
    """``build(folder)`` once for the whole test run into ``<run's temporary folder>/<name>`` (see
    :func:`once_per_run`); returns the paths ``build`` returned."""

    def fresh() -> dict[str, Path]:
        folder = _shared_root(factory) / name
        shutil.rmtree(folder, ignore_errors=True)  # a build that failed before starts again
        folder.mkdir()
        return build(folder)

    return once_per_run(factory, name, fresh)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`train_tiny`'s ``best.pt``, trained once for the whole run (import this fixture into the module).

    Shared: a test that changes the checkpoint or writes beside it works on a copy.
    """
    return built_once(tmp_path_factory, "trained", lambda folder: {"best": train_tiny(folder)})["best"]


def torchrun(script: Path | str, *args: str, processes: int = 2) -> list[str]:
    """The command that runs ``script`` with ``args`` as ``processes`` ranks of a standalone torchrun job."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        str(script),
        *args,
    ]
