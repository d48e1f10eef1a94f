"""Sliding-window inference: exact stitching with an oracle model, blending weights, nodata, georeferencing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.grid import axis_offsets
from rs_deeplab.inference import predict_scene
from rs_deeplab.inference.predicting.blending import StripAccumulator, axis_profile, first_argmax, window_weight
from rs_deeplab.inference.predicting.predictor import TTA, Predictor
from rs_deeplab.inference.writing.writer import FINGERPRINT_TAG
from rs_deeplab.vectorize import read_class_names
from tests.conftest import DEFAULT_TRANSFORM, RasterFactory
from tests.inference.scenes import NAMES, Oracle, blobs, labelled_scene


class Constant(torch.nn.Module):
    """The same logits everywhere (any blend of them must give them back)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.logits.view(1, -1, 1, 1).expand(b, -1, h, w).clone()


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize(
    ("height", "width", "size", "stride"),
    [(301, 517, 64, 40), (203, 97, 48, 48), (37, 50, 64, 32), (130, 64, 64, 17), (64, 300, 64, 63)],
    ids=["non-square", "no-overlap", "smaller-than-window", "odd-stride", "exact-height"],
)
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_oracle_model_stitches_the_label_exactly(
    make_raster: RasterFactory, tmp_path: Path, height: int, width: int, size: int, stride: int, batch_size: int
) -> None:
    label = blobs(height, width, seed=height + width)
    scene = labelled_scene(make_raster, label)
    out = tmp_path / "labels.tif"
    oracle = Oracle()
    result = predict_scene(oracle, scene, out, size=size, stride=stride, batch_size=batch_size, class_names=NAMES)
    np.testing.assert_array_equal(read(out), label)
    assert result.windows == result.total_windows == oracle.windows
    assert all(s[1:] == (2, size, size) and s[0] <= batch_size for s in oracle.shapes)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(
    height=st.integers(1, 140),
    width=st.integers(1, 140),
    size=st.integers(8, 64),
    stride_frac=st.floats(0.1, 1.0),
    seed=st.integers(0, 1000),
)
def test_oracle_stitching_property(
    tmp_path_factory: pytest.TempPathFactory, height: int, width: int, size: int, stride_frac: float, seed: int
) -> None:
    from rs_deeplab.geo.raster import write_geotiff

    folder = tmp_path_factory.mktemp("prop")
    label = blobs(height, width, seed)
    scene = write_geotiff(folder / "s.tif", np.stack([label, label]), crs="EPSG:32633", transform=DEFAULT_TRANSFORM)
    stride = max(1, int(size * stride_frac))
    predict_scene(Oracle(), scene, folder / "o.tif", size=size, stride=stride, batch_size=4, class_names=NAMES)
    np.testing.assert_array_equal(read(folder / "o.tif"), label)


def test_output_is_georeferenced_with_classes_colours_and_tiles(make_raster: RasterFactory, tmp_path: Path) -> None:
    label = blobs(600, 700, 3)
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)
    scene = labelled_scene(make_raster, label, crs="EPSG:32632", transform=transform)
    out = tmp_path / "labels.tif"
    cmap = {i: (i * 40, 255 - i * 40, 7, 255) for i in range(5)}
    predict_scene(Oracle(), scene, out, size=128, stride=96, class_names=NAMES, colormap=cmap)
    with rasterio.open(out) as ds, rasterio.open(scene) as src:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
        assert ds.dtypes == ("uint8",) and ds.count == 1 and ds.nodata == 255
        assert read_class_names(ds) == NAMES
        assert ds.colormap(1)[3] == (120, 135, 7, 255)
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        assert ds.compression is not None and ds.compression.value == "DEFLATE"
        assert FINGERPRINT_TAG in ds.tags()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "scene.tif"]  # no partial or sidecar


