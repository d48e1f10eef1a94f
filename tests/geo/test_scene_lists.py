"""Scene arguments as glob patterns and text files (``rs_deeplab.geo.scene_lists``), and through infer.py and
tile.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.infer import main as infer_main
from pipelines.tile import main as tile_main
from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.scene_lists import expand_scenes
from rs_deeplab.tiling.index import read_index
from tests.badkit import listing
from tests.conftest import RasterFactory

URLS = [
    "https://example.org/cogs/a*.tif?sig=x[1]",
    "s3://bucket/tiles/*.tif",
    "gs://b/k.tif",
    "/vsicurl/https://h/*.tif",
    "/vsizip/archive.zip/*.tif",
    "https://example.org/item.json",
]


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"II*\0")  # a TIFF header: never opened here


@pytest.fixture
def region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with scenes at three depths (names out of creation order) and a folder that matches."""
    touch(
        *(
            tmp_path / p
            for p in (
                "tiles/b.tif",
                "tiles/a.tif",
                "tiles/north/c.tif",
                "tiles/north/deep/a.tif",
                "tiles/notes.md",
                "tiles/.hidden.tif",
                "other/z.tif",
            )
        )
    )
    (tmp_path / "tiles" / "folder.tif").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_globs_expand_sorted_recursive_and_in_argument_order(region: Path) -> None:
    assert expand_scenes(["tiles/*.tif"]) == ["tiles/a.tif", "tiles/b.tif"]  # no folder, no hidden file
    assert expand_scenes(["tiles/**/*.tif"]) == [
        "tiles/a.tif",
        "tiles/b.tif",
        "tiles/north/c.tif",
        "tiles/north/deep/a.tif",
    ]
    assert expand_scenes(["other/z.tif", "tiles/?.tif", "missing.tif"]) == [
        "other/z.tif",
        "tiles/a.tif",
        "tiles/b.tif",
        "missing.tif",  # plain paths pass as they are (checked later)
    ]
    names = [f"grid/s{(i * 17) % 40:02d}.tif" for i in range(40)]  # created out of order: listings are not sorted
    touch(*(region / n for n in names))
    assert expand_scenes(["grid/*.tif"]) == sorted(names)
    absolute = str(region / "tiles" / "north" / "**" / "*.tif")
    assert expand_scenes([absolute]) == [str(region / "tiles/north/c.tif"), str(region / "tiles/north/deep/a.tif")]
    assert expand_scenes([]) == []


def test_a_file_named_like_a_pattern_is_that_file(region: Path) -> None:
    touch(region / "odd[1].tif", region / "odd1.tif")
    assert expand_scenes(["odd[1].tif"]) == ["odd[1].tif"]
    assert expand_scenes(["odd[0-9].tif"]) == ["odd1.tif"]


def test_urls_and_gdal_paths_are_never_globbed_or_read(region: Path) -> None:
    assert expand_scenes(URLS) == URLS
    assert expand_scenes(["https://example.org/scenes.txt"]) == ["https://example.org/scenes.txt"]


def test_text_file_with_comments_blank_lines_relative_paths_urls_and_globs(region: Path) -> None:
    lists = region / "lists"
    lists.mkdir()
    touch(lists / "local.tif")
    text = [
        "# scenes of the northern district",
        "",
        "  ../tiles/b.tif  ",
        "local.tif",
        "\t",
        str(region / "other/z.tif"),
        "   # an indented comment",
        "https://example.org/x.tif?sig=a#b",
        "../tiles/north/**/*.tif",
    ]
    (lists / "north.txt").write_text("\r\n".join(text) + "\r\n", encoding="utf-8-sig")  # Windows editors: BOM, CRLF
    expected = [
        "lists/../tiles/b.tif",
        "lists/local.tif",
        str(region / "other/z.tif"),
        "https://example.org/x.tif?sig=a#b",
        "lists/../tiles/north/c.tif",
        "lists/../tiles/north/deep/a.tif",
    ]
    assert expand_scenes(["@lists/north.txt"]) == expected
    assert expand_scenes(["lists/north.txt"]) == expected  # .txt without @
    (lists / "north.lst").write_text("local.tif\n")
    (lists / "any.name").write_text("local.tif\n")
    assert expand_scenes(["tiles/a.tif", "lists/north.lst"]) == ["tiles/a.tif", "lists/local.tif"]
    assert expand_scenes(["@lists/any.name"]) == ["lists/local.tif"]


