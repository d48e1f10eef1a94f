"""Library calls leave the caller's process as they found it: malloc, torch threads, warnings, loggers, matplotlib.

Each probe runs in a fresh Python process that first sets its own state (matplotlib's ``svg`` backend, three torch
threads, Dask imported), records it, calls the library (a tiling run on a local Dask cluster, a Dask prediction
on workers that are threads of the caller, the run-log plots), and records it again. The pytest process is shared
by every test, so a library call that changed these behind the caller's back would change them for all later
tests too (a torch thread-count change in a Dask worker thread while another thread computes is one suspect of an
aborted test process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.classes import SCHEMES
from tests.conftest import DEFAULT_TRANSFORM, UTM33

REPO = Path(__file__).resolve().parents[1]

HEAD = """
import json, logging, sys, warnings
import matplotlib
matplotlib.use("svg")
import torch
torch.set_num_threads(3)
import urllib3  # noqa: F401 - its import adds a filter of its own
import dask, distributed  # a caller that uses Dask: the state after their imports is its own
from rs_deeplab.runtime import tuning

LOGGERS = ("distributed", "dask", "tornado", "asyncio")


def state():
    return {
        "malloc": tuning.malloc_tuned(),
        "threads": torch.get_num_threads(),
        "filters": [repr(f) for f in warnings.filters],
        "levels": {n: logging.getLogger(n).level for n in LOGGERS},
        "handlers": {n: [h.level for h in logging.getLogger(n).handlers] for n in LOGGERS},
        "backend": matplotlib.get_backend(),
        "pyplot": "matplotlib.pyplot" in sys.modules,
    }
"""


def probe(tmp_path: Path, body: str, *args: str) -> dict[str, Any]:
    """Run HEAD + body (which prints one JSON line) as a script; return what it printed."""
    script = tmp_path / "probe.py"
    script.write_text(HEAD + body)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RS_DEEPLAB_NO_PROGRESS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def assert_unchanged(result: dict[str, Any]) -> None:
    before, after = result["before"], result["after"]
    assert before["malloc"] is False and before["threads"] == 3 and before["backend"] == "svg"  # the probe's own
    for key in before:
        assert after[key] == before[key], key


def write_scene(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-band 200 × 150 scene and its ISPRS colour labels, uncompressed."""
    rng = np.random.default_rng(5)
    height, width = 200, 150
    image = write_geotiff(
        tmp_path / "scene.tif",
        rng.integers(0, 255, (2, height, width), dtype=np.uint8),
        crs=UTM33,
        transform=DEFAULT_TRANSFORM,
        compress=None,
    )
    ids = rng.integers(0, 6, (height, width)).astype(np.uint8)
    label = write_geotiff(
        tmp_path / "scene_label.tif",
        SCHEMES["potsdam"].encode_colours(ids),
        crs=UTM33,
        transform=DEFAULT_TRANSFORM,
        compress=None,
    )
    return image, label


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    return write_scene(tmp_path)


TILE = """
from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes
import pyogrio, geopandas  # the index writer's imports (their import-time filters are theirs, not the tiler's)

if __name__ == "__main__":
    image, label, processes = sys.argv[1], sys.argv[2], sys.argv[3] == "processes"
    before = state()
    summary = tile_scenes([SceneSpec(image, label, "train")], "tiles", size=64, stride=48, scheme="potsdam",
                          workers=2, processes=processes)
    after = state()
    print(json.dumps({"before": before, "after": after, "cluster": summary.cluster, "crops": summary.crops}))
"""


