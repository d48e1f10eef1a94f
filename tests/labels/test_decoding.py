"""Label pixels to class ids: the fast colour table against the reference decoder, class-index bands by scheme."""

from __future__ import annotations

import numpy as np
import pytest

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels import decoding as label_decoding
from rs_deeplab.labels.classes import IGNORE_INDEX, SCHEMES, decode_colours
from rs_deeplab.labels.decoding import decode_label, fast_decode_colours


@pytest.mark.parametrize(("name", "chunk"), [("potsdam", 1 << 18), ("isaid", 1 << 18), ("loveda", 120)])
def test_fast_colour_decoding_equals_the_reference_decoder(
    name: str, chunk: int, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        label_decoding, "DECODE_CHUNK_PIXELS", chunk
    )  # 120 px: rows decoded 2 at a time, odd last chunk
    scheme = SCHEMES[name]
    ids = rng.integers(0, scheme.num_classes, (41, 50)).astype(np.uint8)
    colours = scheme.encode_colours(ids)
    colours[:, :5] = rng.integers(0, 256, (3, 5, 50), dtype=np.uint8)  # mostly unknown colours
    fast = fast_decode_colours(colours, scheme.colours)
    np.testing.assert_array_equal(fast, decode_colours(colours, scheme.colours))
    np.testing.assert_array_equal(fast[5:], ids[5:])
    wide = colours.astype(np.uint16)
    wide[0, 0, 0] = 256 + 255  # not a colour in 16 bits: falls back to the exact decoder
    np.testing.assert_array_equal(fast_decode_colours(wide, scheme.colours)[0, 0], IGNORE_INDEX)


def test_class_index_bands_decode_by_scheme_or_as_ids() -> None:
    band = np.array([[0, 5, 6, 255], [1, 2, 300, 7]], dtype=np.uint16)
    assert decode_label(band[np.newaxis], None).tolist() == [[0, 5, 6, 255], [1, 2, 255, 7]]
    assert decode_label(band[np.newaxis], SCHEMES["potsdam"]).tolist() == [[0, 5, 255, 255], [1, 2, 255, 255]]
    assert decode_label(band[np.newaxis], SCHEMES["loveda"]).tolist() == [[255, 4, 5, 255], [0, 1, 255, 6]]
    floats = np.array([[[0.0, 1.5, np.nan, -1.0]]], dtype=np.float32)
    assert decode_label(floats, None).tolist() == [[0, 255, 255, 255]]
    with pytest.raises(InputError, match="--scheme"):
        decode_label(np.zeros((3, 2, 2), np.uint8), None)
