"""Many scenes as one job (``predict_scenes``): each output as the scene alone gives it, one task stream on Dask."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.predicting.scene import SceneTask, predict_scene, predict_scenes

TRANSFORM = rasterio.Affine(0.5, 0, 368_000, 0, -0.5, 5_808_000)
KW = {"size": 64, "stride": 48, "batch_size": 2, "mean": [100.0, 100.0], "std": [50.0, 50.0]}


class SlowOracle(torch.nn.Module):
    """Pointwise class scores from the pixel values (band 1 against band 2), with a pause per call so tasks last."""

    def __init__(self, pause: float = 0.0) -> None:
        super().__init__()
        self.pause = pause
        self.scale = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.3]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pause:
            time.sleep(self.pause)
        d = (x[:, :1] - x[:, 1:2]) * 4
        return d * self.scale.view(1, 3, 1, 1)


def scenes(folder: Path, shapes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(5)
    out = []
    for i, (h, w) in enumerate(shapes):
        image = rng.integers(0, 255, (2, h, w)).astype(np.uint8)
        out.append(write_geotiff(folder / f"s{i}.tif", image, crs="EPSG:32633", transform=TRANSFORM))
    return out


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_one_job_writes_what_each_scene_alone_writes(tmp_path: Path) -> None:
    paths = scenes(tmp_path, [(70, 90), (130, 64), (40, 40)])
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
    tasks = [SceneTask(p, tmp_path / f"job_{p.stem}.tif", tmp_path / f"job_{p.stem}_probs.tif") for p in paths]
    tasks.append(SceneTask(paths[0], tmp_path / "job_fine.tif", gsd=0.25))  # read at another GSD, in the same job
    results = predict_scenes(model, tasks, **KW)  # type: ignore[arg-type]
    assert [r.labels for r in results] == [t.out for t in tasks]
    for task in tasks:
        alone = tmp_path / f"alone_{Path(task.out).name}"
        predict_scene(
            model, task.scene, alone, probs_path=None if task.probs is None else tmp_path / "p.tif", gsd=task.gsd, **KW
        )  # type: ignore[arg-type]
        np.testing.assert_array_equal(read(Path(task.out)), read(alone))
        if task.probs is not None:
            np.testing.assert_array_equal(read(Path(task.probs)), read(tmp_path / "p.tif"))
    assert results[3].gsd == 0.25 and results[0].gsd is None
    # a second run finds every scene complete and computes nothing
    again = predict_scenes(model, tasks, **KW)  # type: ignore[arg-type]
    assert [r.runner for r in again] == ["earlier run"] * 4 and sum(r.windows for r in again) == 0


def test_one_job_resumes_only_what_was_not_written(tmp_path: Path) -> None:
    paths = scenes(tmp_path, [(60, 60), (600, 70), (50, 80)])
    model = SlowOracle()
    tasks = [SceneTask(p, tmp_path / f"out_{p.stem}.tif") for p in paths]
    calls = {"n": 0}

    def stop_in_the_second_scene(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        calls["n"] += 1
        if calls["n"] == 20:  # scene 1: 1 window; scene 2: window rows 0-432 done, so its rows 0-255 are final
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(stop_in_the_second_scene)
    with pytest.raises(KeyboardInterrupt):
        predict_scenes(model, tasks, **{**KW, "batch_size": 1})  # type: ignore[arg-type]
    handle.remove()
    assert Path(tasks[0].out).exists() and not Path(tasks[1].out).exists() and not Path(tasks[2].out).exists()
    calls["n"] = 0
    counting = model.register_forward_pre_hook(lambda m, a: calls.update(n=calls["n"] + 1))
    names = ["a", "b", "c"]  # given: no probe of the class count
    results = predict_scenes(model, tasks, class_names=names, **{**KW, "batch_size": 1})  # type: ignore[arg-type]
    counting.remove()
    assert results[0].runner == "earlier run" and results[0].windows == 0
    assert (results[1].resumed_at, results[2].resumed_at) == (256, 0)
    # only the window rows that cover rows 256-599 of scene 2 (offsets 240..536: 8 rows of 2) and all of scene 3
    assert calls["n"] == results[1].windows + results[2].windows == 8 * 2 + 2
    for task in tasks:
        predict_scene(model, task.scene, tmp_path / "alone.tif", resume=False, class_names=names, **KW)  # type: ignore[arg-type]
        np.testing.assert_array_equal(read(Path(task.out)), read(tmp_path / "alone.tif"))


def test_one_progress_bar_counts_windows_and_scenes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rs_deeplab.cli import console as cli

    monkeypatch.setattr(cli, "progress_enabled", lambda quiet=False: not quiet)  # as on a terminal
    paths = scenes(tmp_path, [(60, 60), (100, 70), (50, 80)])
    tasks = [SceneTask(p, tmp_path / f"bar_{p.stem}.tif") for p in paths]
    predict_scenes(SlowOracle(), tasks, quiet=False, **KW)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    # 1 + 2×2 + 1×2 windows of 64 every 48; one bar for the job, ending at every window and every scene done
    assert err.count("inference:") >= 1 and "7/7" in err and "3/3 scenes" in err and "window/s" in err, err
    predict_scenes(SlowOracle(), tasks, quiet=False, **KW)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "3/3 scenes" in err and "inference: 0window" in err, err  # all done by the first run: nothing to count
    predict_scenes(SlowOracle(), tasks, quiet=True, **{**KW, "resume": False})  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "inference:" not in err and "window/s" not in err, err  # no bar


@pytest.mark.slow
def test_dask_job_keeps_both_workers_busy_across_scenes(tmp_path: Path, dask_address: str) -> None:
    from distributed import Client, get_task_stream

    paths = scenes(tmp_path, [(64, 64)] * 6)  # one task each: run one after another, one worker would idle
    model = SlowOracle(pause=0.25)  # each task lasts long enough for the other worker to start one meanwhile
    tasks = [SceneTask(p, tmp_path / f"dask_{p.stem}.tif") for p in paths]
    with Client(dask_address, set_as_default=False) as client, get_task_stream(client) as stream:
        results = predict_scenes(model, tasks, scheduler=dask_address, **{**KW, "batch_size": 1})  # type: ignore[arg-type]
    spans = []
    for record in stream.data:
        if str(record["key"]).startswith("predict_rows"):
            compute = [s for s in record["startstops"] if s["action"] == "compute"]
            spans.append((compute[0]["start"], compute[0]["stop"], record["worker"]))
    assert len(spans) == len(paths)
    overlapping = sum(1 for a in spans for b in spans if a[2] != b[2] and a[0] < b[1] and b[0] < a[1]) // 2
    # scenes' tasks ran side by side on the two workers (one scene after another would never overlap); how many
    # pairs overlap depends on when the second worker takes its first task (1 in a full suite run, 2-3 alone)
    assert overlapping >= 1, spans
    assert all(r.runner.startswith("Dask scheduler") for r in results)
    for task in tasks:
        predict_scene(model, task.scene, tmp_path / "local.tif", resume=False, **KW)  # type: ignore[arg-type]
        np.testing.assert_array_equal(read(Path(task.out)), read(tmp_path / "local.tif"))