@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_a_tiling_run_on_a_local_cluster_leaves_the_process_alone(
    kind: str, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    result = probe(tmp_path, TILE, str(scene[0]), str(scene[1]), kind)
    assert result["cluster"] == f"Dask local cluster (2 {kind})" and result["crops"] > 0
    assert_unchanged(result)


PREDICT = """
from distributed import Client, LocalCluster
from rs_deeplab.inference import predict_scene
from rs_deeplab.inference.predicting.scene import SceneResult


def worker_state():
    from rs_deeplab.runtime import tuning
    import torch
    return [tuning.malloc_tuned(), torch.get_num_threads()]


def predict(scene, processes):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 3, 1))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=processes, dashboard_address=None) as cluster, \\
            Client(cluster, set_as_default=False) as client:
        before = state()
        result = predict_scene(model, scene, f"out_{processes}.tif", size=64, stride=40, batch_size=2,
                               mean=[120.0] * 2, std=[60.0] * 2, device="cpu", scheduler=cluster.scheduler_address)
        after = state()
        workers = list(client.run(worker_state).values())
    return {"before": before, "after": after, "runner": result.runner, "workers": workers}
"""

PLOTS = """
import numpy as np
from pathlib import Path
from rs_deeplab.training.runlog import plot_confusion, plot_curves


def plots():
    Path("metrics.csv").write_text(
        "iteration,split,loss,lr,mIoU,mF1,OA\\n1,train,1.0,0.01,,,\\n2,train,0.8,0.009,,,\\n2,val,,,0.4,0.5,0.6\\n"
    )
    before = state()
    plot_curves(Path("metrics.csv"), Path("curves.png"))
    plot_confusion(np.array([[5, 1], [2, 7]]), ["a", "b"], Path("confusion.png"))
    after = state()
    sizes = [Path(p).read_bytes()[:8].hex() for p in ("curves.png", "confusion.png")]
    return {"before": before, "after": after, "png": sizes}
"""

PREDICT_AND_PLOT = (
    PREDICT
    + PLOTS
    + """
if __name__ == "__main__":
    results = {}
    for step in sys.argv[2].split(","):
        results[step] = plots() if step == "plots" else predict(sys.argv[1], step == "processes")
    print(json.dumps(results))
"""
)
DASK_TEST = "test_a_dask_prediction_tunes_worker_processes_but_never_the_callers"
PLOTS_TEST = "test_run_log_plots_keep_the_callers_matplotlib_backend"


@pytest.fixture(scope="module")
def predicted_and_plotted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One probe process (one start-up) for the selected tests: a Dask prediction on a thread worker, one on a
    process worker, then the run-log plots; each step records the caller's state just before and just after it.

    Only the steps of tests this session runs (``-m "not slow"`` runs the plots alone, as before)."""
    names = {item.name for item in request.session.items}
    steps = [kind for kind in ("threads", "processes") if f"{DASK_TEST}[{kind}]" in names]
    steps += ["plots"] if PLOTS_TEST in names else []
    tmp_path = tmp_path_factory.mktemp("predict_and_plot")
    return probe(tmp_path, PREDICT_AND_PLOT, str(write_scene(tmp_path)[0]), ",".join(steps))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_dask_prediction_tunes_worker_processes_but_never_the_callers(
    kind: str, predicted_and_plotted: dict[str, Any]
) -> None:
    """Workers in another process are tuned by the plugin (malloc, torch threads = their own 2); the caller never."""
    result = predicted_and_plotted[kind]
    assert result["runner"].startswith("Dask scheduler ") and result["runner"].endswith("(1 workers, cpu)")
    assert_unchanged(result)
    linux = sys.platform.startswith("linux")
    if kind == "processes":
        assert result["workers"] == [[linux, 2]]
    else:  # the worker is a thread of the caller: the caller's own settings, untouched
        assert result["workers"] == [[False, 3]]


@pytest.mark.slow
def test_run_log_plots_keep_the_callers_matplotlib_backend(predicted_and_plotted: dict[str, Any]) -> None:
    result = predicted_and_plotted["plots"]
    assert result["png"] == [b"\x89PNG\r\n\x1a\n".hex()] * 2  # PNGs even though the caller's backend is svg
    assert_unchanged(result)
    assert result["after"]["pyplot"] is False  # no pyplot state (figure manager, backend choice) was created


def test_concurrent_scoped_warning_filters_leave_the_filters_as_they_were() -> None:
    """Threads silencing rasterio's warning at once (crop writers, scene readers) put back the caller's filters."""
    import threading
    import time
    import warnings

    from rs_deeplab.geo.raster import quiet_georeferencing

    before = list(warnings.filters)
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for _ in range(50):
            with quiet_georeferencing():
                time.sleep(0.0005)  # let another thread enter and leave meanwhile

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before


ALBUMENTATIONS = """
import json, os, urllib.request

asked = []
urllib.request.OpenerDirector.open = lambda self, *a, **k: asked.append(str(a[:1])) or (_ for _ in ()).throw(OSError())
import rs_deeplab.training.transforms  # noqa: F401 - imports albumentations
print(json.dumps({"env": os.environ.get("NO_ALBUMENTATIONS_UPDATE"), "asked": asked}))
"""


@pytest.mark.slow
def test_importing_the_transforms_neither_phones_home_nor_leaves_an_environment_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", ALBUMENTATIONS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"env": None, "asked": []}  # no PyPI request at import, and the variable was only set for it
