"""Inference is free of the training stack, and a loaded model belongs to whoever loaded it (no process cache).

A real prediction with a real trained checkpoint, in a fresh interpreter, imports neither ``rs_deeplab.training``
nor albumentations; each load reads the file again; a Dask worker keeps the model it read between tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.runtimes.trained import HOLDER_ATTRIBUTE, ModelHolder, TrainedModel, worker_model
from tests import trainkit
from tests.daskkit import dask_cluster, subprocess_env

trained = trainkit.trained  # the module-scoped tiny checkpoint (a fixture)

FORBIDDEN = ("rs_deeplab.training", "albumentations")


def small_scene(path: Path, seed: int = 9) -> Path:
    image, _ = trainkit.blob_scene(seed, 80)
    return write_geotiff(
        path, image[:, :70, :80], crs="EPSG:32633", transform=rasterio.Affine(0.1, 0, 368_000, 0, -0.1, 5_808_000)
    )


@pytest.mark.slow
def test_a_prediction_with_a_trained_checkpoint_imports_no_training_stack(trained: Path, tmp_path: Path) -> None:
    scene = small_scene(tmp_path / "scene.tif")
    code = f"""
import sys
import rs_deeplab.inference as inference
from pathlib import Path
result = inference.infer_scenes([Path({str(scene)!r})], Path("labels.gpkg"), checkpoint=Path({str(trained)!r}),
                                options=inference.InferOptions(device="cpu"), quiet=True)
single = inference.predict_scene(inference.TrainedModel(Path({str(trained)!r})), Path({str(scene)!r}),
                                 Path("single.tif"), size=64, stride=32, device="cpu")
print(result.polygon_count, single.windows)
print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    counts, loaded = proc.stdout.strip().split("\n")[-2:]
    polygons, windows = (int(v) for v in counts.split())
    assert polygons > 0 and windows > 0
    assert loaded == "[]", f"inference imported {loaded}"
    with rasterio.open(tmp_path / "labels.tif") as a, rasterio.open(tmp_path / "single.tif") as b:
        labels = a.read(1)
        assert a.shape == (70, 80) and np.array_equal(labels, b.read(1))  # the card's window and stride
    assert set(np.unique(labels)) <= set(range(6))


@pytest.mark.slow
def test_the_probe_sees_the_training_stack_where_it_is_imported(tmp_path: Path) -> None:
    # the check above can fail: importing training shows up under the names it looks for
    code = f"import sys, rs_deeplab.training\nprint(any(m.startswith({FORBIDDEN!r}) for m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr


def test_each_load_reads_the_file_and_owns_its_model(trained: Path, tmp_path: Path) -> None:
    model = TrainedModel(trained)
    first, second = model.load(torch.device("cpu")), model.load(torch.device("cpu"))
    assert first.module is not second.module and first.card == second.card  # no process-wide cache
    holder = ModelHolder()
    held = holder.get(model, torch.device("cpu"))
    assert holder.get(model, torch.device("cpu")) is held  # a holder keeps it
    at8 = holder.get(TrainedModel(trained, 8), torch.device("cpu"))
    assert at8 is not held and at8.source.output_stride == 8
    copy = tmp_path / "copy.pt"
    copy.write_bytes(trained.read_bytes())
    again = holder.get(TrainedModel(copy), torch.device("cpu"))
    os.utime(copy, ns=(1, 1))  # replaced on disk: read again
    assert holder.get(TrainedModel(copy), torch.device("cpu")) is not again
    assert worker_model(model, torch.device("cpu")) is not worker_model(model, torch.device("cpu"))  # no worker


def held_module(model: TrainedModel) -> tuple[int, int | None]:
    """Dask task: the identity of the module this worker holds for ``model``, and its output stride."""
    loaded = worker_model(model, torch.device("cpu"))
    return id(loaded.module), loaded.source.output_stride


@pytest.mark.slow
def test_a_dask_worker_keeps_the_model_it_read_between_tasks(trained: Path, tmp_path: Path) -> None:
    from distributed import Client

    with dask_cluster(tmp_path, workers=1) as address, Client(address, set_as_default=False) as client:
        model = TrainedModel(trained)
        held = [client.submit(held_module, model, pure=False).result() for _ in range(3)]
        other = client.submit(held_module, TrainedModel(trained, 8), pure=False).result()
        holders = client.run(lambda dask_worker: type(vars(dask_worker).get(HOLDER_ATTRIBUTE)).__name__)
    assert len(set(held)) == 1 and held[0][1] is None  # read once, kept by the worker
    assert other[1] == 8  # another output stride: replaced
    assert list(holders.values()) == ["ModelHolder"]
