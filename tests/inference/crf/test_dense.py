"""DenseCRF refinement: sharper boundaries than a blurred prediction, any band count and dtype, nodata kept."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from rs_deeplab.cli.errors import InputError
from rs_deeplab.inference.crf.dense import CRFSettings, MissingDependencyError, colour_image, dense_crf, resolve_bands

COLOURS = np.array([[90, 110, 80], [200, 60, 50], [50, 70, 190]], dtype=np.float32)


def synthetic_scene(height: int = 120, width: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A label with a rectangle (class 1) and a disc (class 2) on background, and its noisy RGB image."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), dtype=np.uint8)
    label[20:70, 25:95] = 1
    yy, xx = np.mgrid[:height, :width]
    label[(yy - 75) ** 2 + (xx - 115) ** 2 < 30**2] = 2
    image = COLOURS[label].transpose(2, 0, 1) + rng.normal(0, 8, (3, height, width))
    return label, np.clip(image, 0, 255).astype(np.uint8)


def blurred_prediction(label: np.ndarray, classes: int = 3) -> np.ndarray:
    """One-hot label shifted by (3, 4) px, blurred (sigma 4) and mixed with uniform: smeared, misplaced edges."""
    onehot = np.stack([(label == c).astype(np.float32) for c in range(classes)])
    onehot = np.roll(onehot, (3, 4), axis=(1, 2))
    blurred = np.stack([cv2.GaussianBlur(band, (0, 0), 4.0) for band in onehot])
    probs = 0.6 * blurred + 0.4 / classes
    return (probs / probs.sum(axis=0)).astype(np.float32)


def boundary_band(label: np.ndarray, radius: int = 4) -> np.ndarray:
    """Pixels within ``radius`` px of a class boundary."""
    edge = np.zeros(label.shape, dtype=bool)
    rows, cols = label[:-1] != label[1:], label[:, :-1] != label[:, 1:]
    edge[:-1] |= rows
    edge[1:] |= rows
    edge[:, :-1] |= cols
    edge[:, 1:] |= cols
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), dtype=np.uint8)
    return cv2.dilate(edge.astype(np.uint8), kernel) > 0


def boundary_accuracy(probs: np.ndarray, label: np.ndarray) -> float:
    return float((probs.argmax(axis=0) == label)[boundary_band(label)].mean())


def miou(probs: np.ndarray, label: np.ndarray) -> float:
    pred = probs.argmax(axis=0)
    return float(np.mean([((pred == c) & (label == c)).sum() / ((pred == c) | (label == c)).sum() for c in range(3)]))


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    label, image = synthetic_scene()
    return label, image, blurred_prediction(label)


def test_crf_sharpens_blurred_boundaries(scene: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    label, image, probs = scene
    before_edge, before_miou = boundary_accuracy(probs, label), miou(probs, label)
    assert before_edge < 0.8  # the blur really misplaces the boundaries
    refined = dense_crf(probs, image)
    assert boundary_accuracy(refined, label) > max(0.95, before_edge + 0.2)
    assert miou(refined, label) > before_miou + 0.05
    # a unary laid out in the wrong pixel order must not pass
    scrambled = np.ascontiguousarray(probs.transpose(0, 2, 1)).reshape(probs.shape)
    assert boundary_accuracy(dense_crf(scrambled, image), label) < before_edge


def test_output_is_a_probability_distribution(scene: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    _, image, probs = scene
    refined = dense_crf(probs[:, :50, :70], image[:, :50, :70], iterations=3)
    assert refined.shape == (3, 50, 70) and refined.dtype == np.float32
    assert refined.min() >= 0
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)


def test_uint16_four_bands_with_chosen_bands(scene: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    label, image, probs = scene
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 65535, (1, *label.shape)).astype(np.uint16)
    # bands 2..4 hold the scene in a 16-bit range that truncation to 8 bits would scramble; band 1 is noise
    image16 = np.concatenate([noise, image.astype(np.uint16) * 12 + 1000])
    before = boundary_accuracy(probs, label)
    good = boundary_accuracy(dense_crf(probs, image16, bands=(4, 3, 2)), label)
    assert good > max(0.95, before + 0.2)
    decoy = boundary_accuracy(dense_crf(probs, image16, bands=(1,)), label)
    assert decoy < good - 0.2  # the chosen bands are the ones used


def test_single_band_float_image(scene: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    label, image, probs = scene
    reflectance = image[0].astype(np.float32) / 1000  # values in 0..0.26, one band
    refined = dense_crf(probs, reflectance)
    assert boundary_accuracy(refined, label) > boundary_accuracy(probs, label) + 0.2


def test_invalid_pixels_keep_their_probabilities(scene: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    label, image, probs = scene
    valid = np.ones(label.shape, dtype=bool)
    valid[:, :30] = False
    image = image.copy()
    image[:, ~valid] = 0
    refined = dense_crf(probs, image, valid=valid)
    np.testing.assert_array_equal(refined[:, ~valid], probs[:, ~valid])
    inside = (probs.argmax(0) == label)[valid & boundary_band(label)].mean()
    assert (refined.argmax(0) == label)[valid & boundary_band(label)].mean() > inside + 0.2
    nothing = dense_crf(probs, image, valid=np.zeros(label.shape, dtype=bool))
    np.testing.assert_array_equal(nothing, probs)


def test_params_object_matches_keywords(scene: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    _, image, probs = scene
    params = CRFSettings(bands=(3, 2, 1), bilateral_srgb=20.0, iterations=2)
    np.testing.assert_array_equal(
        params.refine(probs, image), dense_crf(probs, image, bands=(3, 2, 1), bilateral_srgb=20.0, iterations=2)
    )
    assert CRFSettings() == CRFSettings((1, 2, 3), 3.0, 3.0, 80.0, 13.0, 10.0, 5)


def test_colour_image_conversion() -> None:
    ramp = np.tile(np.arange(1000, 2001, 10, dtype=np.uint16), (4, 1))  # 101 values
    image = np.stack([ramp, np.full_like(ramp, 7)])
    rgb = colour_image(image, (1, 2))
    assert rgb.shape == (4, 101, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and rgb[0, 50, 0] in (127, 128)
    assert (rgb[..., 1] == 0).all() and (rgb[..., 2] == 0).all()  # constant band; last band repeated
    fixed = colour_image(image, (1,), band_ranges=[(1000.0, 3000.0), (0.0, 1.0)])
    assert fixed[0, -1, 0] == 127 and (fixed[..., 0] == fixed[..., 2]).all()
    as_is = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    np.testing.assert_array_equal(colour_image(as_is, (3, 1, 2)), as_is[[2, 0, 1]].transpose(1, 2, 0))
    with_nan = np.array([[[np.nan, 0.0, 1.0, 2.0]]], dtype=np.float32)
    assert colour_image(with_nan)[0, 0, 0] == 0


@pytest.mark.parametrize(
    ("bands", "count", "message"),
    [
        ((5,), 4, "CRF band 5 is out of range for an image with 4 band(s); use bands 1..4, counted from 1"),
        ((1, 0), 3, "CRF band 0 is out of range"),
        ((), 3, "CRF bands must list 1 to 3 band indices"),
        ((1, 2, 3, 4), 4, "CRF bands must list 1 to 3 band indices"),
    ],
)
def test_bad_bands(bands: tuple[int, ...], count: int, message: str) -> None:
    probs = np.full((2, 4, 5), 0.5, dtype=np.float32)
    image = np.zeros((count, 4, 5), dtype=np.uint8)
    with pytest.raises(ValueError) as exc:
        dense_crf(probs, image, bands=bands)
    assert isinstance(exc.value, InputError) and message in str(exc.value) and "\n" not in str(exc.value)


def test_resolve_bands_defaults() -> None:
    assert resolve_bands(None, 1) == (0, 0, 0)
    assert resolve_bands(None, 2) == (0, 1, 1)
    assert resolve_bands(None, 5) == (0, 1, 2)


def test_bad_settings_and_shapes() -> None:
    with pytest.raises(InputError, match="bilateral_srgb must be > 0"):
        CRFSettings(bilateral_srgb=0)
    with pytest.raises(InputError, match="iterations must be an integer >= 0"):
        CRFSettings(iterations=-1)
    with pytest.raises(InputError, match="does not match probabilities"):
        dense_crf(np.full((2, 4, 5), 0.5, dtype=np.float32), np.zeros((3, 5, 4), dtype=np.uint8))


def test_missing_pydensecrf_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(MissingDependencyError) as exc:
        dense_crf(np.full((2, 4, 5), 0.5, dtype=np.float32), np.zeros((3, 4, 5), dtype=np.uint8))
    assert isinstance(exc.value, ImportError)
    assert "pip install pydensecrf2" in str(exc.value) and "\n" not in str(exc.value)


def test_zero_iterations_return_the_input(rng: np.random.Generator) -> None:
    """With no message passing the CRF's distribution is softmax(-unary): exactly the input when unary = -log p."""
    probs = rng.random((4, 9, 11)).astype(np.float32) + 0.01
    probs /= probs.sum(axis=0)
    refined = dense_crf(probs, rng.integers(0, 255, (3, 9, 11)).astype(np.uint8), iterations=0)
    np.testing.assert_allclose(refined, probs, atol=1e-6)
