"""Shared fixtures: factories for tiny georeferenced rasters and a clean environment for pipeline runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.runtime.tuning import tune_malloc

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
"""The real sample scenes and labels (``../shared/data/real`` beside the clone; its README says what each is)."""

UTM33 = "EPSG:32633"
DEFAULT_TRANSFORM = Affine(0.1, 0.0, 368_000.0, 0.0, -0.1, 5_808_000.0)

RasterFactory = Callable[..., Path]


# CPython 3.11: a parse nested in another parse (a garbage-collected asyncio Task logging "Task exception was never
# retrieved" formats a traceback, which parses source for its carets) fails the outer one with "AST constructor
# recursion depth mismatch". Dask's clients can leave such Tasks; their log line is not what a test checks, and
# numpy.ma (imported lazily by Dask's serializers, and parsing signatures) is imported once here, before any test.
logging.getLogger("asyncio").setLevel(logging.CRITICAL)
import numpy.ma  # noqa: E402


def _threads_per_worker() -> int:
    """This process's share of the cores when pytest-xdist runs several test processes at once (all of them if not)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


# Torch and OpenMP in each xdist worker, and in the commands its tests start, keep to the worker's share of the cores:
# on a 2-core machine two workers each running torch on two threads made a training iteration twelve times slower
# than on one (spinning threads waiting for a core), and a budgeted training in CI found its budget too short.
# Set before any test module imports torch, which reads it once; a value set by the caller is kept.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads_per_worker()))

# The tests' own process trains and predicts in-process with malloc tuned as the scripts tune theirs (tune_process):
# otherwise it would be tuned from whichever test first calls a script's main(), and the tests before it would map
# and fault in each large buffer anew (a fifth more system time on in-process training). Only this process: the
# commands the tests start tune themselves or not, as they do for a user, and the probes of tests/test_global_state.py
# are fresh interpreters.
tune_malloc()


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_DEEPLAB_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _package_logger_restored() -> Iterator[None]:
    """A script's ``main()`` sets the package logger's handler on this test's captured stderr: take it away after.

    Left behind, the handler writes to a closed stream in a later test, which prints "--- Logging error ---".
    """
    logger = logging.getLogger("rs_deeplab")
    state = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = state[0], state[1], state[2]


def reprojected(path: Path, crs: str) -> Path:
    """``path`` reprojected (nearest) into ``crs``, as a scene delivered in another UTM zone."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(path) as src:
        t, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        data = np.zeros((src.count, h, w), np.uint8)
        reproject(
            src.read(),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=t,
            dst_crs=crs,
            resampling=Resampling.nearest,
        )
    return write_geotiff(path.with_name(f"{path.stem}_{crs.replace(':', '')}.tif"), data, crs=crs, transform=t)


@pytest.fixture
def make_raster(tmp_path: Path) -> RasterFactory:
    """Write a GeoTIFF from an array: ``make_raster(array, name="x.tif", crs=..., transform=..., nodata=...)``.

    ``array`` is ``(bands, H, W)`` or ``(H, W)``; CRS defaults to EPSG:32633 with 10 cm pixels.
    """

    def factory(
        array: np.ndarray,
        name: str = "scene.tif",
        *,
        crs: Any = UTM33,
        transform: Affine = DEFAULT_TRANSFORM,
        nodata: float | None = None,
        **kwargs: Any,
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_geotiff(path, array, crs=crs, transform=transform, nodata=nodata, **kwargs)

    return factory


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def require_real_data() -> Path:
    """The real-data folder, or a failure (never a skip: CI always has it) saying where it is expected."""
    if not REAL_DATA.is_dir():
        pytest.fail(
            f"the real sample data is missing: expected {REAL_DATA} (../shared/data/real beside the clone, as in "
            "CI); tests marked real_data fail without it, they do not skip",
            pytrace=False,
        )
    return REAL_DATA


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real``; a test using it is marked ``real_data`` and fails where the folder is missing."""
    return require_real_data()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``real_data`` fails in setup, naming the expected folder, where the real samples are missing."""
    if item.get_closest_marker("real_data"):
        require_real_data()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests using the ``real_data`` fixture are marked ``real_data``; slow files run first; ``gpu`` tests need CUDA.

    On CPU-only machines (CI) ``gpu`` tests are reported as skipped, never run.
    """
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("real_data"):
            item.add_marker(pytest.mark.real_data)
    # files with slow tests first, each file kept whole and in order (module fixtures are set up once): with
    # ``make test``'s xdist workers the quick files at the end fill the gaps, instead of one worker finishing alone
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    marker = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine: pytest -m gpu)")
    for item in gpu_items:
        item.add_marker(marker)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from two threads, and on a shared 2-core machine they lose a lot."""
    from tests.trainkit import one_thread

    with one_thread():
        yield
