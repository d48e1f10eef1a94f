"""Scene-level evaluation: block-wise confusion of prediction rasters against colour or class-id truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from pipelines import evaluate as evaluate_cli
from rs_deeplab.cli.errors import InputError
from rs_deeplab.evaluation.metrics import confusion_matrix
from rs_deeplab.evaluation.scenes import REPORT_JSON, REPORT_MD, evaluate_scenes, scene_confusion
from rs_deeplab.geo.raster import open_raster, write_geotiff
from rs_deeplab.labels.classes import ISPRS_COLOURS, SCHEMES, decode_colours
from rs_deeplab.sample.isprs import write_potsdam
from rs_deeplab.vectorize import class_names_tag
from tests.conftest import DEFAULT_TRANSFORM, RasterFactory

ROOT = Path(__file__).resolve().parents[2]
POTSDAM = SCHEMES["potsdam"]
BLACK = (0, 0, 0)


def colour_truth(ids: np.ndarray) -> np.ndarray:
    """ISPRS colour image of class ids; 255 becomes black (the eroded boundary colour)."""
    return POTSDAM.encode_colours(ids, ignore_colour=BLACK)


def random_scene(rng: np.random.Generator, shape: tuple[int, int], classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Class-id truth with ~10 % ignore and a prediction that is right ~70 % of the time, with ~5 % nodata."""
    truth = rng.integers(0, classes, shape).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.7, truth, rng.integers(0, classes, shape)).astype(np.uint8)
    truth[rng.random(shape) < 0.1] = 255
    pred[rng.random(shape) < 0.05] = 255
    return truth, pred


def test_hand_computed_confusion(make_raster: RasterFactory) -> None:
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 255], [1, 1, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [255, 2, 0, 2], [1, 2, 2, 2]], dtype=np.uint8)
    counts = scene_confusion(
        make_raster(pred, "p.tif", nodata=255), make_raster(truth, "t.tif"), num_classes=3, block_size=2
    )
    # rows = truth, columns = prediction; (1,0) nodata and (1,3) ignored
    expected = np.array([[1, 1, 0], [0, 3, 1], [1, 0, 3]])
    np.testing.assert_array_equal(counts.confusion, expected)
    assert counts.ignored_truth == 1
    assert counts.unpredicted == 1


def test_blockwise_equals_whole_array(make_raster: RasterFactory, rng: np.random.Generator) -> None:
    truth, pred = random_scene(rng, (53, 71))
    truth_path = make_raster(colour_truth(truth), "t.tif")
    pred_path = make_raster(pred, "p.tif", nodata=255)
    whole = confusion_matrix(pred, truth, 6)
    for block in (1000, 16, 7):
        counts = scene_confusion(pred_path, truth_path, num_classes=6, scheme=POTSDAM, block_size=block)
        np.testing.assert_array_equal(counts.confusion, whole)
        assert counts.ignored_truth == int((truth == 255).sum())
        assert counts.unpredicted == int(((truth != 255) & (pred == 255)).sum())


def test_black_boundary_pixels_are_ignored(make_raster: RasterFactory) -> None:
    ids = np.zeros((20, 30), dtype=np.uint8)
    ids[:, 15:] = 1
    colours = colour_truth(ids)
    colours[:, :, 13:17] = 0  # eroded boundary band, black
    colours[:, 0, 0] = (10, 20, 30)  # an unknown colour is ignored too
    pred = ids.copy()
    pred[:, 13:17] = 1 - pred[:, 13:17]  # wrong only where the truth is black
    pred[0, 0] = 1
    counts = scene_confusion(
        make_raster(pred, "p.tif"), make_raster(colours, "t.tif"), num_classes=6, scheme=POTSDAM, block_size=8
    )
    assert counts.confusion.sum() == 20 * 26 - 1
    assert counts.confusion.trace() == counts.confusion.sum()
    assert counts.ignored_truth == 20 * 4 + 1


def test_single_band_truth_decoded_by_scheme(make_raster: RasterFactory) -> None:
    masks = np.array([[0, 1, 2], [3, 7, 8]], dtype=np.uint8)  # LoveDA: 0 no-data, 1..7 classes, 8 unknown
    pred = np.array([[0, 0, 1], [2, 6, 6]], dtype=np.uint8)
    counts = scene_confusion(
        make_raster(pred, "p.tif"), make_raster(masks, "t.tif"), num_classes=7, scheme=SCHEMES["loveda"]
    )
    assert counts.confusion.trace() == 4 and counts.confusion.sum() == 4 and counts.ignored_truth == 2


