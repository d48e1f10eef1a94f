from __future__ import annotations

import numpy as np
import pytest

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.classes import IGNORE_INDEX, SCHEMES, decode_colours, get_scheme, voc_palette


def test_isprs_colour_round_trip(rng: np.random.Generator) -> None:
    scheme = SCHEMES["potsdam"]
    classes = rng.integers(0, scheme.num_classes, size=(17, 23)).astype(np.uint8)
    classes[0, :5] = IGNORE_INDEX
    colours = scheme.encode_colours(classes)
    assert colours.shape == (3, 17, 23)
    assert np.array_equal(scheme.decode(colours), classes)


def test_unknown_colours_and_black_boundaries_are_ignored() -> None:
    label = np.zeros((3, 1, 3), dtype=np.uint8)
    label[:, 0, 0] = (255, 255, 255)  # impervious
    label[:, 0, 1] = (0, 0, 0)  # eroded boundary
    label[:, 0, 2] = (10, 20, 30)  # not an ISPRS colour
    assert decode_colours(label, SCHEMES["potsdam"].colours).tolist() == [[0, 255, 255]]


def test_channels_last() -> None:
    label = np.zeros((2, 2, 3), dtype=np.uint8)
    label[0, 0] = (0, 0, 255)
    out = decode_colours(label, SCHEMES["vaihingen"].colours, channels_last=True)
    assert out.tolist() == [[1, 255], [255, 255]]


def test_isaid_background_is_black() -> None:
    scheme = SCHEMES["isaid"]
    assert scheme.num_classes == 16
    label = np.zeros((3, 2, 2), dtype=np.uint8)
    label[:, 1, 1] = scheme.colours[14]
    assert scheme.decode(label).tolist() == [[0, 0], [0, 14]]


def test_loveda_offset_encoding() -> None:
    mask = np.array([[0, 1, 7, 8]], dtype=np.uint8)
    assert SCHEMES["loveda"].decode(mask).tolist() == [[255, 0, 6, 255]]


def test_cityscapes_label_ids() -> None:
    ids = np.array([[7, 8, 0, 33, 255, 26]], dtype=np.uint8)
    assert SCHEMES["cityscapes"].decode(ids).tolist() == [[0, 1, 255, 18, 255, 13]]
    assert SCHEMES["cityscapes"].num_classes == 19


def test_voc_palette_known_entries() -> None:
    pal = voc_palette()
    assert pal[0] == (0, 0, 0) and pal[1] == (128, 0, 0) and pal[15] == (192, 128, 128)
    assert SCHEMES["voc"].num_classes == 21
    assert SCHEMES["voc"].decode(np.array([[0, 20, 21, 255]], dtype=np.uint8)).tolist() == [[0, 20, 255, 255]]


def test_colormap_has_transparent_ignore() -> None:
    cmap = SCHEMES["potsdam"].colormap()
    assert cmap[1] == (0, 0, 255, 255) and cmap[IGNORE_INDEX][3] == 0


def test_unknown_scheme() -> None:
    with pytest.raises(InputError, match="choose one of: potsdam, vaihingen"):
        get_scheme("deepglobe")
