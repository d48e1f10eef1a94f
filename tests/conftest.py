"""Shared fixtures: factories for tiny georeferenced rasters and a clean environment for pipeline runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine

from rs_deeplab.raster import write_geotiff

UTM33 = "EPSG:32633"
DEFAULT_TRANSFORM = Affine(0.1, 0.0, 368_000.0, 0.0, -0.1, 5_808_000.0)

RasterFactory = Callable[..., Path]


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_DEEPLAB_NO_PROGRESS", "1")


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA; on CPU-only machines (CI) they are reported as skipped, never run."""
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
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
