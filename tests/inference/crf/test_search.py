"""CRF kernels by cross-validation: the searched setting beats the defaults on held-out crops, resumes, is recorded
with the checkpoint and used by ``infer.py --crf``; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines import crf_search as crf_search_cli
from rs_deeplab.cli.errors import InputError
from rs_deeplab.evaluation.metrics import scores
from rs_deeplab.inference.crf import grid
from rs_deeplab.inference.crf import search as cs
from rs_deeplab.inference.crf.dense import CRFSettings
from rs_deeplab.inference.infer import InferOptions, _crf_params
from tests import trainkit
from tests.badkit import ENV, check_one_line, listing, run_in, run_table
from tests.daskkit import dask_cluster
from tests.trainkit import BASE, REPO, blob_scene

trained = trainkit.trained  # the module-scoped tiny checkpoint (a fixture)

SEARCH = [sys.executable, str(REPO / "pipelines" / "crf_search.py")]
INFER = [sys.executable, str(REPO / "pipelines" / "infer.py")]


class BlurryClassifier(torch.nn.Module):
    """A fixed stand-in for a DCNN: nearest class colour of a Gaussian-blurred image (blurred, noisy boundaries)."""

    def __init__(self, sigma: float = 3.0, temperature: float = 0.02) -> None:
        super().__init__()
        r = int(3 * sigma)
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        self.register_buffer("kernel", (g[:, None] * g[None, :])[None, None].repeat(4, 1, 1, 1))
        self.register_buffer("means", torch.tensor(BASE / 255.0))
        self.r, self.temperature = r, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x, [self.r] * 4, mode="reflect")
        blurred = torch.nn.functional.conv2d(padded, self.kernel, groups=4)
        return -((blurred[:, None] - self.means[None, :, :, None, None]) ** 2).sum(2) / self.temperature


def normalise(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255)


def held_out_miou(files: list[Path], params: CRFSettings | None) -> float:
    kernels = None if params is None else params.kernels()
    return scores(cs.score_setting([str(f) for f in files], kernels, len(BASE))).miou


@pytest.mark.slow
def test_search_beats_default_and_no_crf_on_held_out_crops(tmp_path: Path, one_torch_thread: None) -> None:
    crops = [blob_scene(100 + i, 80) for i in range(16)]
    searched = grid.choose_images(len(crops), 8)
    held_out = [i for i in range(len(crops)) if i not in searched]
    model, cpu = BlurryClassifier(), torch.device("cpu")
    points = grid.make_grid(
        grid.parse_range("3:8:5", "--w1"),
        grid.parse_range("10:60:50", "--sxy"),
        grid.parse_range("5:25:10", "--srgb"),
        10,
    )
    assert len(points) == 12
    out = tmp_path / "search"

    def search() -> cs.SearchResult:
        return cs.run_search(
            model,
            crops.__getitem__,
            searched,
            out,
            num_classes=len(BASE),
            points=points,
            normalise=normalise,
            band_ranges=None,
            fingerprint="blurry",
            device=cpu,
            workers=2,
            quiet=True,
        )

    first = search()
    assert (first.computed_probabilities, first.computed_settings) == (8, 14)  # 12 points + 2 reference rows
    cache = sorted((out / cs.CACHE_DIR).rglob("*.npz"))
    assert len(cache) == 8 and all(f.stat().st_size < 80 * 80 * 10 + 1024 for f in cache)  # uint8: 6+3+1 per px
    stamps = [f.stat().st_mtime_ns for f in [*cache, out / cs.DONE_FILE]]
    again = search()  # a re-run recomputes nothing: neither probabilities nor settings
    assert (again.computed_probabilities, again.computed_settings) == (0, 0)
    assert [f.stat().st_mtime_ns for f in [*cache, out / cs.DONE_FILE]] == stamps
    assert again.rows == first.rows

    table = json.loads((out / cs.TABLE_JSON).read_text())
    assert table["computed"] == {"probabilities": 0, "settings": 0} and table["images"] == searched
    names = [r["setting"] for r in table["rows"]]
    assert names.count(grid.NO_CRF) == 1 and names.count(grid.DEFAULT) == 1 and len(names) == 14
    assert [r["mIoU"] for r in table["rows"]] == sorted((r["mIoU"] for r in table["rows"]), reverse=True)
    md = (out / cs.TABLE_MD).read_text()
    assert "**no CRF**" in md and "**default**" in md and md.count("\n| ") == 15

    # a Dask scheduler's workers (separate processes reading the cache by its absolute paths) score the same
    with dask_cluster(tmp_path, workers=2) as address:
        remote = cs.run_search(
            model,
            crops.__getitem__,
            searched,
            tmp_path / "remote",
            num_classes=len(BASE),
            points=points[:2],
            normalise=normalise,
            band_ranges=None,
            fingerprint="blurry",
            device=cpu,
            scheduler=address,
            quiet=True,
        )
    assert remote.computed_settings == 4
    local = {json.dumps(r["crf"]): r["mIoU"] for r in first.rows}
    assert {json.dumps(r["crf"]): r["mIoU"] for r in remote.rows}.items() <= local.items()

    best = CRFSettings(**first.best["crf"])
    assert (best.gaussian_sxy, best.gaussian_compat, best.iterations) == (3.0, 3.0, 10)
    held = model_cache(model, crops, held_out, tmp_path / "held")
    none, default, tuned = held_out_miou(held, None), held_out_miou(held, CRFSettings()), held_out_miou(held, best)
    print(f"held-out mIoU: no CRF {none:.4f}, default kernels {default:.4f}, searched {tuned:.4f} ({best})")
    assert tuned > default + 0.01 and tuned > none + 0.02


def model_cache(model: torch.nn.Module, crops: list[Any], indices: list[int], folder: Path) -> list[Path]:
    files, _ = cs.cache_probabilities(
        model,
        crops.__getitem__,
        indices,
        folder,
        normalise=normalise,
        band_ranges=None,
        device=torch.device("cpu"),
        quiet=True,
    )
    return files


def test_ranges_and_grids() -> None:
    assert grid.parse_range("3:6", "--w1") == (3, 4, 5, 6)
    assert grid.parse_range("30:100:10", "--sxy") == (30, 40, 50, 60, 70, 80, 90, 100)
    assert grid.parse_range("0.5:1.5:0.5", "--srgb") == (0.5, 1.0, 1.5)
    assert grid.parse_range("5", "--srgb") == (5,)
    assert grid.parse_range("3:6:2", "--w1") == (3, 5)
    for bad, words in [
        ("6:3", "reversed"),
        ("3:6:0", "step must be positive"),
        ("", "no points"),
        ("a:b", "expected A, A:B"),
        ("1:2:3:4", "expected A, A:B"),
    ]:
        with pytest.raises(InputError, match=words):
            grid.parse_range(bad, "--w1")
    with pytest.raises(InputError, match="no points"):
        grid.make_grid([3.0], [], [3.0], 10)
    with pytest.raises(InputError, match="bilateral_srgb must be > 0"):
        grid.make_grid([3.0], [30.0], [0.0], 10)
    with pytest.raises(InputError, match="only 5 crops"):
        grid.choose_images(5, 6)
    assert grid.choose_images(5, 5) == [0, 1, 2, 3, 4]


def test_the_default_kernels_are_kept_where_they_beat_the_grid(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the handler on the module's logger itself: a CLI run earlier in this process stops "rs_deeplab" propagating
    monkeypatch.setattr(cs.log, "handlers", [caplog.handler])
    row = lambda name, miou: {"setting": name, "mIoU": miou}  # noqa: E731
    assert cs.best_setting([row("grid", 0.8), row(grid.DEFAULT, 0.7), row(grid.NO_CRF, 0.6)])["setting"] == "grid"
    assert not caplog.records
    assert cs.best_setting([row(grid.NO_CRF, 0.8), row(grid.DEFAULT, 0.7), row("grid", 0.6)])["setting"] == "default"
    assert "Widen the grid" in caplog.text and "without --crf may do better" in caplog.text


GRID = ["--w1", "3:4", "--sxy", "30:40:10", "--srgb", "3", "--iterations", "2", "--images", "3", "--workers", "1"]


@pytest.mark.slow
def test_cli_records_the_best_setting_and_infer_uses_it(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "best.pt"
    shutil.copy2(trained, ckpt)
    out = tmp_path / "search"
    args = [str(ckpt), *GRID, "--out", str(out)]
    first = subprocess.run([*SEARCH, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "**no CRF**" in first.stdout and "**default**" in first.stdout
    assert "computed now: 3 crop(s), 6 setting(s)" in first.stdout
    assert crf_search_cli.main(args) == 0  # again, in this process: everything is read back, nothing computed
    again = capsys.readouterr()
    assert "computed now: 0 crop(s), 0 setting(s)" in again.out, again.err

    record = json.loads(cs.record_path(ckpt).read_text())
    rows = json.loads((out / cs.TABLE_JSON).read_text())["rows"]
    top = next(r for r in rows if r["setting"] != grid.NO_CRF)  # the best CRF: a grid point, or the default kernels
    assert record["crf"] == top["crf"] and record["mIoU"] == top["mIoU"]
    best = CRFSettings(**record["crf"])
    if top["setting"] == "grid":
        assert best.iterations == 2 and best.bilateral_srgb == 3 and best.bilateral_compat in (3, 4)
    else:
        assert best == CRFSettings() and "Widen the grid" in first.stderr
    assert _crf_params(InferOptions(crf=True), ckpt) == best
    explicit = _crf_params(InferOptions(crf=True, crf_bilateral=(50.0, 7.0, 2.0)), ckpt)
    assert (explicit.bilateral_sxy, explicit.bilateral_srgb, explicit.bilateral_compat) == (50, 7, 2)
    assert explicit.iterations == best.iterations  # the options not given still come from the record

    proc = subprocess.run(
        [
            *INFER,
            str(trained.parents[2] / "val.tif"),
            "--checkpoint",
            str(ckpt),
            "--crf",
            "--out",
            str(tmp_path / "labels.tif"),
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    c = record["crf"]
    assert (
        f"CRF kernels searched for this model ({cs.record_path(ckpt)}): bilateral {c['bilateral_sxy']:g},"
        f"{c['bilateral_srgb']:g},{c['bilateral_compat']:g}, gaussian 3,3, {best.iterations} iterations"
    ) in proc.stderr

    other = {**record, "crf": {**record["crf"], "bilateral_srgb": 7.0}}
    cs.record_path(ckpt).write_text(json.dumps(other))
    assert _crf_params(InferOptions(crf=True), ckpt).bilateral_srgb == 7.0
    ckpt.touch()  # other weights now (a newer file): the record no longer applies
    assert _crf_params(InferOptions(crf=True), ckpt) == CRFSettings()


def _missing_root(world: dict[str, Path], folder: Path) -> list[str]:
    state = torch.load(world["ckpt"], map_location="cpu", weights_only=True)
    state["config"]["data"]["root"] = str(folder / "gone" / "tiles")
    torch.save(state, folder / "moved.pt")
    return [str(folder / "moved.pt"), *GRID]


def _under_a_file(world: dict[str, Path], folder: Path) -> list[str]:
    (folder / "a_file").write_text("x")
    return [str(world["ckpt"]), *GRID, "--out", str(folder / "a_file" / "search")]


CASES: list[tuple[str, Any, str]] = [
    ("empty_grid", lambda w, f: [str(w["ckpt"]), "--w1", ""], "no points"),
    ("reversed", lambda w, f: [str(w["ckpt"]), "--sxy", "100:30:10"], "reversed"),
    ("too_many_images", lambda w, f: [str(w["ckpt"]), "--images", "10"], "only 9 crops"),
    ("zero_images", lambda w, f: [str(w["ckpt"]), "--images", "0"], "at least 1"),
    ("negative_images", lambda w, f: [str(w["ckpt"]), "--images", "-3"], "at least 1"),
    ("missing_data_root", _missing_root, "not found"),
    ("unwritable_out", _under_a_file, "is a file"),
]


@pytest.mark.slow
def test_bad_input_is_one_line_and_leaves_nothing(trained: Path, tmp_path: Path) -> None:
    world = {"ckpt": tmp_path / "shared" / "best.pt"}
    world["ckpt"].parent.mkdir()
    shutil.copy2(trained, world["ckpt"])
    shared = listing(world["ckpt"].parent)

    def run_case(folder: Path, make: Any) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        args = make(world, folder)
        if "--out" not in args:
            args += ["--out", str(folder / "search")]
        return run_in(folder, [*SEARCH, *args])

    runs = run_table(CASES, run_case, tmp_path / "cases", workers=2, server=True)
    for name, _, words in CASES:
        proc, before, folder = runs[name]
        line = check_one_line(proc)
        assert words in line, (name, line)
        assert listing(folder) == before, name  # no report folder, cache or record
    assert listing(world["ckpt"].parent) == shared  # no <stem>.crf.json beside the checkpoint
