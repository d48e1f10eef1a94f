"""Label sources for the tiler: vector attribute mappings and label files."""

from __future__ import annotations

import numpy as np
import pytest

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.tiling.labels import is_vector, resolve_mapping


def test_vector_values_map_by_explicit_map_class_name_or_id() -> None:
    scheme = SCHEMES["potsdam"]
    got = resolve_mapping(["building", 3.0, "4", None, "pool"], {"pool": 5}, scheme, where="x")
    assert got == (("3", 3), ("4", 4), ("building", 1), ("pool", 5))
    with pytest.raises(InputError, match=r"values \['shed'\] .* --label-map shed=ID"):
        resolve_mapping(["shed", "tree"], None, scheme, where="x")
    with pytest.raises(InputError, match=r"class ids must be 0\.\.255"):
        resolve_mapping(["a"], {"a": 300}, None, where="x")


def test_vector_files_are_told_apart_by_suffix() -> None:
    assert is_vector("a.GPKG") and is_vector("b.geojson") and is_vector("c.shp")
    assert not is_vector("d.tif") and not is_vector("e.png")


def test_values_outside_the_scheme_exclude_the_ignore_values_each_encoding_has() -> None:
    from rs_deeplab.tiling.checks import outside_scheme

    band = np.array([[[0, 1, 6, 8, 255]]], np.uint8)
    assert outside_scheme(band, SCHEMES["potsdam"]).tolist() == [[False, False, True, True, False]]
    assert outside_scheme(band, SCHEMES["loveda"]).tolist() == [[False, False, False, True, False]]  # 0 = no-data
    assert outside_scheme(band, None).tolist() == [[False, False, False, False, False]]
    floats = np.array([[[0.0, 2.5, -1.0, 300.0, 255.0]]], np.float32)
    assert outside_scheme(floats, None).tolist() == [[False, True, True, True, False]]
    colours = SCHEMES["potsdam"].encode_colours(np.array([[0, 5, 255]], np.uint8))  # 255 → black: a boundary
    colours = np.concatenate([colours, np.array([[[9]], [[9]], [[9]]], np.uint8)], axis=2)
    assert outside_scheme(colours, SCHEMES["potsdam"]).tolist() == [[False, False, False, True]]


def test_the_outside_warning_is_one_line_with_counts(caplog: pytest.LogCaptureFixture) -> None:
    from rs_deeplab.tiling.checks import warn_outside_scheme

    raw = np.zeros((1, 10, 20), np.uint8)
    raw[0, :3, :10] = 9
    with caplog.at_level("WARNING", logger="rs_deeplab.tiling.tiler"):
        warn_outside_scheme("a.tif", raw, SCHEMES["potsdam"], total=200)
        warn_outside_scheme("big.tif", raw, SCHEMES["potsdam"], total=20_000)  # a decimated read: scaled
        warn_outside_scheme("ok.tif", np.zeros((1, 4, 4), np.uint8), SCHEMES["potsdam"], total=16)
    assert [r.getMessage() for r in caplog.records] == [
        "a.tif: 30 label pixels (15.0%) have values outside the potsdam scheme; they are ignored (255)",
        "big.tif: about 3,000 label pixels (15.0%) have values outside the potsdam scheme; they are ignored (255)",
    ]
