"""The region mosaic: who owns each pixel (checked against a per-pixel brute force), and the VRT / COG written."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from rs_deeplab.cli import diskspace
from rs_deeplab.cli.errors import DiskFullError, InputError
from rs_deeplab.geo.mosaic import RegionOutput, region_grid, write_region
from rs_deeplab.geo.ownership import ownership
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.labels.class_names import class_names_tag, read_class_names

Rect = tuple[int, int, int, int]
CRS_A = "EPSG:32633"
TRANSFORM = Affine(0.5, 0, 500_000, 0, -0.5, 5_800_000)
NAMES = ["impervious", "building", "low_vegetation", "tree", "car", "clutter", "water"]
COLOURS = {i: (30 * i, 255 - 30 * i, (70 * i) % 256, 255) for i in range(len(NAMES))}


# --- brute force ------------------------------------------------------------------------------------------------------


def brute_owner(fps: Sequence[Rect], height: int, width: int) -> np.ndarray:
    """Per pixel: the scene with the largest distance d, then the larger of its row/column distance, then the first."""
    r = np.arange(height)[:, None] + 0.5
    c = np.arange(width)[None, :] + 0.5
    best = np.full((height, width), -1)
    best_key = np.full((height, width), -np.inf)
    for i, (r0, r1, c0, c1) in enumerate(fps):
        dy, dx = np.minimum(r - r0, r1 - r), np.minimum(c - c0, c1 - c)
        inside = (dy > 0) & (dx > 0)
        key = np.where(inside, np.minimum(dy, dx) * 1e7 + np.maximum(dy, dx), -np.inf)
        better = key > best_key  # strictly: an equal key stays with the scene listed first
        best[better], best_key[better] = i, key[better]
    return best


def paint(owned: Sequence[Sequence[Rect]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The owner map drawn from the rectangles, and how many rectangles cover each pixel."""
    owner, count = np.full((height, width), -1), np.zeros((height, width), int)
    for i, rects in enumerate(owned):
        for r0, r1, c0, c1 in rects:
            owner[r0:r1, c0:c1] = i
            count[r0:r1, c0:c1] += 1
    return owner, count


def assert_exact(fps: Sequence[Rect], height: int, width: int) -> list[list[Rect]]:
    owned = ownership(fps)
    owner, count = paint(owned, height, width)
    assert count.max() <= 1, "rectangles overlap"
    expected = brute_owner(fps, height, width)
    wrong = np.argwhere(owner != expected)
    assert wrong.size == 0, f"{len(wrong)} pixels differ, first {wrong[:3].tolist()} for {fps}"
    return owned


def grid_tiles(n_rows: int, n_cols: int, size: int, overlap: int) -> list[Rect]:
    step = size - overlap
    return [(i * step, i * step + size, j * step, j * step + size) for i in range(n_rows) for j in range(n_cols)]


# --- ownership --------------------------------------------------------------------------------------------------------


def test_a_2x2_grid_is_cut_at_the_middle_of_each_overlap_one_rectangle_per_tile() -> None:
    fps = grid_tiles(2, 2, 200, 64)
    owned = assert_exact(fps, 336, 336)
    assert owned == [[(0, 168, 0, 168)], [(0, 168, 168, 336)], [(168, 336, 0, 168)], [(168, 336, 168, 336)]]


def test_an_odd_overlap_gives_its_middle_line_to_the_first_listed_tile() -> None:
    fps = grid_tiles(2, 2, 100, 21)  # middle line: pixel 89 of the overlap 79..99, equally far from both borders
    owned = assert_exact(fps, 179, 179)
    assert owned == [[(0, 90, 0, 90)], [(0, 90, 90, 179)], [(90, 179, 0, 90)], [(90, 179, 90, 179)]]
    reversed_owned = assert_exact(fps[::-1], 179, 179)  # listed the other way round, the tie changes sides
    assert reversed_owned[0] == [(89, 179, 89, 179)]


