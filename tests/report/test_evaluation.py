"""The evaluation page evaluate.py writes, in headless chromium: offline, its numbers are evaluate.py's, the map's
right/wrong and TP/FP/FN pixels are the confusion matrix's counts, and a page path that cannot be written stops
evaluate.py with one line before anything is scored. The same for checkpoint mode's page (a tiny trained checkpoint
scored on its validation split): its table is ``val_scores.json``/``.md``'s, and its crop grid's right / wrong
pixels are where its truth and prediction crops differ."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

from pipelines import evaluate as evaluate_cli
from rs_deeplab.geo.raster import write_geotiff
from tests import trainkit
from tests.report.conftest import Visit

pytestmark = pytest.mark.slow
WIDTH, HEIGHT = 240, 160
NAMES = "ground,building,tree"
trained = trainkit.trained  # the module-scoped tiny checkpoint (a fixture): 4 iterations, 9 validation crops


def _scene(folder: Path) -> tuple[Path, Path]:
    truth = np.zeros((HEIGHT, WIDTH), np.uint8)
    truth[20:90, 30:130] = 1
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    truth[(rows - 110) ** 2 + (cols - 170) ** 2 < 35**2] = 2
    truth[:, 230:] = 255  # ignored
    pred = np.roll(truth, (6, 9), axis=(0, 1))  # shifted: right and wrong pixels of every class
    pred[pred == 255] = 0
    pred[140:, :40] = 255  # not predicted
    pred[100:120, 60:90] = 2
    transform = from_origin(366_000.0, 5_811_000.0, 0.5, 0.5)
    p = write_geotiff(folder / "pred.tif", pred[None], crs="EPSG:32633", transform=transform, nodata=255)
    t = write_geotiff(folder / "truth.tif", truth[None], crs="EPSG:32633", transform=transform, nodata=255)
    return p, t


def evaluate_scene(pred: Path, truth: Path, out: Path, *options: str) -> int:
    """``evaluate.py --pred ... --truth ... --class-names ... --out out`` with more ``options``."""
    return evaluate_cli.main(
        ["--pred", str(pred), "--truth", str(truth), "--class-names", NAMES, "--out", str(out), *options]
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("evalpage")
    pred, truth = _scene(folder)
    code = evaluate_scene(pred, truth, folder / "reports", "--block-size", "64", "-q")
    assert code == 0
    report = json.loads((folder / "reports" / "scene_scores.json").read_text())
    return folder / "reports.html", report


@pytest.fixture(scope="module")
def visit(evaluated: tuple[Path, dict], open_page: Callable[[Path], Visit]) -> Visit:
    result = open_page(evaluated[0])
    result.page.evaluate(
        "document.getElementById('opacity').value = 100; "
        "document.getElementById('opacity').dispatchEvent(new Event('input'))"
    )
    result.page.evaluate(
        "() => { const b = RS.scene.grid.bounds; "
        "RS.map.setView([(b[1] + b[3]) / 2, (b[0] + b[2]) / 2], RS.scene.maxNativeZoom, "
        "{animate: false}); }"
    )
    result.wait_for_tiles()
    return result


def test_opens_offline_without_errors(visit: Visit, evaluated: tuple[Path, dict]) -> None:
    assert visit.errors == []
    assert visit.outside() == []
    assert any(u.endswith(".png") for u in visit.requests)
    assert sorted(p.name for p in (evaluated[0].parent / "reports").iterdir()) == [
        "scene_scores.json",
        "scene_scores.md",
    ]


def test_numbers_are_evaluate_outputs(visit: Visit, evaluated: tuple[Path, dict]) -> None:
    scores = evaluated[1]["total"]["scores"]
    cm = np.array(scores["confusion_matrix"])
    names = NAMES.split(",")
    shown = visit.page.evaluate(
        "Array.from(document.querySelectorAll('#scores tbody tr'), tr => Object.fromEntries("
        "Array.from(tr.querySelectorAll('td[data-value]'), td => [td.dataset.key, "
        "+td.dataset.value])))"
    )
    assert len(shown) == len(names)
    for i, (name, row) in enumerate(zip(names, shown, strict=True)):
        assert row["iou"] == pytest.approx(scores["IoU"][name], abs=1e-12)
        assert row["f1"] == pytest.approx(scores["F1"][name], abs=1e-12)
        assert row["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum(), abs=1e-12)
        assert row["recall"] == pytest.approx(cm[i, i] / cm[i, :].sum(), abs=1e-12)
    assert float(visit.page.get_attribute("#scores td[data-key=mIoU]", "data-value") or 0) == pytest.approx(
        scores["mIoU"], abs=1e-12
    )
    counts = visit.page.evaluate(
        "Array.from(document.querySelectorAll('#confusion td[data-count]'), td => +td.dataset.count)"
    )
    assert counts == cm.ravel().tolist()
    assert visit.page.locator("#confusion th.truth").all_inner_texts() == names


def _colour_counts(visit: Visit) -> dict[str, int]:
    image = visit.screenshot().astype(int)
    colours = visit.page.evaluate("RS.colours")
    out = {}
    for key, rgb in colours.items():
        out[key] = int((np.abs(image - np.array(rgb)).max(axis=2) <= 3).sum())
    return out


def test_map_shows_right_and_wrong_pixels(visit: Visit, evaluated: tuple[Path, dict]) -> None:
    cm = np.array(evaluated[1]["total"]["scores"]["confusion_matrix"])
    visit.page.select_option("#error-class", "-1")
    visit.page.wait_for_timeout(100)
    counts = _colour_counts(visit)
    assert counts["right"] == np.trace(cm) and counts["wrong"] == cm.sum() - np.trace(cm)


@pytest.mark.parametrize("klass", [1, 2])
def test_map_shows_one_class_true_false_positives_and_negatives(
    visit: Visit, evaluated: tuple[Path, dict], klass: int
) -> None:
    cm = np.array(evaluated[1]["total"]["scores"]["confusion_matrix"])
    visit.page.select_option("#error-class", str(klass))
    visit.page.wait_for_timeout(100)
    counts = _colour_counts(visit)
    tp = cm[klass, klass]
    assert (counts["tp"], counts["fp"], counts["fn"]) == (tp, cm[:, klass].sum() - tp, cm[klass].sum() - tp)
    assert "false negative" in visit.page.locator("#error-legend").inner_text()


def test_unwritable_page_is_one_line_before_scoring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, truth = _scene(tmp_path)
    (tmp_path / "reports.html").mkdir()
    code = evaluate_scene(pred, truth, tmp_path / "reports", "-q")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "reports.html" in err[0] and "--no-report" in err[0]
    assert not (tmp_path / "reports").exists()  # nothing scored, nothing written
    code = evaluate_scene(pred, truth, tmp_path / "reports", "-q", "--no-report")
    assert code == 0 and (tmp_path / "reports" / "scene_scores.json").exists()
    assert not list(tmp_path.glob("reports_files*")) and not list(tmp_path.glob(".reports*"))


@pytest.fixture(scope="module")
def checkpoint_evaluated(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """``evaluate.py best.pt --out <folder>/ckeval``: the page ``ckeval.html``, ``val_scores.json`` and ``.md``."""
    folder = tmp_path_factory.mktemp("ckpage")
    assert evaluate_cli.main([str(trained), "--out", str(folder / "ckeval"), "--device", "cpu", "-q"]) == 0
    report = json.loads((folder / "ckeval" / "val_scores.json").read_text())
    return folder / "ckeval.html", report, (folder / "ckeval" / "val_scores.md").read_text()


@pytest.fixture(scope="module")
def checkpoint_visit(checkpoint_evaluated: tuple[Path, dict, str], open_page: Callable[[Path], Visit]) -> Visit:
    result = open_page(checkpoint_evaluated[0])
    result.page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return result


Evaluated = tuple[Path, dict, str]


def test_checkpoint_page_opens_offline_without_errors(checkpoint_visit: Visit, checkpoint_evaluated: Evaluated) -> None:
    page = checkpoint_evaluated[0]
    assert checkpoint_visit.errors == []
    assert checkpoint_visit.outside() == []
    assert sorted(p.name for p in (page.parent / "ckeval").iterdir()) == ["val_scores.json", "val_scores.md"]
    widths = checkpoint_visit.page.evaluate("Array.from(document.querySelectorAll('#crops img'), i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    assert sum(u.endswith(".png") for u in checkpoint_visit.requests) == len(widths)


def test_checkpoint_page_numbers_are_the_scores_evaluate_wrote(
    checkpoint_visit: Visit, checkpoint_evaluated: Evaluated
) -> None:
    _, report, md = checkpoint_evaluated
    cm = np.array(report["confusion_matrix"])
    names = [k.removeprefix("IoU/") for k in report if k.startswith("IoU/")]
    assert len(names) == cm.shape[0] == 6
    shown = checkpoint_visit.page.evaluate(
        "Array.from(document.querySelectorAll('#scores tbody tr'), tr => [tr.querySelector('th').textContent, "
        "tr.querySelector('td[data-key=iou]').dataset.value, tr.querySelector('td[data-key=iou]').textContent])"
    )
    md_iou = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in md.splitlines()[2 : 2 + len(names)]}
    assert [name for name, _, _ in shown] == names
    for name, value, text in shown:
        iou = report[f"IoU/{name}"]
        if np.isnan(iou):  # a class absent from the split and never predicted: no IoU
            assert (value, text, md_iou[name]) == ("", "n/a", "nan")
        else:
            assert float(value) == pytest.approx(iou, abs=1e-12) and text == md_iou[name]
    miou = checkpoint_visit.page.get_attribute("#scores td[data-key=mIoU]", "data-value")
    assert float(miou or "nan") == pytest.approx(report["mIoU"], abs=1e-12)
    counts = checkpoint_visit.page.evaluate(
        "Array.from(document.querySelectorAll('#confusion td[data-count]'), td => +td.dataset.count)"
    )
    assert counts == cm.ravel().tolist()
    assert checkpoint_visit.page.locator("#confusion th.truth").all_inner_texts() == names
    assert checkpoint_visit.page.locator("#confusion th.pred").all_inner_texts() == names


def test_checkpoint_page_shows_the_model(checkpoint_visit: Visit, trained: Path) -> None:
    script = "Array.from(document.querySelectorAll('#model tr'), tr => [tr.cells[0].innerText, tr.cells[1].innerText])"
    rows = dict(checkpoint_visit.page.evaluate(script))
    assert rows["architecture"] == "deeplabv3plus resnet18, output stride 16"
    assert rows["classes"] == "6: impervious_surface, building, low_vegetation, tree, car, clutter"
    assert rows["checkpoint"] == str(trained.resolve()) and rows["split"] == "val"
    assert rows["images"] == "9"  # train_tiny's 9 validation crops
    assert checkpoint_visit.page.inner_text("#split") == "val"


def test_checkpoint_page_crops_show_right_and_wrong(checkpoint_visit: Visit) -> None:
    heads = checkpoint_visit.page.locator("#crops thead th").all_inner_texts()
    assert heads == ["crop", "image", "truth", "prediction", "right / wrong"]
    sources = checkpoint_visit.page.evaluate(
        "Array.from(document.querySelectorAll('#crops tbody tr'), "
        "tr => Array.from(tr.querySelectorAll('img'), i => i.src))"
    )
    assert len(sources) == 6 and all(len(row) == 4 for row in sources)  # 6 fixed crops of the 9 validation images
    wrong_somewhere = False
    for row in sources:
        truth, pred, errors = (np.asarray(Image.open(Path(url.removeprefix("file://")))).astype(int) for url in row[1:])
        scored = truth.any(axis=2)  # ignore (255) is black; no class of the scheme is black
        differ = (truth != pred).any(axis=2)
        assert (errors[scored & ~differ] == [0, 170, 0]).all() and (errors[scored & differ] == [230, 0, 0]).all()
        assert (errors[~scored] == 0).all()
        wrong_somewhere |= bool((scored & differ).any())
    assert wrong_somewhere  # a 4-iteration model is wrong somewhere: the column is not all green


def test_checkpoint_unwritable_page_is_one_line_before_scoring(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ev.html").mkdir()
    code = evaluate_cli.main([str(trained), "--out", str(tmp_path / "ev"), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "ev.html" in err[0] and "--no-report" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.html"]  # nothing scored, nothing written
    code = evaluate_cli.main([str(trained), "--out", str(tmp_path / "plain"), "--device", "cpu", "-q", "--no-report"])
    assert code == 0 and "evaluation page" not in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["val_scores.json", "val_scores.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.html", "plain"]  # no plain.html, no plain_files


def test_checkpoint_options_still_refuse_scene_options(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate_cli.main([str(trained), "--scheme", "potsdam", "--no-report"])
    assert exc.value.code == 2
    assert f"pass either CHECKPOINT or scene options, not both (got {trained} and --scheme)" in capsys.readouterr().err
