"""Block-wise polygonization equals whole-raster ``rasterio.features.shapes``: seams, holes, corners, pinches."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.features import shapes
from rasterio.io import MemoryFile

from rs_deeplab.geo.raster import geotiff_profile
from rs_deeplab.vectorize import RegionStream
from rs_deeplab.vectorize import stitch as stitch_module
from rs_deeplab.vectorize.metadata import select_classes
from rs_deeplab.vectorize.polygonize import FlatPolygons, paint, polygonize_block
from rs_deeplab.vectorize.rings import densify_pixel_polygons, drop_collinear
from rs_deeplab.vectorize.stitch import stitch, stitch_many

TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_800_000.0)


def regions(array: np.ndarray, block_size: int, *, simplify: float = 0.0, nodata: int | None = 255):
    """Run the block-wise polygonizer on a real in-memory GeoTIFF; return (values, geometries)."""
    profile = geotiff_profile(
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs="EPSG:32633",
        transform=TRANSFORM,
        nodata=nodata,
    )
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(array, 1)
        with mem.open() as src:
            selection = select_classes([], nodata=src.nodata)
            stream = RegionStream(src, selection, block_size=block_size, simplify=simplify)
            batches = list(stream)
    values = np.concatenate([b[0] for b in batches])
    geoms = np.concatenate([b[1] for b in batches])
    return values, geoms, stream.merger.merged


def reference(array: np.ndarray):
    found = list(shapes(array, mask=array != 255, transform=TRANSFORM))
    return np.array([v for _, v in found], dtype=np.int64), np.array([shapely.geometry.shape(g) for g, _ in found])


def assert_same_polygons(array: np.ndarray, block_size: int) -> int:
    """Block-wise output == whole-raster shapes: same count, classes, vertices (up to ring start and order)."""
    values, geoms, merged = regions(array, block_size)
    ref_values, ref_geoms = reference(array)
    assert len(geoms) == len(ref_geoms)
    assert shapely.is_valid(geoms).all()
    assert shapely.get_type_id(geoms).tolist() == [3] * len(geoms)  # Polygon
    inside, match = shapely.STRtree(ref_geoms).query(shapely.point_on_surface(geoms), predicate="within")
    assert np.array_equal(np.sort(inside), np.arange(len(geoms)))
    assert np.array_equal(np.sort(match), np.arange(len(geoms)))
    assert np.array_equal(values[inside], ref_values[match])
    ours, theirs = shapely.normalize(geoms[inside]), shapely.normalize(ref_geoms[match])
    assert shapely.equals_exact(ours, theirs, tolerance=1e-6).all()
    np.testing.assert_allclose(np.sort(shapely.area(geoms)), np.sort(shapely.area(ref_geoms)), rtol=1e-12)
    return merged


def test_paint_fills_half_open_ranges():
    owner = paint(6, np.array([0, 3]), np.array([2, 6]), np.array([7, 9]))
    assert owner.tolist() == [7, 7, -1, 9, 9, 9]


def test_side_owners_name_the_polygon_inside_each_edge_pixel():
    block = np.array([[1, 1, 2], [3, 1, 2], [3, 3, 2]], dtype=np.uint8)
    flat = polygonize_block(block, 10, 20)
    owners = flat.side_owners(10, 20, 3, 3)
    value_of = {side: flat.values[o].tolist() for side, o in owners.items()}
    assert value_of == {"left": [1, 3, 3], "right": [2, 2, 2], "top": [1, 1, 2], "bottom": [3, 3, 2]}


def test_flat_polygons_round_trip_shapes_exactly():
    block = np.random.default_rng(0).integers(0, 3, (30, 40)).astype(np.uint8)
    flat = FlatPolygons.from_shapes(shapes(block))
    expected = [shapely.geometry.shape(g) for g, _ in shapes(block)]
    assert shapely.equals_exact(flat.polygons(), np.array(expected)).all()


def test_densify_then_drop_collinear_is_lossless():
    block = np.random.default_rng(1).integers(0, 3, (25, 30)).astype(np.uint8)
    polys = np.array([shapely.geometry.shape(g) for g, _ in shapes(block)])
    dense = densify_pixel_polygons(polys)
    assert shapely.get_num_coordinates(dense).sum() > shapely.get_num_coordinates(polys).sum()
    assert shapely.equals(dense, polys).all() and shapely.coverage_is_valid(dense)
    assert shapely.equals_exact(shapely.normalize(drop_collinear(dense)), shapely.normalize(polys)).all()


@pytest.mark.parametrize("block_size", [1, 3, 5, 8, 64])
def test_random_noise_matches_whole_raster(block_size):
    array = np.random.default_rng(block_size).integers(0, 3, (13, 17) if block_size == 1 else (29, 37)).astype(np.uint8)
    array[np.random.default_rng(7).random(array.shape) < 0.05] = 255
    assert_same_polygons(array, block_size)


def test_region_connected_only_through_another_block():
    # Two arms of class 1 in the bottom blocks, joined only by a bar in the top blocks.
    array = np.zeros((8, 8), dtype=np.uint8)
    array[1, 1:7] = 1
    array[1:7, 1] = 1
    array[1:7, 6] = 1
    assert assert_same_polygons(array, 4) == 2  # the arch (class 1) and the background (class 0)
    values, _, _ = regions(array, 4)
    assert sorted(values.tolist()) == [0, 1]


def test_ring_around_a_block_corner_gets_its_hole_from_the_merge():
    array = np.zeros((8, 8), dtype=np.uint8)
    array[2:6, 2:6] = 1
    array[3:5, 3:5] = 2  # the hole sits on the corner shared by four blocks
    assert_same_polygons(array, 4)
    values, geoms, _ = regions(array, 4)
    ring = geoms[values == 1][0]
    assert len(ring.interiors) == 1 and ring.area == pytest.approx(12 * 0.25)


def test_snake_crossing_many_seams_is_one_polygon():
    array = np.zeros((21, 21), dtype=np.uint8)
    for r in range(1, 20, 4):
        array[r, 1:20] = 1
        array[r : r + 4, 19 if (r // 4) % 2 == 0 else 1] = 1
    array[20:, :] = 0
    assert assert_same_polygons(array, 3) > 0
    values, _, _ = regions(array, 3)
    assert (values == 1).sum() == 1


@pytest.mark.parametrize("offset", [(0, 0), (1, 0), (0, 1)])
def test_diagonal_contact_never_merges(offset):
    # Class 1 pixels touching only at corners, on a seam, and at a corner shared by four blocks.
    array = np.zeros((9, 9), dtype=np.uint8)
    r, c = 3 + offset[0], 3 + offset[1]
    array[r - 1, c - 1] = array[r, c] = 1
    array[7, 5] = array[8, 6] = 1  # across the seam x = 6
    assert_same_polygons(array, 3)
    values, _, _ = regions(array, 3)
    assert (values == 1).sum() == 4


def test_pinch_at_a_seam_gives_a_valid_hole():
    # Class 1 encloses a hole that touches the outside diagonally exactly on the seam x = 4.
    array = np.zeros((8, 8), dtype=np.uint8)
    array[1:6, 1:7] = 1
    array[2:4, 2:4] = 0
    array[4, 4] = 0  # pinch vertex at (4, 4)
    array[3, 3] = 1
    array[5, 5] = 0
    array[4:6, 4] = 0
    assert_same_polygons(array, 4)


def test_a_region_whose_spliced_outline_passes_a_seam_vertex_twice(monkeypatch: pytest.MonkeyPatch):
    # The zeros here are one region whose outline, spliced across the seams x = 3 and y = 3, passes a seam
    # vertex twice: the splice takes its general way (split the loop, then drop straight vertices).
    array = np.array(
        [
            [1, 0, 1, 1, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [1, 0, 0, 0, 1, 0],
            [1, 1, 0, 0, 0, 1],
            [1, 1, 0, 0, 0, 1],
            [1, 0, 0, 0, 1, 1],
        ],
        dtype=np.uint8,
    )
    split = []
    real = stitch_module._split_touching_loops
    monkeypatch.setattr(stitch_module, "_split_touching_loops", lambda *a: split.append(1) or real(*a))
    assert_same_polygons(array, 3)
    assert split


def test_stitch_joins_pieces_cut_by_a_seam():
    left = shapely.box(0, 0, 4, 3)
    right = shapely.Polygon([(4, 1), (6, 1), (6, 2), (4, 2), (4, 1)])
    joined = stitch(np.array([left, right]), 4)
    assert joined.equals(shapely.union_all([left, right])) and joined.is_valid
    assert shapely.get_num_coordinates(joined) == 9  # no seam vertices left on straight edges


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    array=arrays(np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16)), elements=st.sampled_from([0, 1, 2, 255])),
    block_size=st.integers(2, 7),
)
def test_property_blockwise_equals_whole(array, block_size):
    assert_same_polygons(array, block_size)


@pytest.mark.parametrize("block_size", [4, 7, 100])
def test_simplified_coverage_has_no_gaps_or_overlaps(block_size):
    rng = np.random.default_rng(3)
    array = np.kron(rng.integers(0, 3, (6, 7)), np.ones((5, 5), dtype=np.int64)).astype(np.uint8)
    array[rng.random(array.shape) < 0.08] = 1
    _, geoms, _ = regions(array, block_size, simplify=1.5)
    _, exact, _ = regions(array, block_size)
    assert len(geoms) == len(exact)
    assert shapely.is_valid(geoms).all()
    assert shapely.get_num_coordinates(geoms).sum() < shapely.get_num_coordinates(exact).sum()
    assert shapely.union_all(geoms).area == pytest.approx(array.size * 0.25)
    assert shapely.area(geoms).sum() == pytest.approx(array.size * 0.25)
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = left < right
    overlap = shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]])).sum()
    assert overlap == pytest.approx(0.0, abs=1e-9)


def test_stitch_falls_back_to_an_overlay_when_pieces_share_no_seam_edge(caplog):
    corner = np.array([shapely.box(0, 0, 4, 4), shapely.box(4, 4, 8, 8)])  # meet at a point only
    with caplog.at_level("DEBUG", logger="rs_deeplab.vectorize.stitch"):
        result = stitch(corner, 4)
    assert "fell back" in caplog.text
    assert result.equals(shapely.union_all(corner))


def test_stitch_many_splices_each_group_as_alone_and_falls_back_only_where_needed(caplog):
    # Pieces of several regions cut by the seams x = 4 and y = 4, spliced in one call: a ring around a hole
    # whose pieces come from four blocks, an L across a corner, a bar, and a pair meeting at a point only
    # (no shared seam edge: that group alone falls back to an overlay union).
    ring = np.array(
        [
            shapely.box(1, 1, 4, 4).difference(shapely.box(2, 2, 4, 4)),
            shapely.box(4, 1, 7, 4).difference(shapely.box(4, 2, 6, 4)),
            shapely.box(1, 4, 4, 7).difference(shapely.box(2, 4, 4, 6)),
            shapely.box(4, 4, 7, 7).difference(shapely.box(4, 4, 6, 6)),
        ]
    )
    ell = np.array([shapely.box(10, 0, 12, 4), shapely.box(10, 4, 12, 8), shapely.box(12, 6, 14, 8)])
    bar = np.array([shapely.box(0, 9, 4, 10), shapely.box(4, 9, 8, 10)])
    corner = np.array([shapely.box(0, 12, 4, 16), shapely.box(4, 16, 8, 20)])
    groups = [ring, ell, corner, bar]
    with caplog.at_level("DEBUG", logger="rs_deeplab.vectorize.stitch"):
        together = stitch_many(groups, 4)
    assert caplog.text.count("fell back") == 1
    for got, pieces in zip(together, groups, strict=True):
        assert got.equals(shapely.union_all(pieces)) and got.is_valid
        assert shapely.to_wkb(got) == shapely.to_wkb(stitch(pieces, 4))  # the same vertices, in the same order
    assert len(together[0].interiors) == 1  # the hole in the middle survives the splice
    assert shapely.get_num_coordinates(together[3]) == 5  # a bar: no seam vertex left on its straight edges


def test_simplified_pieces_touching_inside_an_edge_are_repaired(caplog):
    # After simplification two pieces of one region can touch at a point inside an edge; splicing them gives
    # a self-touching ring, which is detected and redone with an overlay union.
    rng = np.random.default_rng(0)
    array = np.kron(rng.integers(0, 4, (12, 14)), np.ones((10, 10), dtype=np.int64)).astype(np.uint8)
    array[rng.random(array.shape) < 0.02] = 3
    with caplog.at_level("DEBUG", logger="rs_deeplab.vectorize.stitch"):
        _, geoms, _ = regions(array, 37, simplify=1.0)
    assert "invalid polygon; using an overlay union" in caplog.text
    assert shapely.is_valid(geoms).all()
    assert shapely.area(geoms).sum() == pytest.approx(array.size * 0.25)
