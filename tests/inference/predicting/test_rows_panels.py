"""Wide scenes in column panels (issue 25.5): the same output as whole-width rows, resumable, memory flat in width."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rs_deeplab.inference import predict_scene
from rs_deeplab.inference.predicting.rows import RowJob
from rs_deeplab.inference.reading.reader import scene_info
from tests.conftest import DEFAULT_TRANSFORM, UTM33, write_geotiff

NAMES = list("abcde")
KW = {"size": 64, "stride": 24, "batch_size": 3, "device": "cpu", "class_names": NAMES}
WHOLE = 10**9
"""A panel width no scene reaches: one panel of the whole width (the design before panels)."""


class Counted(torch.nn.Module):
    """A small random CNN (5 classes) that counts the windows it runs and can stop the run after ``stop`` batches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 3, padding=1)
        )
        self.windows, self.batches, self.stop = 0, 0, -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        if self.batches == self.stop:
            raise KeyboardInterrupt
        self.windows += x.shape[0]
        return self.net(x)


def holed_scene(path: Path, height: int = 700, width: int = 1300) -> Path:
    """Noise with nodata (0) holes that cross panel seams, a nodata strip that leaves a panel (of 256 columns) with
    no window, and a nodata right edge that leaves the last panel with none."""
    image = np.random.default_rng(3).integers(1, 255, (3, height, width)).astype(np.uint8)
    image[:, 100:300, 200:800] = 0
    image[:, 420:470, :] = 0
    image[:, :, 440:840] = 0
    image[:, :, width - 320 :] = 0
    return write_geotiff(path, image, crs=UTM33, transform=DEFAULT_TRANSFORM, nodata=0)


def read_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_panels_and_tiers_give_the_whole_width_output_bit_for_bit_and_resume(tmp_path: Path) -> None:
    scene = holed_scene(tmp_path / "scene.tif")
    whole, panelled = Counted(), Counted()
    a = predict_scene(whole, scene, tmp_path / "a.tif", probs_path=tmp_path / "ap.tif", panel_columns=WHOLE, **KW)
    b = predict_scene(panelled, scene, tmp_path / "b.tif", probs_path=tmp_path / "bp.tif", panel_columns=256, **KW)
    job = RowJob(
        info=scene_info(scene), size=64, stride=24, batch_size=3, bands=(1, 2, 3), num_classes=5, panel_cols=256
    )
    assert len(job.panels()) == 5 and job.tier_rows() < 700  # panels, and two tiers of rows: both seams are crossed
    assert panelled.windows > whole.windows  # windows across seams ran once per panel (and the tier's top row)
    assert (b.windows, b.total_windows) == (a.windows, a.total_windows) and a.windows == whole.windows
    np.testing.assert_array_equal(read_all(tmp_path / "b.tif"), read_all(tmp_path / "a.tif"))
    np.testing.assert_array_equal(read_all(tmp_path / "bp.tif"), read_all(tmp_path / "ap.tif"))
    labels = read_all(tmp_path / "a.tif")[0]
    assert (labels[:, 440:840] == 255).all() and (labels[:, -320:] == 255).all()
    assert (labels[150, 300:440] == 255).all() and len(np.unique(labels)) == 6  # holes are nodata; 5 classes seen

    # interrupted in the second tier (its last ~200 batches), the same command resumes there, to the same rasters
    resumable = {**KW, "resume": True, "probs_path": tmp_path / "cp.tif", "panel_columns": 256}
    panelled.batches, panelled.stop = 0, panelled.batches - 60
    with pytest.raises(KeyboardInterrupt):
        predict_scene(panelled, scene, tmp_path / "c.tif", **resumable)  # type: ignore[arg-type]
    panelled.stop = -1
    resumed = predict_scene(panelled, scene, tmp_path / "c.tif", **resumable)  # type: ignore[arg-type]
    assert resumed.resumed_at == 512
    np.testing.assert_array_equal(read_all(tmp_path / "c.tif"), read_all(tmp_path / "a.tif"))
    np.testing.assert_array_equal(read_all(tmp_path / "cp.tif"), read_all(tmp_path / "ap.tif"))


CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from rs_deeplab.inference import predict_scene
    from rs_deeplab.runtime.tuning import tune_malloc
    tune_malloc()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 1))
    scene, out, panels = sys.argv[1], sys.argv[2], int(sys.argv[3])
    predict_scene(model.eval(), scene, out, size=512, stride=256, batch_size=4, device="cpu", resume=False,
                  panel_columns=panels)
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child of a big pytest would report its parent's size
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    print(json.dumps(int(status["VmHWM"].split()[0]) / 1024))
    """
)


def peak_mib(runs: dict[str, tuple[Path, Path, int]]) -> dict[str, float]:
    """Peak RSS (MiB) of each ``(scene, output, panel columns)`` run, each in its own process, run side by side."""
    root = Path(__file__).parents[3]
    children = {
        name: subprocess.Popen(
            [sys.executable, "-c", CHILD, *map(str, run)], stdout=subprocess.PIPE, text=True, cwd=root
        )
        for name, run in runs.items()
    }
    peaks = {}
    for name, child in children.items():
        out, _ = child.communicate()
        assert child.returncode == 0, name
        peaks[name] = float(json.loads(out.strip().splitlines()[-1]))
    return peaks


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_width(tmp_path: Path) -> None:
    """Peak RSS of a 4× wider scene: flat with panels, while whole-width rows grow (by ~230 MiB of strips, part of
    which may fit in heap the imports freed). Each run in a fresh process; ``bench/width_memory_bench.py``
    measures scenes up to 200,000 columns."""
    scenes = {}
    for width in (4096, 16384):
        image = np.random.default_rng(width).integers(0, 255, (4, 512, width)).astype(np.uint8)
        scenes[width] = write_geotiff(tmp_path / f"s{width}.tif", image, crs=UTM33, transform=DEFAULT_TRANSFORM)
        del image
    peaks = peak_mib(
        {
            "narrow": (scenes[4096], tmp_path / "n.tif", 1024),
            "wide": (scenes[16384], tmp_path / "w.tif", 1024),
            "wide, whole rows": (scenes[16384], tmp_path / "r.tif", WHOLE),
        }
    )
    grown_whole, grown_panels = peaks["wide, whole rows"] - peaks["narrow"], peaks["wide"] - peaks["narrow"]
    assert grown_whole > 150, peaks  # the measurement sees the strips of whole-width rows (~300 MiB)
    assert grown_panels < grown_whole / 3, peaks  # runs differ by ±30 MiB (threads' timing)
    np.testing.assert_array_equal(read_all(tmp_path / "w.tif"), read_all(tmp_path / "r.tif"))