def test_truth_nodata_and_prediction_nodata_other_than_255(make_raster: RasterFactory) -> None:
    truth = np.array([[0, 1, 9]], dtype=np.uint8)
    pred = np.array([[7, 1, 0]], dtype=np.uint8)
    counts = scene_confusion(make_raster(pred, "p.tif", nodata=7), make_raster(truth, "t.tif", nodata=9), num_classes=2)
    assert counts.confusion.tolist() == [[0, 0], [0, 1]]
    assert (counts.ignored_truth, counts.unpredicted) == (1, 1)


def test_several_scenes_summed_with_reports(make_raster: RasterFactory, rng: np.random.Generator) -> None:
    pairs, matrices = [], []
    for k, shape in enumerate([(40, 25), (17, 60)]):
        truth, pred = random_scene(rng, shape)
        pairs.append((make_raster(pred, f"s{k}/pred.tif"), make_raster(colour_truth(truth), f"s{k}/truth.tif")))
        matrices.append(confusion_matrix(pred, truth, 6))
    report = evaluate_scenes(pairs, scheme=POTSDAM, block_size=11, quiet=True)
    out = pairs[0][0].parent  # default: beside the (first) prediction
    on_disk = json.loads((out / REPORT_JSON).read_text())
    assert on_disk == report
    assert np.array_equal(on_disk["total"]["scores"]["confusion_matrix"], matrices[0] + matrices[1])
    for scene, cm, (pred_path, _) in zip(on_disk["scenes"], matrices, pairs, strict=True):
        assert scene["prediction"] == str(pred_path)
        assert np.array_equal(scene["scores"]["confusion_matrix"], cm)
        assert scene["scores"]["OA"] == pytest.approx(np.trace(cm) / cm.sum())
    total = np.asarray(on_disk["total"]["scores"]["confusion_matrix"], dtype=float)
    iou = np.diag(total) / (total.sum(0) + total.sum(1) - np.diag(total))
    assert on_disk["total"]["scores"]["mIoU"] == pytest.approx(iou.mean())
    assert on_disk["total"]["scores"]["IoU"]["car"] == pytest.approx(iou[4])
    markdown = (out / REPORT_MD).read_text()
    assert f"| **mean** | **{100 * iou.mean():.2f}**" in markdown
    assert "| pred.tif | truth.tif |" in markdown and markdown.count("| pred.tif |") == 2


def test_class_names_from_prediction_tag(make_raster: RasterFactory, tmp_path: Path) -> None:
    names = ["ground", "roof", "grass", "tree", "car", "other"]
    ids = np.arange(6, dtype=np.uint8).reshape(2, 3)
    pred = make_raster(ids, "p.tif", tags=class_names_tag(names))
    truth = make_raster(colour_truth(ids), "t.tif")
    report = evaluate_scenes([(pred, truth)], tmp_path / "new" / "out", scheme=POTSDAM, quiet=True)
    assert report["classes"] == names and report["total"]["scores"]["mIoU"] == 1.0
    assert (tmp_path / "new" / "out" / REPORT_JSON).exists()
    with pytest.raises(InputError, match=r"5 class names .* scheme 'potsdam' has 6"):
        evaluate_scenes([(make_raster(ids, "p5.tif", tags=class_names_tag(names[:5])), truth)], scheme=POTSDAM)
    no_scheme = evaluate_scenes([(pred, make_raster(ids, "ids.tif"))], tmp_path, quiet=True)  # names from the tag
    assert no_scheme["classes"] == names and no_scheme["scheme"] is None and no_scheme["total"]["scores"]["OA"] == 1
    with pytest.raises(InputError, match="--class-names gives 2 classes but the predictions record 6"):
        evaluate_scenes([(pred, make_raster(ids, "ids.tif"))], class_names=["a", "b"])


def test_potsdam_sample_label_against_itself(tmp_path: Path) -> None:
    files = write_potsdam(tmp_path / "potsdam", size=(96, 140))[0]
    with open_raster(files.label) as full, open_raster(files.label_noboundary) as eroded:
        ids = decode_colours(full.read(), ISPRS_COLOURS)
        valid = decode_colours(eroded.read(), ISPRS_COLOURS) != 255
        crs, transform = full.crs, full.transform
    assert 0 < (~valid).sum() < valid.sum()  # the sample has eroded boundaries
    pred = ids.copy()
    changed = np.zeros(ids.shape, dtype=bool)
    changed[10:30:3, 20:120:7] = True
    pred[changed] = (pred[changed] + 1) % 6
    pred[0:5, 0:5] = 255  # unpredicted corner
    pred_path = write_geotiff(tmp_path / "pred.tif", pred, crs=crs, transform=transform, nodata=255)
    report = evaluate_scenes([(pred_path, files.label_noboundary)], scheme=POTSDAM, block_size=64, quiet=True)
    scored = valid & (pred != 255)
    wrong = int((changed & scored).sum())
    assert wrong > 0
    assert report["total"]["scores"]["pixels"] == int(scored.sum())
    assert report["total"]["scores"]["OA"] == pytest.approx(1 - wrong / scored.sum())
    assert report["total"]["ignored_truth_pixels"] == int((~valid).sum())


