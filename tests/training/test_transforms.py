from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_deeplab.training.datasets.sampling import IterationBatchSampler, pad_collate
from rs_deeplab.training.transforms import (
    ChannelStats,
    EvalTransform,
    TrainTransform,
    compute_band_stats,
    normalise,
    photometric_rgb,
    random_crop,
)
from tests.conftest import RasterFactory


def scene(rng: np.random.Generator, bands: int = 4, dtype: type = np.uint8, size: tuple[int, int] = (96, 120)):
    hi = 255 if dtype == np.uint8 else 4000
    image = rng.integers(0, hi, size=(bands, *size)).astype(dtype)
    mask = np.zeros(size, dtype=np.uint8)
    mask[:, size[1] // 2 :] = 1
    mask[: size[0] // 3] = 2
    mask[0, 0] = 255
    return image, mask


@pytest.mark.parametrize(("bands", "dtype"), [(3, np.uint8), (4, np.uint8), (5, np.uint16), (1, np.uint16)])
def test_train_transform_any_band_count_and_dtype(rng: np.random.Generator, bands: int, dtype: type) -> None:
    image, mask = scene(rng, bands, dtype)
    stats = ChannelStats(tuple(image.reshape(bands, -1).mean(1)), tuple(image.reshape(bands, -1).std(1)))
    tf = TrainTransform(crop_size=64, stats=stats, scale_range=(0.5, 2.0), flips="aerial")
    img, msk = tf(image, mask, seed=7)
    assert img.shape == (bands, 64, 64) and img.dtype == torch.float32
    assert msk.shape == (64, 64) and msk.dtype == torch.uint8
    assert set(msk.unique().tolist()) <= {0, 1, 2, 255}
    assert abs(float(img.mean())) < 1.5  # normalised


def test_same_seed_same_sample_other_seed_differs(rng: np.random.Generator) -> None:
    image, mask = scene(rng)
    tf = TrainTransform(crop_size=48, stats=None)
    a, b, c = tf(image, mask, 3), tf(image, mask, 3), tf(image, mask, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_image_and_mask_stay_aligned(rng: np.random.Generator) -> None:
    # the image encodes its own label: geometry must move both together, whatever the seed
    mask = rng.integers(0, 3, size=(80, 80)).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    image = (mask[None].astype(np.uint8) * 100).repeat(3, 0)
    tf = TrainTransform(crop_size=64, stats=None, scale_range=(1.0, 1.0), flips="aerial")
    for seed in range(10):
        tf_img, tf_mask = tf(image, mask, seed)
        raw = tf_img[0]  # photometric noise is global per image: rank order of values stays
        for cls in range(3):
            sel = tf_mask == cls
            if sel.any():
                assert raw[sel].std() < 1e-3


def test_rectangular_crop(rng: np.random.Generator) -> None:
    image, mask = scene(rng, size=(60, 90))
    img, msk = TrainTransform(crop_size=(32, 64), stats=None, flips="horizontal")(image, mask, 1)
    assert img.shape == (4, 32, 64) and msk.shape == (32, 64)


def test_small_image_is_padded_with_ignore(rng: np.random.Generator) -> None:
    image, mask = scene(rng, size=(20, 30))
    img, msk = TrainTransform(crop_size=64, stats=None, scale_range=(1.0, 1.0), flips="none")(image, mask, 0)
    assert img.shape[1:] == (64, 64) and (msk == 255).sum() >= 64 * 64 - 20 * 30


def test_random_crop_prefers_mixed_crops() -> None:
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[:30, :30] = 1  # a crop is "mixed enough" only near this corner (<= 75 % of one class)

    def balanced(tries: int) -> int:
        count = 0
        for seed in range(40):
            _, crop = random_crop(
                np.zeros((100, 100, 1)), mask, (40, 40), np.random.default_rng(seed), 0.75, tries=tries
            )
            count += int((crop == 1).mean() > 0.25)
        return count

    once, retried = balanced(1), balanced(50)
    assert once <= 5 and retried >= 25, (once, retried)


def test_eval_transform_keeps_size(rng: np.random.Generator) -> None:
    image, mask = scene(rng)
    img, _ = EvalTransform(ChannelStats((1.0,) * 4, (2.0,) * 4))(image, mask)
    assert img.shape == (4, 96, 120)
    assert torch.allclose(img[:, 5, 5], (torch.from_numpy(image[:, 5, 5]).float() - 1) / 2)


def test_normalize_band_mismatch(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="for 3 bands, the image has 4"):
        normalise(np.zeros((2, 2, 4)), ChannelStats((0.0,) * 3, (1.0,) * 3))


def test_band_stats_skip_nodata(make_raster: RasterFactory, rng: np.random.Generator) -> None:
    data = rng.normal(100, 10, size=(2, 64, 64)).astype(np.float32)
    data[:, :8] = -9999
    path = make_raster(data, nodata=-9999)
    stats = compute_band_stats([path], max_side=64)
    valid = data[:, 8:].reshape(2, -1)
    assert stats.mean == pytest.approx(tuple(valid.mean(1)), rel=1e-4)
    assert stats.std == pytest.approx(tuple(valid.std(1)), rel=1e-3)
    assert compute_band_stats([path], bands=[2], max_side=64).mean == pytest.approx((valid[1].mean(),), rel=1e-4)


def test_sampler_splits_global_batch_across_ranks() -> None:
    kw = {"batch_size": 2, "iterations": 5, "seed": 3}
    single = list(IterationBatchSampler(7, **{**kw, "batch_size": 4}))
    r0 = list(IterationBatchSampler(7, **kw, rank=0, world_size=2))
    r1 = list(IterationBatchSampler(7, **kw, rank=1, world_size=2))
    assert len(single) == len(r0) == 5
    for full, a, b in zip(single, r0, r1, strict=True):
        assert full == a + b
    # each epoch (7 samples) is a permutation
    flat = [k[0] for batch in single for k in batch]
    assert sorted(flat[:7]) == list(range(7))
    # seeds are unique per stream position
    assert len({k[1] for batch in single for k in batch}) == 20


def test_sampler_resume_and_accumulation() -> None:
    full = list(IterationBatchSampler(5, batch_size=2, iterations=6, grad_accum=2, seed=1))
    resumed = list(IterationBatchSampler(5, batch_size=2, iterations=6, grad_accum=2, seed=1, start_iteration=4))
    assert len(full) == 12 and resumed == full[8:]
    bigger = list(IterationBatchSampler(5, batch_size=4, iterations=6, seed=1))
    assert [a + b for a, b in zip(full[::2], full[1::2], strict=True)] == bigger


def test_pad_collate() -> None:
    a = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.uint8))
    b = (torch.ones(3, 6, 2), torch.ones(6, 2, dtype=torch.uint8))
    images, masks = pad_collate([a, b])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert masks[0, 5, 0] == 255 and images[1, 0, 0, 4] == 0 and masks.dtype == torch.uint8


def test_photometric_rgb_is_mmsegs_distortion(rng: np.random.Generator) -> None:
    import cv2

    image = rng.integers(0, 256, size=(32, 40, 3)).astype(np.float32)
    outs = [photometric_rgb(image, np.random.default_rng(seed)) for seed in range(200)]
    assert all(o.shape == image.shape and o.dtype == np.float32 for o in outs)
    assert all(o.min() >= 0 and o.max() <= 255 for o in outs)  # clipped like 8-bit values
    unchanged = sum(np.array_equal(o, image) for o in outs)
    assert 0 < unchanged < 30  # each of 4 steps fires half the time: all skipped 1/16 of the time
    # brightness shifts at most 32 per value and contrast scales at most x1.5: no output exceeds what both allow
    assert max(float(np.abs(o - image).max()) for o in outs) > 32
    # saturation and hue only: the HSV value channel (max of RGB) stays where brightness/contrast left it
    grey = np.full((8, 8, 3), 100, np.float32)  # no saturation to scale, no hue to turn
    for seed in range(50):
        out = photometric_rgb(grey, np.random.default_rng(seed))
        assert np.allclose(out, out[..., :1], atol=1e-3)  # stays grey
    hsv_in = cv2.cvtColor(image / 255, cv2.COLOR_RGB2HSV)
    changed_hue = [
        o for o in outs if not np.allclose(cv2.cvtColor(o / 255, cv2.COLOR_RGB2HSV)[..., 0], hsv_in[..., 0], atol=1)
    ]
    assert changed_hue  # some draws turn the hue
    with pytest.raises(ValueError, match="3-band"):
        photometric_rgb(np.zeros((4, 4, 4), np.float32), rng)


@pytest.mark.parametrize("mode", ["bands", "rgb", "none"])
def test_train_transform_photometric_modes(rng: np.random.Generator, mode: str) -> None:
    image, mask = scene(rng, bands=3)
    stats = compute_band_stats_from(image)
    plain = TrainTransform(crop_size=64, stats=stats, photometric="none")
    jittered = TrainTransform(crop_size=64, stats=stats, photometric=mode)  # type: ignore[arg-type]
    same = [torch.equal(plain(image, mask, seed)[0], jittered(image, mask, seed)[0]) for seed in range(8)]
    assert all(same) if mode == "none" else not all(same)
    for seed in range(4):  # geometry and crop do not depend on the colour mode
        assert torch.equal(plain(image, mask, seed)[1], jittered(image, mask, seed)[1])


def compute_band_stats_from(image: np.ndarray) -> ChannelStats:
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    return ChannelStats(mean=tuple(flat.mean(1)), std=tuple(flat.std(1) + 1e-6))
