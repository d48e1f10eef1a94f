"""How tiling work is cut: workers only where they pay, tasks as strips of window rows (one per PNG scene)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.cluster import default_workers
from rs_deeplab.tiling.crops import CropSettings, SceneJob
from rs_deeplab.tiling.manifest import MANIFEST_NAME, build_manifest, check_manifest, prepare_output, read_manifest
from rs_deeplab.tiling.plan import PARALLEL_MIN_BYTES, choose_workers, plan_tasks


def test_default_workers_only_start_when_the_job_pays_for_them() -> None:
    assert choose_workers(None, None, PARALLEL_MIN_BYTES - 1) == 1
    assert choose_workers(None, None, PARALLEL_MIN_BYTES) == default_workers()
    assert choose_workers(3, None, 10) == 3  # asked for: always honoured
    assert choose_workers(None, "tcp://127.0.0.1:8786", 10) is None  # an existing cluster decides


def test_tasks_are_strips_of_rows_for_geotiff_and_whole_scenes_for_png() -> None:
    settings = CropSettings("out", 64, 32, 0.0, None, None)
    jobs = [SceneJob("tif", "a.tif", None, "train", 640, 100), SceneJob("png", "b.png", None, "train", 640, 100)]
    rows = {j.key: [r for r in range(0, 577, 32)] for j in jobs}
    tasks = plan_tasks(jobs, rows, {"tif": True, "png": False}, settings, workers=2)
    tif = [t.rows for t in tasks if t.job.key == "tif"]
    png = [t.rows for t in tasks if t.job.key == "png"]
    assert png == [tuple(rows["png"])]
    assert len(tif) > 1 and [r for chunk in tif for r in chunk] == rows["tif"]
    assert all(t.crops == len(t.rows) * 3 for t in tasks)


def test_a_run_records_its_settings_and_refuses_another_runs_folder(tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    job = SceneJob("a", "a.tif", None, "train", 640, 100)
    first = build_manifest(CropSettings(str(out), 64, 32, 0.0, None, None), [job])
    assert read_manifest(out) is None
    prepare_output(out, first, labelled=False)
    assert json.loads((out / MANIFEST_NAME).read_text()) == first == read_manifest(out)
    assert (out / "images").is_dir() and not (out / "labels").exists()
    check_manifest(out, first)  # the same run again: resumes
    other = build_manifest(CropSettings(str(out), 64, 16, 0.0, None, None), [job])
    with pytest.raises(InputError, match=r"different tiling run \(stride differ\).*--append"):
        check_manifest(out, other)