def test_touching_tiles_own_their_footprints() -> None:
    fps = grid_tiles(3, 2, 50, 0)
    assert assert_exact(fps, 150, 100) == [[fp] for fp in fps]


def test_holes_between_tiles_stay_unowned() -> None:
    fps = [(0, 40, 0, 40), (0, 40, 60, 100), (50, 90, 0, 100), (30, 70, 30, 70)]
    owned = assert_exact(fps, 90, 100)
    owner, _ = paint(owned, 90, 100)
    assert (owner[40:50, 0:30] == -1).all() and (owner[0:30, 40:60] == -1).all()
    assert owner[35, 35] == 3 and owner[45, 50] == 3  # the middle scene bridges the gap where it lies deepest


def test_a_scene_inside_another_owns_nothing_a_scene_sticking_out_gets_a_staircase() -> None:
    inside = [(0, 300, 0, 300), (100, 200, 100, 200), (5, 105, 150, 250)]  # each edge of theirs is nearer
    assert assert_exact(inside, 300, 300) == [[(0, 300, 0, 300)], [], []]
    out = [(0, 300, 0, 300), (200, 400, 100, 200)]  # half out of the big one: diagonal boundaries, still exact
    owned = assert_exact(out, 400, 300)
    assert len(owned[0]) > 10 and len(owned[1]) > 10


@pytest.mark.parametrize("seed", range(20))
def test_irregular_layouts_match_the_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(200, 900, 2))
    fps: list[Rect] = []
    for _ in range(int(rng.integers(2, 9))):
        h, w = (int(v) for v in rng.integers(20, 500, 2))
        r0, c0 = int(rng.integers(0, height - 10)), int(rng.integers(0, width - 10))
        fps.append((r0, min(r0 + h, height), c0, min(c0 + w, width)))
    if seed % 4 == 0:
        fps.append(fps[0])  # the same footprint twice: the first listed owns it all
    owned = assert_exact(fps, height, width)
    if seed % 4 == 0:
        assert owned[-1] == []


def test_a_20x20_grid_of_large_tiles_gives_400_rectangles_at_the_middle_lines() -> None:
    fps = grid_tiles(20, 20, 10_000, 200)
    owned = ownership(fps)
    assert [len(r) for r in owned] == [1] * 400
    mid = [0] + [i * 9_800 + 100 for i in range(1, 20)] + [19 * 9_800 + 10_000]
    assert owned == [[(mid[i], mid[i + 1], mid[j], mid[j + 1])] for i in range(20) for j in range(20)]


def test_empty_footprints_own_nothing_and_bad_ones_are_refused() -> None:
    assert ownership([(5, 5, 0, 10), (0, 10, 0, 10)]) == [[], [(0, 10, 0, 10)]]
    assert ownership([]) == []
    with pytest.raises(ValueError, match="row0, row1, col0, col1"):
        ownership([(0, 10, 0.5, 10)])  # type: ignore[list-item]


# --- rasters ----------------------------------------------------------------------------------------------------------

LAYOUT: list[Rect] = [
    (0, 140, 0, 200),  # A
    (0, 140, 160, 360),  # B overlaps A by 40 columns
    (0, 140, 360, 620),  # C touches B
    (180, 300, 0, 330),  # D: a gap of 40 rows under A and B
    (100, 300, 300, 620),  # E overlaps B and C; it has a nodata hole where it owns pixels C also covers
]
HEIGHT, WIDTH = 300, 620


