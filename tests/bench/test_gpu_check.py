"""``bench/gpu_check.py`` runs end to end (``--smoke``: tiny and on the CPU), so it cannot rot between GPU loans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("geopandas", "pyogrio", "shapely", "fiona", "pyproj", "pystac")
"""Not on the GPU box, nor carried there (bench/gpu_wheels.sh)."""


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_check(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        (name, "ok") for name in ("training", "fake_ddp", "loader", "inference", "dask", "torchrun")
    ]
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("## GPU check: CPU (--smoke)") and "FAILED" not in text
    for expected in (
        "| fp32 | fp32 |",
        "| amp + channels_last | fp32 |",
        "| fp16 + GradScaler + channels_last |",
        "| no | fp32 |",
        "| eager backend | fp32 |",
        "loader/model",
        "× model-only",
        "label raster against this process: identical",
        "torchrun, 1 process (gloo group)",
    ):
        assert expected in text, expected


@pytest.mark.slow
def test_gpu_path_imports_no_geopackage_stack() -> None:
    """The GPU box carries rasterio but not pyogrio/geopandas/shapely/pyproj/pystac: training and inference import
    without them."""
    code = (
        "import sys, runpy; sys.argv = ['gpu_check']; "
        "import rs_deeplab.training.experiment, rs_deeplab.inference.predicting.scene, "
        "rs_deeplab.inference.dask_jobs.runner; "
        "import rs_deeplab.inference.dask_jobs.gpu_workers; "
        f"runpy.run_path({str(REPO / 'bench' / 'gpu_check.py')!r}, run_name='not_main'); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
