"""Fixtures shared by the inference tests: the demo's data and a quickly trained checkpoint, exported both ways;
a real Dask cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import demo
from pipelines.export import main as export_main
from rs_deeplab.training.experiment import train_experiment
from tests.daskkit import dask_cluster
from tests.trainkit import DEMO_QUICK, built_once


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's data at 256 px, a few training iterations, and the best checkpoint exported both ways.

    Built once for the whole run, all xdist workers together: the export tests and the CPU-runtime tests share one
    training (it takes about a minute here). Shared: a test that changes a file works on a copy.
    """
    return built_once(tmp_path_factory, "demo_run", _demo_run)


def _demo_run(out: Path) -> dict[str, Path]:
    files, _, _ = demo.prepare_data(out, size=256, quiet=True)
    overrides = [
        *DEMO_QUICK,
        "infer.size=128",
        "infer.stride=64",
        "infer.batch_size=4",
    ]
    result = train_experiment(demo.demo_config(out, overrides, run_dir=out / "run"))
    assert result.best is not None
    paths = {"out": out, "checkpoint": result.best, "scene": files[-1].rgbir}
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
        paths[fmt] = out / f"model{suffix}"
        assert export_main([str(result.best), "--out", str(paths[fmt]), "-q"]) == 0
    return paths


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``dask scheduler`` and two single-threaded ``dask worker`` processes on loopback, started once for the
    inference tests that run on Dask (each starting its own cost seconds of process start-up and imports)."""
    with dask_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield address