@pytest.fixture
def pair(make_raster: RasterFactory, rng: np.random.Generator) -> tuple[Path, Path]:
    truth, pred = random_scene(rng, (12, 10))
    return make_raster(pred, "pred.tif"), make_raster(colour_truth(truth), "truth.tif")


def bad_inputs(tmp_path: Path, pair: tuple[Path, Path], make_raster: RasterFactory) -> dict[str, tuple[list[str], str]]:
    pred, truth = (str(p) for p in pair)
    junk = tmp_path / "junk.tif"
    junk.write_text("not an image")
    ids = np.zeros((12, 10), dtype=np.uint8)
    moved = Affine(*DEFAULT_TRANSFORM[:2], DEFAULT_TRANSFORM.c + 5, *DEFAULT_TRANSFORM[3:6])
    return {
        "missing": (["--pred", str(tmp_path / "none.tif"), "--truth", truth], "none.tif: file not found"),
        "not a raster": (["--pred", pred, "--truth", str(junk)], "junk.tif: not a raster GDAL can read"),
        "size": (
            ["--pred", str(make_raster(np.zeros((12, 11), np.uint8), "wide.tif")), "--truth", truth],
            "is 11×12 pixels but truth",
        ),
        "crs": (["--pred", str(make_raster(ids, "4326.tif", crs="EPSG:4326")), "--truth", truth], "CRS EPSG:4326"),
        "transform": (
            ["--pred", str(make_raster(ids, "moved.tif", transform=moved)), "--truth", truth],
            "geotransform",
        ),
        "class value": (
            ["--pred", str(make_raster(ids + 6, "six.tif")), "--truth", truth],
            "holds class value(s) [6] but there are 6 classes",
        ),
        "float prediction": (
            ["--pred", str(make_raster(ids.astype(np.float32), "f.tif")), "--truth", truth],
            "expected one band of integer class ids",
        ),
        "two-band truth": (
            ["--pred", pred, "--truth", str(make_raster(np.zeros((2, 12, 10), np.uint8), "two.tif"))],
            "has 2 band(s); with scheme 'potsdam' (rgb labels) it must have 1 or 3",
        ),
        "colour truth, index scheme": (
            ["--pred", pred, "--truth", truth, "--scheme", "loveda"],
            "has 3 band(s); with scheme 'loveda' (offset labels) it must have 1",
        ),
        "unequal pairs": (["--pred", pred, pred, "--truth", truth], "2 prediction(s) and 1 truth raster(s)"),
        "block size": (["--pred", pred, "--truth", truth, "--block-size", "0"], "--block-size 0: must be a positive"),
    }


CASES = [
    "missing",
    "not a raster",
    "size",
    "crs",
    "transform",
    "class value",
    "float prediction",
    "two-band truth",
    "colour truth, index scheme",
    "unequal pairs",
    "block size",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_nothing_written(
    case: str,
    pair: tuple[Path, Path],
    make_raster: RasterFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, message = bad_inputs(tmp_path, pair, make_raster)[case]
    if "--scheme" not in argv:
        argv = [*argv, "--scheme", "potsdam"]
    out = tmp_path / "reports"
    assert evaluate_cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_colour_truth_without_scheme_and_no_names(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred, truth = (str(p) for p in pair)
    assert evaluate_cli.main(["--pred", pred, "--truth", truth]) == 2
    assert "no class names known: pass --scheme" in capsys.readouterr().err
    assert evaluate_cli.main(["--pred", pred, "--truth", truth, "--class-names", "a,b,c,d,e,f"]) == 2
    assert "pass --scheme NAME to decode colour-coded truth" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run/best.pt", "--pred", "p.tif", "--truth", "t.tif"], "pass either CHECKPOINT or scene options"),
        (["--pred", "p.tif"], "pass CHECKPOINT, or --pred"),
        (["--pred", "p.tif", "--truth", "t.tif", "--split", "val"], "--split applies to CHECKPOINT mode only"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate_cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_scene_mode_and_subprocess_error(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pred, truth = (str(p) for p in pair)
    script = str(ROOT / "pipelines" / "evaluate.py")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, script, "--pred", pred, "--truth", truth, "--scheme", "potsdam", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "| **mean** |" in ok.stdout and "over 1 scene(s)" in ok.stdout
    assert json.loads((tmp_path / "r" / REPORT_JSON).read_text())["scheme"] == "potsdam"
    bad = subprocess.run(
        [sys.executable, script, "--pred", pred, "--truth", str(tmp_path / "missing.tif"), "--scheme", "potsdam"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.tif'}: file not found; check the path"]