def test_geographic_crs_and_16_bit_single_band(make_raster: RasterFactory, tmp_path: Path) -> None:
    label = blobs(90, 130, 5, classes=3)
    transform = Affine(0.0001, 0, 13.4, 0, -0.0001, 52.5)
    scene = make_raster((label.astype(np.uint16) * 1000), "dem.tif", crs="EPSG:4326", transform=transform)

    class Thresholds(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ids = (x[:, 0] / 1000).round().long().clamp(0, 2)
            return 10.0 * torch.nn.functional.one_hot(ids, 3).permute(0, 3, 1, 2).float()

    out = tmp_path / "o.tif"
    result = predict_scene(Thresholds(), scene, out, size=32, stride=24)
    np.testing.assert_array_equal(read(out), label)
    assert result.class_names == ("class_0", "class_1", "class_2")
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.transform == transform


def test_nodata_pixels_get_255_and_all_nodata_windows_are_skipped(make_raster: RasterFactory, tmp_path: Path) -> None:
    label = blobs(256, 320, 7)
    image = np.stack([label, label]).astype(np.uint8) + 1  # 0 is nodata
    image[:, :, :150] = 0  # the left part: whole windows of nodata
    image[:, 200:210, 250:260] = 0  # a hole inside valid windows
    scene = make_raster(image, nodata=0)

    class Shifted(Oracle):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x - 1)

    oracle = Shifted()
    result = predict_scene(oracle, scene, tmp_path / "o.tif", size=64, stride=32, class_names=NAMES)
    expected = np.where(image[0] == 0, 255, label)
    np.testing.assert_array_equal(read(tmp_path / "o.tif"), expected)
    # windows whose 64 columns all lie left of column 150 never reach the model
    all_nodata = sum(1 for c in range(0, 320 - 64 + 1, 32) if c + 64 <= 150) * len(range(0, 256 - 64 + 1, 32))
    assert result.total_windows - result.windows == all_nodata > 0
    assert oracle.windows == result.windows


def test_dataset_mask_and_nan_are_nodata(make_raster: RasterFactory, tmp_path: Path) -> None:
    label = blobs(100, 120, 9)
    scene = labelled_scene(make_raster, label, "masked.tif")
    mask = np.full(label.shape, 255, np.uint8)
    mask[10:40, 20:90] = 0
    with rasterio.open(scene, "r+") as ds:
        ds.write_mask(mask)
    predict_scene(Oracle(), scene, tmp_path / "m.tif", size=48, stride=32, class_names=NAMES)
    np.testing.assert_array_equal(read(tmp_path / "m.tif"), np.where(mask == 0, 255, label))

    floats = np.stack([label, label]).astype(np.float32)
    floats[:, 50:60, :] = np.nan
    scene = make_raster(floats, "float.tif")
    predict_scene(Oracle(), scene, tmp_path / "f.tif", size=48, stride=32, class_names=NAMES)
    np.testing.assert_array_equal(read(tmp_path / "f.tif"), np.where(np.isnan(floats[0]), 255, label))


def test_blended_probabilities_of_a_constant_model_are_that_model(make_raster: RasterFactory, tmp_path: Path) -> None:
    scene = labelled_scene(make_raster, blobs(150, 170, 1))
    logits = [0.5, 2.0, -1.0]
    probs_path = tmp_path / "p.tif"
    predict_scene(
        Constant(logits), scene, tmp_path / "o.tif", size=64, stride=24, window="gaussian", probs_path=probs_path
    )
    expected = np.rint(torch.tensor(logits).softmax(0).numpy() * 255)
    with rasterio.open(probs_path) as ds:
        probs = ds.read()
        assert ds.count == 3 and ds.descriptions[1] == "probability of class_1 (0-255)"
    assert np.abs(probs.astype(int) - expected[:, None, None]).max() == 0
    assert (read(tmp_path / "o.tif") == 1).all()


def test_blending_weights_are_flat_at_the_scene_border() -> None:
    for kind in ("hann", "gaussian"):
        inner = axis_profile(64, kind, False, False)
        assert inner.min() > 0 and inner[0] < 0.05 and inner[31] > 0.95 and np.allclose(inner, inner[::-1])
        first = axis_profile(64, kind, True, False)
        assert (first[:32] == 1).all() and np.allclose(first[32:], inner[32:])
        last = axis_profile(64, kind, False, True)
        assert (last[32:] == 1).all() and np.allclose(last[:32], inner[:32])
    corner = window_weight(0, 100, 64, 64, 164)  # top row touches top and bottom; right edge at 164
    assert (corner[:, 32:] == 1).all() and corner[:, 0].max() < 0.05