def problem(args: list[str]) -> str:
    with pytest.raises(InputError) as caught:
        expand_scenes(args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_globs_and_lists_are_one_line_naming_the_fix(region: Path) -> None:
    assert problem(["tiles/*.jp2"]) == (
        "no file matches 'tiles/*.jp2' (quote the pattern so the shell passes it on; check the folder)"
    )
    assert problem(["nowhere/**/*.tif"]).startswith("no file matches 'nowhere/**/*.tif'")
    assert problem(["@scenes.txt"]) == "scene list scenes.txt: no such file; pass a text file with one scene per line"
    assert problem(["scenes.lst"]).startswith("scene list scenes.lst: no such file")
    assert problem(["@tiles"]) == "scene list tiles is a folder; pass a text file with one scene per line"
    assert problem(["@tiles/a.tif"]).startswith("scene list tiles/a.tif is not a text file (binary data)")
    (region / "latin1.txt").write_bytes("tiles/\xe9t\xe9.tif\n".encode("latin-1"))
    assert "is not a text file" in problem(["latin1.txt"])
    assert problem(["@https://example.org/scenes.txt"]).endswith("download it and pass the local copy")

    (region / "empty.txt").write_text("# nothing yet\n\n   \n")
    assert problem(["empty.txt"]) == (
        "scene list empty.txt lists no scene (only blank lines and # comments); add one per line"
    )
    lines = ["tiles/a.tif", "", "# next", "tiles/b.tif", "tiles/x.tif", "also/missing.tif"]
    (region / "scenes.txt").write_text("\n".join(lines))
    assert problem(["scenes.txt"]) == "scenes.txt line 5: tiles/x.tif does not exist; fix or remove the line"
    (region / "lists").mkdir()
    (region / "lists" / "scenes.txt").write_text("tiles/a.tif\n")  # relative to lists/, not to the working folder
    assert problem(["@lists/scenes.txt"]) == (
        "lists/scenes.txt line 1: tiles/a.tif does not exist (looked for lists/tiles/a.tif: relative paths are "
        "read from the list's folder); fix or remove the line"
    )
    (region / "lists" / "globs.txt").write_text("../tiles/a.tif\n../tiles/*.jp2\n")
    assert problem(["@lists/globs.txt"]) == (
        "lists/globs.txt line 2: no file matches '../tiles/*.jp2' (relative patterns are read from the list's folder)"
    )
    (region / "lists" / "nested.txt").write_text("@globs.txt\n")
    assert problem(["lists/nested.txt"]).startswith("lists/nested.txt line 1: @globs.txt: lists do not nest")


def test_a_scene_given_twice_after_expansion_names_it_and_both_origins(region: Path) -> None:
    (region / "scenes.txt").write_text("tiles/a.tif\n\nhttps://h/x.tif\n")
    assert problem(["tiles/*.tif", "scenes.txt"]) == (
        "tiles/a.tif is listed twice (by pattern 'tiles/*.tif' and at scenes.txt line 1); give each scene once"
    )
    assert problem(["tiles/a.tif", "tiles/**/a.tif"]) == (
        "tiles/a.tif is listed twice (as an argument and by pattern 'tiles/**/a.tif'); give each scene once"
    )
    assert (
        problem(["tiles/a.tif", "./tiles/../tiles/a.tif"])
        == "./tiles/../tiles/a.tif is listed twice; give each scene once"
    )
    assert problem(["@scenes.txt", "/vsicurl/https://h/x.tif"]) == (
        "/vsicurl/https://h/x.tif is listed twice (at scenes.txt line 3 and as an argument); give each scene once"
    )
    assert expand_scenes(["tiles/a.tif", "tiles/north/deep/a.tif", "https://h/x.tif", "https://g/x.tif"])  # distinct


def test_infer_refuses_bad_scene_lists_before_any_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No checkpoint anywhere (no runs/, a --checkpoint that does not exist): the scenes' problem is the one line."""
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "tiles" / "a.tif")
    (tmp_path / "scenes.txt").write_text("tiles/a.tif\ntiles/gone.tif\n")
    out = tmp_path / "maps"
    out.mkdir()
    before = listing(tmp_path)
    cases = [
        (["tiles/*.jp2"], "no file matches 'tiles/*.jp2' (quote the pattern"),
        (["@scenes.txt"], "scenes.txt line 2: tiles/gone.tif does not exist"),
        (["tiles/a.tif", "tiles/*.tif"], "tiles/a.tif is listed twice (as an argument and by pattern"),
    ]
    for scenes, message in cases:
        for checkpoint in ([], ["--checkpoint", str(tmp_path / "none.pt")]):
            assert infer_main([*scenes, "--out", str(out / "city.gpkg"), *checkpoint, "--device", "cpu"]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err and "checkpoint" not in err, err
    assert listing(tmp_path) == before


def test_tile_cuts_the_scenes_of_a_glob_and_a_list(
    make_raster: RasterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = np.arange(3 * 40 * 40, dtype=np.uint32).reshape(3, 40, 40).astype(np.uint8)
    for name in ("ortho/west/w1.tif", "ortho/east/e1.tif", "ortho/east/e2.tif"):
        make_raster(image, name)
    (tmp_path / "ortho" / "east.txt").write_text("# east\neast/e2.tif\n")
    monkeypatch.chdir(tmp_path)
    assert tile_main(["ortho/west/*.tif", "ortho/east.txt", "--size", "32", "--workers", "1", "-q"]) == 0
    tiles, _ = read_index(tmp_path / "tiles" / "index.gpkg")
    assert set(tiles.scene) == {"e2", "w1"} and len(tiles) == 2 * 4  # 40² at 32: 2 × 2 crops each
    assert tile_main(["ortho/**/*.tif", "ortho/east.txt", "--size", "32", "--out", "again", "-q"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "e2.tif is listed twice (by pattern 'ortho/**/*.tif' and at ortho/east.txt line 2)" in err
    )
    assert not (tmp_path / "again").exists()
