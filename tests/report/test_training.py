"""The training page of a real (tiny) run in headless chromium: offline, one point per evaluation, reloads, faults."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import train as train_cli
from rs_deeplab.cli.errors import InputError, TrainingError
from rs_deeplab.config.schema import load_config
from rs_deeplab.report import training as training_page
from rs_deeplab.report.training import Crop, TrainingView, read_metrics, write_training_page
from tests import trainkit
from tests.report.conftest import Visit

pytestmark = pytest.mark.slow
NAMES = ["a", "b", "c"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real run of 6 iterations, evaluated every 2 (3 evaluations), logged every iteration, on the CPU."""
    from rs_deeplab.training.experiment import train_experiment

    folder = tmp_path_factory.mktemp("trainpage")
    tiles = trainkit.make_tiles(folder)
    train = {"eval_every": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu"}
    cfg = trainkit.write_config(
        folder / "exp.yaml", tiles, folder / "runs" / "tiny", schedule={"iterations": 6}, train=train
    )
    result = train_experiment(load_config(cfg))
    return result.run_dir, cfg


@pytest.fixture(scope="module")
def visit(run: tuple[Path, Path], open_page: Callable[[Path], Visit]) -> Visit:
    return open_page(run[0] / "report.html")


def test_opens_offline_without_errors(visit: Visit) -> None:
    assert visit.errors == []
    assert visit.outside() == []
    assert len(visit.requests) > 3  # the page, its styles, scripts and crop images


def test_one_point_per_evaluation(visit: Visit, run: tuple[Path, Path]) -> None:
    val = [r for r in read_metrics(run[0] / "metrics.csv") if r["split"] == "val"]
    assert len(val) == 3
    points = visit.page.evaluate(
        "Array.from(document.querySelectorAll('svg#miou circle.pt'), c => [+c.dataset.x, +c.dataset.y])"
    )
    assert points == [[float(r["iteration"]), pytest.approx(float(r["mIoU"]))] for r in val]
    for name in trainkit.SCHEMES["potsdam"].classes:
        expected = [float(r["iteration"]) for r in val if np.isfinite(float(r[f"IoU/{name}"]))]
        selector = f"svg#iou circle.pt[data-series='{name}']"
        drawn = visit.page.evaluate(f'Array.from(document.querySelectorAll("{selector}"), c => +c.dataset.x)')
        assert drawn == expected
    train = [r for r in read_metrics(run[0] / "metrics.csv") if r["split"] == "train"]
    drawn_loss = visit.page.evaluate("document.querySelector('svg#loss polyline').getAttribute('points').split(' ')")
    assert len(drawn_loss) == len(train) == 6


def test_status_crops_matrix_runtime(visit: Visit, run: tuple[Path, Path]) -> None:
    page = visit.page
    assert page.get_attribute("#status", "data-status") == "finished"
    assert page.evaluate("RS.reloading") is False
    crops = page.evaluate("Array.from(document.querySelectorAll('#crops img'), i => i.complete && i.naturalWidth)")
    assert len(crops) == 3 * 6 and all(w > 0 for w in crops)  # 9 validation crops: 6 shown, image/truth/prediction
    classes = trainkit.SCHEMES["potsdam"].classes
    assert page.locator("#confusion th.truth").all_inner_texts() == list(classes)
    runtime = page.locator("#runtime").inner_text()
    assert "device" in runtime and "cpu" in runtime and "images/s" in runtime
    assert "schedule:" in (page.locator("#config").text_content() or "")


def _view(status: str, **kwargs: Any) -> TrainingView:
    val = {"iteration": "2", "split": "val", "mIoU": "0.4", "IoU/a": "0.5", "IoU/b": "nan", "IoU/c": "0.3"}
    rows = [{"iteration": "1", "split": "train", "loss": "1.5", "lr": "0.01"}, val]
    crop = Crop("x", np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8), None)
    return TrainingView("run", status, rows, NAMES, COLOURS, np.eye(3, dtype=np.int64), [crop], **kwargs)