def scene_arrays(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A truth, and each scene cut from it with its own class shift (so the owner of each pixel shows)."""
    truth = rng.integers(0, 6, (HEIGHT, WIDTH)).astype(np.uint8)
    arrays = [((truth[r0:r1, c0:c1] + k) % 7).astype(np.uint8) for k, (r0, r1, c0, c1) in enumerate(LAYOUT)]
    arrays[0][10:20, 10:20] = 255  # a hole no other scene covers: stays nodata
    arrays[4][5:40, 40:120] = 255  # E's hole: rows 105..140, columns 340..420, also covered by B and C
    return truth, arrays


def write_scene(path: Path, array: np.ndarray, rect: Rect, crs: str = CRS_A, shift: float = 0.0) -> Path:
    transform = TRANSFORM @ Affine.translation(rect[2] + shift, rect[0])
    return write_geotiff(
        path, array, crs=crs, transform=transform, nodata=255, colormap=COLOURS, tags=class_names_tag(NAMES)
    )


def expected_mosaic(arrays: Sequence[np.ndarray], fps: Sequence[Rect], height: int, width: int) -> np.ndarray:
    """The owner's class; where it has none, the last-listed scene's with data; else 255."""
    owner = brute_owner(fps, height, width)
    out = np.full((height, width), 255, np.uint8)
    for array, (r0, r1, c0, c1) in zip(arrays, fps, strict=True):
        view = out[r0:r1, c0:c1]
        view[array != 255] = array[array != 255]
    for i, (array, (r0, r1, c0, c1)) in enumerate(zip(arrays, fps, strict=True)):
        mine = (owner[r0:r1, c0:c1] == i) & (array != 255)
        out[r0:r1, c0:c1][mine] = array[mine]
    return out


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[Path, list[Path], list[np.ndarray]]:
    folder = tmp_path / "job"
    (folder / "scenes").mkdir(parents=True)
    _, arrays = scene_arrays(np.random.default_rng(7))
    pairs = enumerate(zip(arrays, LAYOUT, strict=True))
    paths = [write_scene(folder / "scenes" / f"s{k}.tif", a, r) for k, (a, r) in pairs]
    return folder, paths, arrays


def read(path: Path, band: int | None = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_vrt_is_the_brute_force_mosaic_with_colours_names_and_nodata(
    scenes: tuple[Path, list[Path], list[np.ndarray]], tmp_path: Path
) -> None:
    folder, paths, arrays = scenes
    result = write_region(paths, folder / "region.vrt")
    expected = expected_mosaic(arrays, LAYOUT, HEIGHT, WIDTH)
    assert (brute_owner(LAYOUT, HEIGHT, WIDTH)[105:140, 340:420] == 4).sum() > 100  # E owns part of its hole
    assert (expected[105:140, 340:360] == arrays[1][105:140, 180:200]).all()  # E's hole filled from B ...
    assert (expected[105:140, 380:420] == arrays[2][105:140, 20:60]).all()  # ... and from C
    assert (expected[10:20, 10:20] == 255).all() and (expected[140:180, 0:300] == 255).all()
    with rasterio.open(folder / "region.vrt") as src:
        assert (src.height, src.width, src.nodata, src.crs) == (HEIGHT, WIDTH, 255, rasterio.crs.CRS.from_string(CRS_A))
        assert src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(1), expected)
        assert read_class_names(src) == NAMES
        assert all(src.colormap(1)[i] == COLOURS[i] for i in COLOURS)
    assert result.cog is None and result.probs_vrt is None and result.warped == ()
    assert result.footprints == tuple(LAYOUT)
    assert [list(r) for r in result.owned] == ownership(LAYOUT)
    assert result.owner(5, 5) == 0 and result.owner(150, 5) is None and result.owner(120, 500) == 4
    assert 'relativeToVRT="1">scenes/s0.tif<' in (folder / "region.vrt").read_text()
    moved = tmp_path / "elsewhere" / "job"
    shutil.move(folder, moved)
    np.testing.assert_array_equal(read(moved / "region.vrt"), expected)


def test_probabilities_follow_the_owned_rectangles(scenes: tuple[Path, list[Path], list[np.ndarray]]) -> None:
    folder, paths, _ = scenes
    rng = np.random.default_rng(3)
    probs, cubes = [], []
    for k, ((r0, r1, c0, c1), label) in enumerate(zip(LAYOUT, paths, strict=True)):
        cube = rng.integers(0, 256, (3, r1 - r0, c1 - c0)).astype(np.uint8)
        with rasterio.open(label) as src:
            probs.append(write_geotiff(folder / f"p{k}.tif", cube, crs=src.crs, transform=src.transform))
        cubes.append(cube)
    result = write_region(paths, folder / "region.vrt", probs=probs)
    assert result.probs_vrt == folder / "region_probs.vrt"
    owner = brute_owner(LAYOUT, HEIGHT, WIDTH)
    expected = np.zeros((3, HEIGHT, WIDTH), np.uint8)
    for i, (cube, (r0, r1, c0, c1)) in enumerate(zip(cubes, LAYOUT, strict=True)):
        mine = owner[r0:r1, c0:c1] == i
        expected[:, r0:r1, c0:c1][:, mine] = cube[:, mine]
    np.testing.assert_array_equal(read(result.probs_vrt, None), expected)


def test_the_cog_has_the_vrt_pixels_tiles_and_overviews(scenes: tuple[Path, list[Path], list[np.ndarray]]) -> None:
    folder, paths, _ = scenes
    result = write_region(paths, folder / "region.vrt", cog=True)
    assert result.cog == folder / "region.tif"
    with rasterio.open(result.cog) as src:
        assert src.driver == "GTiff" and src.profile["tiled"] and src.overviews(1)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.nodata == 255 and read_class_names(src) == NAMES and src.colormap(1)[3] == COLOURS[3]
        np.testing.assert_array_equal(src.read(1), read(folder / "region.vrt"))
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]


def test_a_rerun_replaces_the_outputs(scenes: tuple[Path, list[Path], list[np.ndarray]]) -> None:
    folder, paths, arrays = scenes
    write_region(paths, folder / "region.vrt", cog=True)
    arrays[2][:] = 5
    write_scene(paths[2], arrays[2], LAYOUT[2])
    write_region(paths, folder / "region.vrt", cog=True)
    expected = expected_mosaic(arrays, LAYOUT, HEIGHT, WIDTH)
    np.testing.assert_array_equal(read(folder / "region.vrt"), expected)
    np.testing.assert_array_equal(read(folder / "region.tif"), expected)
    assert sorted(p.name for p in folder.iterdir()) == ["region.tif", "region.vrt", "scenes"]


def test_a_scene_off_the_pixel_grid_is_warped_beside_the_vrt(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a = rng.integers(0, 6, (300, 300)).astype(np.uint8)
    b = np.kron(rng.integers(0, 6, (30, 30)), np.ones((10, 10), int)).astype(np.uint8)  # 10-pixel blocks
    first = write_scene(tmp_path / "a.tif", a, (0, 300, 0, 300))
    second = write_scene(tmp_path / "b.tif", b, (0, 300, 250, 550), shift=0.4)  # 0.4 pixel east of the grid
    result = write_region([first, second], tmp_path / "region.vrt")
    assert result.grid.width == 551 and result.footprints == ((0, 300, 0, 300), (0, 300, 250, 551))
    (copy,) = result.warped
    assert copy.parent == tmp_path / "region_warped" and result.sources == (first, copy)
    with rasterio.open(copy) as src:
        assert src.profile["tiled"] and src.compression.value == "DEFLATE" and src.nodata == 255
        warped = src.read(1)
    np.testing.assert_array_equal(warped[:, :300], b)  # a shift under half a pixel: nearest keeps every pixel
    assert (warped[:, 300] == 255).all()  # the last grid column's centres lie east of it
    mosaic = read(tmp_path / "region.vrt")
    np.testing.assert_array_equal(mosaic[:, :275], a[:, :275])
    np.testing.assert_array_equal(mosaic[:, 275:550], b[:, 25:])
    assert (mosaic[:, 550] == 255).all()


def test_two_crs_the_second_is_warped_onto_the_first_ones_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    truth = np.kron(rng.integers(0, 6, (25, 40)), np.ones((8, 8), int)).astype(np.uint8)  # 200 x 320, 8-px blocks
    t = Affine(2.0, 0, 500_000, 0, -2.0, 5_800_000)
    first = write_geotiff(tmp_path / "a.tif", truth[:, :180], crs=CRS_A, transform=t, nodata=255, colormap=COLOURS)
    src_t = t @ Affine.translation(140, 0)
    part = truth[:, 140:]
    dst_t, w, h = calculate_default_transform(
        CRS_A, "EPSG:32632", part.shape[1], part.shape[0], *rasterio.transform.array_bounds(*part.shape, src_t)
    )
    other = np.full((h, w), 255, np.uint8)
    reproject(
        part,
        other,
        src_transform=src_t,
        src_crs=CRS_A,
        dst_transform=dst_t,
        dst_crs="EPSG:32632",
        src_nodata=255,
        dst_nodata=255,
        resampling=Resampling.nearest,
    )
    second = write_geotiff(tmp_path / "b.tif", other, crs="EPSG:32632", transform=dst_t, nodata=255)
    result = write_region([first, second], tmp_path / "region.vrt")
    grid = result.grid
    assert grid.crs == rasterio.crs.CRS.from_string(CRS_A) and (grid.transform.a, grid.transform.e) == (2.0, -2.0)
    offset = ~t @ (grid.transform.c, grid.transform.f)
    assert all(abs(v - round(v)) < 1e-9 for v in offset)  # on the first raster's pixel grid
    assert grid.width > 320 and len(result.warped) == 1
    col, row = (round(v) for v in offset)
    mosaic = read(tmp_path / "region.vrt")[-row : -row + 200, -col : -col + 320]
    assert mosaic.shape == truth.shape
    uniform = np.ones(truth.shape, bool)  # pixels whose 5 x 5 neighbourhood in the truth is one class
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            shifted = np.roll(truth, (dr, dc), axis=(0, 1))
            uniform &= shifted == truth
    uniform[:3], uniform[-3:], uniform[:, :3], uniform[:, -3:] = False, False, False, False  # the warped edges
    assert uniform.sum() > 20_000
    np.testing.assert_array_equal(mosaic[uniform], truth[uniform])
    np.testing.assert_array_equal(mosaic[:, :120], truth[:, :120])  # where only the first raster lies: exact


def test_region_grid_takes_a_target_crs_and_resolution(scenes: tuple[Path, list[Path], list[np.ndarray]]) -> None:
    _, paths, _ = scenes
    grid = region_grid(paths, to_crs="EPSG:3857", res=2.0)
    assert grid.crs == rasterio.crs.CRS.from_epsg(3857) and (grid.transform.a, grid.transform.e) == (2.0, -2.0)
    assert (
        0.9 * WIDTH * 0.5 / 2 / math.cos(math.radians(52))
        < grid.width
        < 1.2 * WIDTH * 0.5 / 2 / math.cos(math.radians(52))
    )
    coarse = region_grid(paths, res=1.0)
    assert (coarse.width, coarse.height, coarse.transform.c) == (WIDTH // 2, HEIGHT // 2, TRANSFORM.c)


# --- refusals ---------------------------------------------------------------------------------------------------------


def refused(folder: Path, error: type[Exception], pattern: str, paths: Sequence[Path], out: Path, **kw: object) -> None:
    before = listing(folder)
    with pytest.raises(error) as info:
        write_region(paths, out, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and re.search(pattern, message), message
    assert listing(folder) == before


def test_bad_crs_and_resolution_are_refused_before_writing(scenes: tuple[Path, list[Path], list[np.ndarray]]) -> None:
    folder, paths, _ = scenes
    out = folder / "region.vrt"
    with pytest.raises(InputError) as info:
        write_region(paths, out, to_crs="EPSG:99999")
    assert str(info.value) == (
        "--to-crs EPSG:99999: not a coordinate reference system; use e.g. EPSG:32633 or a WKT/PROJ string"
    )
    for res in (0, -1.0, math.nan, math.inf):
        refused(
            folder, InputError, r"^--res \S+: the pixel size must be a positive number.*--res 0\.5", paths, out, res=res
        )
    refused(folder, InputError, "no rasters", [], out)


def test_rasters_that_are_no_labels_are_refused(scenes: tuple[Path, list[Path], list[np.ndarray]]) -> None:
    folder, paths, _ = scenes
    rgb = write_geotiff(folder / "rgb.tif", np.zeros((3, 20, 20), np.uint8), crs=CRS_A, transform=TRANSFORM)
    wide = write_geotiff(folder / "wide.tif", np.zeros((20, 20), np.uint16), crs=CRS_A, transform=TRANSFORM)
    out = folder / "region.vrt"
    refused(folder, InputError, r"rgb\.tif: not a label raster \(3 band\(s\) of uint8\)", [paths[0], rgb], out)
    refused(folder, InputError, r"wide\.tif: not a label raster \(1 band\(s\) of uint16\)", [paths[0], wide], out)
    p3 = write_geotiff(folder / "p3.tif", np.zeros((3, 140, 200), np.uint8), crs=CRS_A, transform=TRANSFORM)
    p2 = write_geotiff(
        folder / "p2.tif",
        np.zeros((2, 140, 200), np.uint8),
        crs=CRS_A,
        transform=TRANSFORM @ Affine.translation(160, 0),
    )
    refused(folder, InputError, r"p2\.tif: 2 band\(s\) of uint8, but \S+p3\.tif has 3", paths[:2], out, probs=[p3, p2])
    refused(
        folder, InputError, r"p3\.tif: not on the grid of its label raster \S+s1\.tif", paths[:2], out, probs=[p3, p3]
    )
    refused(folder, InputError, "1 probability rasters for 2 label rasters", paths[:2], out, probs=[p3])


def test_bad_output_locations_are_refused(scenes: tuple[Path, list[Path], list[np.ndarray]]) -> None:
    folder, paths, _ = scenes
    (folder / "afile").write_text("x")
    (folder / "notes.vrt").write_text("my notes")
    refused(folder, InputError, r"folder \S+missing does not exist; create it first", paths, folder / "missing/r.vrt")
    refused(folder, InputError, r"afile is a file, not a folder; fix the path", paths, folder / "afile" / "r.vrt")
    refused(folder, InputError, r"name it with \.vrt", paths, folder / "region.tif")
    refused(folder, InputError, r"notes\.vrt exists and is not a VRT", paths, folder / "notes.vrt")
    write_region(paths[:2], folder / "first.vrt")  # a mosaic joined again with another scene: not onto itself
    refused(
        folder,
        InputError,
        r"first\.vrt is an input of this run",
        [folder / "first.vrt", paths[2]],
        folder / "first.vrt",
    )
    (folder / "region_warped").write_text("x")
    shifted = write_scene(folder / "shifted.tif", np.zeros((10, 10), np.uint8), (0, 10, 0, 10), shift=0.5)
    refused(
        folder,
        InputError,
        r"region_warped is a file where a folder is expected",
        [paths[0], shifted],
        folder / "region.vrt",
    )


def test_a_region_too_big_for_the_disk_is_refused_before_writing(
    scenes: tuple[Path, list[Path], list[np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, paths, _ = scenes
    usage = shutil.disk_usage(folder)
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda _: usage._replace(free=100_000))
    refused(
        folder,
        DiskFullError,
        r"region\.vrt: not enough free space for the mosaic and its Cloud-Optimized "
        r"GeoTIFF: needs about [\d.]+ KB, 100 KB free in \S+; free some space or write elsewhere",
        paths,
        folder / "region.vrt",
        cog=True,
    )
    result = write_region(paths, folder / "region.vrt")  # the VRT alone fits
    assert isinstance(result, RegionOutput) and result.vrt.is_file()