def test_hann_blending_is_smooth_across_window_seams() -> None:
    """Two overlapping windows that disagree: the blend moves gradually from one to the other, no step."""
    acc = StripAccumulator(2, 32, 96, 64, kind="hann")
    left = torch.zeros(2, 64, 64)
    left[0] = 1
    right = torch.zeros(2, 64, 64)
    right[1] = 1
    parts = list(acc.add(0, 0, left, None)) + list(acc.add(0, 32, right, None)) + list(acc.finish(32))
    assert len(parts) == 0 or all(p.labels.size == 0 for p in parts[:-1])
    acc2 = StripAccumulator(2, 32, 96, 64, kind="hann", keep_probs=True)
    for col, probs in ((0, left), (32, right)):
        list(acc2.add(0, col, probs, None))
    (rows,) = list(acc2.finish(32))
    assert rows.probs is not None
    p1 = rows.probs[1, 0]
    assert (p1[:32] == 0).all() and (p1[64:] == 1).all()
    assert (np.diff(p1[32:64]) > 0).all() and np.abs(np.diff(p1)).max() < 0.1


@pytest.mark.parametrize(
    ("height", "width", "size", "stride", "block"), [(150, 101, 40, 15, 7), (64, 90, 64, 40, 2048)]
)
def test_accumulator_matches_a_whole_scene_blend(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int, size: int, stride: int, block: int
) -> None:
    """Random window probabilities and nodata holes, blended band by band (ring buffer wrapping, finished rows
    arg-maxed in column blocks) equal the whole-scene weighted mean and its first arg-max."""
    monkeypatch.setattr(StripAccumulator, "COLUMN_BLOCK", block)
    rng = np.random.default_rng(height)
    classes = 4
    acc = StripAccumulator(classes, height, width, size, keep_probs=True)
    sums = np.zeros((classes, height, width), np.float64)
    weights = np.zeros((height, width), np.float64)
    parts = []
    for r in axis_offsets(height, size, stride):
        for c in axis_offsets(width, size, stride):
            probs = rng.dirichlet(np.ones(classes), (size, size)).transpose(2, 0, 1).astype(np.float32)
            probs[1, :5] = probs[2, :5]  # exact ties: the first class wins
            valid = rng.random((size, size)) > 0.02
            valid[: size // 3, : size // 3] = (r, c) != (0, 0)  # a corner only the first window covers: 255
            parts += acc.add(r, c, torch.from_numpy(probs), torch.from_numpy(valid))
            h, w = min(size, height - r), min(size, width - c)
            wt = window_weight(r, c, size, height, width) * valid
            sums[:, r : r + h, c : c + w] += probs[:, :h, :w] * wt[:h, :w]
            weights[r : r + h, c : c + w] += wt[:h, :w]
    parts += acc.finish(height)
    assert [p.row_start for p in parts] == sorted(p.row_start for p in parts) and parts[-1].row_stop == height
    labels = np.concatenate([p.labels for p in parts])
    got = np.concatenate([p.probs for p in parts if p.probs is not None], axis=1)
    covered = weights > 0
    want = sums / np.where(covered, weights, 1)
    np.testing.assert_allclose(got[:, covered], want[:, covered], atol=1e-5)
    expected = np.where(covered, np.asarray(torch.from_numpy(got).argmax(0)), 255)
    np.testing.assert_array_equal(labels, expected)
    assert (labels == 255).sum() == (~covered).sum() > 0


def test_first_argmax_matches_torch_argmax_with_ties() -> None:
    x = torch.randint(0, 3, (6, 40, 50)).float()
    assert torch.equal(first_argmax(x), x.argmax(0).to(torch.uint8))


def test_accumulator_holds_one_band_of_rows() -> None:
    acc = StripAccumulator(6, 100_000, 3_000, 256)
    assert tuple(acc.sums.shape) == (6, 256, 3_000) and tuple(acc.weights.shape) == (256, 3_000)


def test_tta_averages_flipped_and_rescaled_predictions() -> None:
    class ColumnRamp(torch.nn.Module):
        """Class 1 is more likely to the right: a model that is not flip-invariant."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ramp = torch.linspace(-3, 3, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
            return torch.cat([-ramp, ramp], 1)

    x = torch.zeros(2, 3, 16, 16)
    plain = Predictor(ColumnRamp())(x)
    assert plain[0, 1, 0, -1] > 0.99
    flipped = Predictor(ColumnRamp(), tta=TTA(hflip=True))(x)
    torch.testing.assert_close(flipped, torch.full_like(flipped, 0.5))
    oracle = Oracle()
    label = torch.from_numpy(blobs(64, 64, 2).astype(np.float32))
    batch = torch.stack([label, label]).unsqueeze(0)
    probs = Predictor(oracle, tta=TTA(scales=(0.5, 1.0, 1.5), hflip=True, vflip=True))(batch)
    assert sorted({s[-1] for s in oracle.shapes}) == [32, 64, 96] and len(oracle.shapes) == 9
    assert (probs.argmax(1)[0] == label).float().mean() > 0.9
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 64))


def test_a_finished_run_is_not_repeated_and_restart_recomputes(make_raster: RasterFactory, tmp_path: Path) -> None:
    scene = labelled_scene(make_raster, blobs(80, 90, 4))
    out = tmp_path / "o.tif"
    first = predict_scene(Oracle(), scene, out, size=32, stride=16, class_names=NAMES)
    again = predict_scene(Oracle(), scene, out, size=32, stride=16, class_names=NAMES)
    assert first.windows > 0 and again.windows == 0 and again.resumed_at == 80
    other = predict_scene(Oracle(), scene, out, size=32, stride=32, class_names=NAMES)
    assert other.windows > 0  # other settings: computed anew
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()[FINGERPRINT_TAG])["job"].count("stride=32")
    restarted = predict_scene(Oracle(), scene, out, size=32, stride=32, class_names=NAMES, resume=False)
    assert restarted.windows == other.windows and restarted.resumed_at == 0


def test_bad_arguments_are_one_line_errors(make_raster: RasterFactory, tmp_path: Path) -> None:
    scene = labelled_scene(make_raster, blobs(40, 40, 1))
    with pytest.raises(InputError, match="stride 80 is larger than the crop size 64"):
        predict_scene(Oracle(), scene, tmp_path / "o.tif", size=64, stride=80)
    with pytest.raises(InputError, match=r"output folder .* does not exist"):
        predict_scene(Oracle(), scene, tmp_path / "missing" / "o.tif", size=64, stride=32, class_names=NAMES)
    with pytest.raises(InputError, match="has 2 bands, the model reads bands"):
        predict_scene(Oracle(), scene, tmp_path / "o.tif", size=64, stride=32, bands=[1, 3], class_names=NAMES)
    (tmp_path / "not.tif").write_text("hello")
    with pytest.raises(RasterError, match="not a raster GDAL can read"):
        predict_scene(Oracle(), tmp_path / "not.tif", tmp_path / "o.tif", size=64, stride=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not.tif", "scene.tif"]


def test_crf_sharpens_a_blurred_prediction_through_the_pipeline(make_raster: RasterFactory, tmp_path: Path) -> None:
    from rs_deeplab.inference.crf.dense import CRFSettings

    label = blobs(200, 260, 11, classes=3)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)
    noise = np.random.default_rng(3).normal(0, 8, (3, *label.shape))
    image = np.clip(colours[label].transpose(2, 0, 1) + noise, 0, 255).astype(np.uint8)
    scene = make_raster(image, "rgb.tif")

    class BlurryOracle(torch.nn.Module):
        """Knows the classes from the colours but smears them over ~9 px, as a coarse output stride would."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            onehot = torch.nn.functional.one_hot(x.argmax(1), 3).permute(0, 3, 1, 2).float()
            blurred = torch.nn.functional.avg_pool2d(onehot, 17, stride=1, padding=8, count_include_pad=False)
            return 3.0 * torch.nn.functional.avg_pool2d(blurred, 9, stride=1, padding=4, count_include_pad=False)

    kwargs = {"size": 128, "stride": 96, "class_names": ["r", "g", "b"]}
    predict_scene(BlurryOracle(), scene, tmp_path / "plain.tif", **kwargs)  # type: ignore[arg-type]
    predict_scene(BlurryOracle(), scene, tmp_path / "crf.tif", crf=CRFSettings(), **kwargs)  # type: ignore[arg-type]
    plain, refined = read(tmp_path / "plain.tif"), read(tmp_path / "crf.tif")
    edges = np.zeros_like(label, bool)
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    edges[1:] |= label[1:] != label[:-1]
    near = np.asarray(torch.nn.functional.max_pool2d(torch.from_numpy(edges[None].astype(np.float32)), 7, 1, 3)[0] > 0)
    before, after = (plain == label)[near].mean(), (refined == label)[near].mean()
    assert after > before + 0.05 and (refined == label).mean() > 0.97, (before, after)