def test_reloads_while_running_and_stops_when_the_run_ended(tmp_path: Path, open_page: Callable[[Path], Visit]) -> None:
    page = tmp_path / "report.html"
    write_training_page(page, _view("running", refresh=1.0))
    visit = open_page(page)
    assert visit.page.evaluate("RS.reloading") is True
    loads: list[float] = []
    visit.page.on("load", lambda _: loads.append(time.monotonic()))
    write_training_page(page, _view("finished", refresh=1.0))  # the run ends: the next reload is the last
    deadline = time.monotonic() + 10
    status = None
    # the new page's scripts may have run before its load event arrives here: wait for both
    while time.monotonic() < deadline and not (status == "finished" and loads):
        visit.page.wait_for_timeout(200)
        try:
            status = visit.page.evaluate("window.RS && RS.ready && RS_RUN.status")
        except Exception:  # the page is reloading
            continue
    assert status == "finished" and loads
    settled = len(loads)
    visit.page.wait_for_timeout(2500)
    assert len(loads) == settled and visit.page.evaluate("RS.reloading") is False
    assert visit.errors == [] and visit.outside() == []


def test_a_killed_run_stops_reloading(tmp_path: Path, open_page: Callable[[Path], Visit]) -> None:
    page = tmp_path / "report.html"
    write_training_page(page, _view("running", written=time.time() - 7200, stale_after=3600))
    visit = open_page(page)
    assert visit.page.evaluate("RS.reloading") is False
    assert "probably stopped" in visit.page.locator("#status").inner_text()


def test_nan_point_breaks_the_line_and_warnings_show(tmp_path: Path, open_page: Callable[[Path], Visit]) -> None:
    page = tmp_path / "report.html"
    write_training_page(page, _view("stopped", warnings=["training stopped: loss is not finite"]))
    visit = open_page(page)
    assert visit.page.locator("svg#iou circle.pt[data-series='b']").count() == 0  # IoU nan: no point
    assert visit.page.locator("svg#iou circle.pt[data-series='a']").count() == 1
    assert "loss is not finite" in visit.page.locator("#warnings").inner_text()
    assert visit.errors == []


def _run_page(run: tuple[Path, Path], tmp_path: Path, block: bool = False) -> Any:
    from rs_deeplab.training.experiment import build_source
    from rs_deeplab.training.run_page import RunPage
    from rs_deeplab.training.transforms import ChannelStats

    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    if block:  # report.html's name taken by a folder
        (copy / "report.html").unlink()
        (copy / "report.html").mkdir()
    cfg = load_config(run[1])
    source = build_source(cfg.data, cfg.data.val_split)
    stats = ChannelStats((100.0,) * 4, (50.0,) * 4)
    import torch

    return RunPage(
        copy,
        class_names=source.class_names,
        colours=[(i * 40, 0, 0) for i in range(6)],
        val_source=source,
        stats=stats,
        device=torch.device("cpu"),
        amp=None,
        images_per_iteration=2,
        eval_every=2,
    )


def test_a_nan_stop_is_on_the_page(run: tuple[Path, Path], tmp_path: Path, open_page: Callable[[Path], Visit]) -> None:
    """A real run whose loss turns NaN (lr 1e12) after its first checkpoints: the page says it stopped, and why."""
    from rs_deeplab.training.experiment import train_experiment

    work = tmp_path / "nan"
    cfg = load_config(
        run[1],
        [
            f"work_dir={work}",
            "optimizer.lr=1e12",
            "schedule.iterations=8",
            "train.eval_every=1",
            "train.checkpoint_every=1",
        ],
    )
    with pytest.raises(TrainingError, match="not finite"):
        train_experiment(cfg)
    visit = open_page(work / "report.html")
    assert visit.page.get_attribute("#status", "data-status") == "stopped"
    assert "loss is not finite" in visit.page.locator("#warnings").inner_text()
    assert visit.page.evaluate("RS.reloading") is False and visit.errors == []


def test_run_folder_deleted_while_the_page_is_written(
    run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    page = _run_page(run, tmp_path)
    real = training_page.crop_grid

    def deleting(view: TrainingView, folder: Path, url: str) -> str:
        shutil.rmtree(page.run_dir)  # the user removes the run folder half-way through the write
        return real(view, folder, url)

    monkeypatch.setattr(training_page, "crop_grid", deleting)
    with caplog.at_level(logging.WARNING, logger="rs_deeplab.train"):
        assert page.write("running") is False
        assert page.write("running") is False  # still gone: no second line
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "report.html" in lines[0] and "training goes on" in lines[0]
    assert not page.run_dir.exists()


def test_page_path_taken_by_a_folder_is_one_line_before_training(
    run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    (work / "report.html").mkdir(parents=True)
    with pytest.raises(InputError, match=r"report\.html"):
        _run_page(run, tmp_path, block=True)
    code = train_cli.main([str(run[1]), f"work_dir={work}", "schedule.iterations=2", "train.device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "report.html" in err[0]
    assert not (work / "last.pt").exists() and not list(work.glob("metrics.csv"))
