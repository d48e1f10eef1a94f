"""A page that does not fit (full disk, quota, ``ulimit -f``) is one line naming it, exit 2, and nothing half-written.

As in ``tests/cli/test_diskspace.py``: a file-size limit (``RLIMIT_FSIZE``) stands in for the full disk, and the real
script runs as a subprocess: ``evaluate.py`` in scene mode, whose page copies the map library (Python's own writes),
then builds an error GeoTIFF (GDAL and libtiff) and its PNG pyramid in the page's temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.report.assets import STATIC
from tests.cli.test_diskspace import assert_no_space, run


def page_files(folder: Path) -> dict[str, bytes]:
    """Every file of the page ``rep.html`` and its folder, by path, with its bytes."""
    found = {p.relative_to(folder).as_posix(): p.read_bytes() for p in (folder / "rep_files").rglob("*") if p.is_file()}
    return {**found, "rep.html": (folder / "rep.html").read_bytes()}


def test_evaluate_page_over_the_limit_is_one_line_and_leaves_no_page(tmp_path: Path) -> None:
    rng = np.random.default_rng(27)
    for name in ("pred", "truth"):  # random classes: the error raster is far over 200 KB
        write_geotiff(
            tmp_path / f"{name}.tif",
            rng.integers(0, 6, (1024, 1024), dtype=np.uint8),
            crs="EPSG:32633",
            nodata=255,
            transform=from_origin(0, 1024, 1, 1),
        )
    args = ["--pred", "pred.tif", "--truth", "truth.tif", "--class-names", "a,b,c,d,e,f", "--out", "rep", "-q"]
    library = (STATIC / "leaflet" / "leaflet.js").stat().st_size
    inputs = sorted(p.name for p in tmp_path.iterdir())

    assert library < 200_000
    for limit in (library // 2, 200_000):  # stopped copying the library; stopped in the error raster (GDAL)
        stopped = run("evaluate", args, tmp_path, limit=limit)
        assert_no_space(stopped, tmp_path / "rep.html", needs=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*inputs, "rep"])  # no page, no temporary
        assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["scene_scores.json", "scene_scores.md"]

    written = run("evaluate", args, tmp_path)  # space freed: the same command writes the page
    assert written.returncode == 0, written.stderr
    before = page_files(tmp_path)
    assert any(name.endswith(".png") for name in before)
    assert max(map(len, before.values())) < 200_000  # under 200 KB, only the error raster did not fit

    stopped = run("evaluate", args, tmp_path, limit=library // 2)  # a new page that does not fit: the old one stays
    assert_no_space(stopped, tmp_path / "rep.html", needs=False)
    assert page_files(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*inputs, "rep", "rep.html", "rep_files"])
