"""infer.py writes the prediction page beside its outputs (and not under --no-report); the page opens clean."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyogrio
import pytest

from pipelines.infer import main
from tests.report.conftest import Visit, browser, open_page  # noqa: F401  (the browser fixtures, shared)

pytestmark = pytest.mark.slow


def test_infer_writes_the_page(
    demo_run: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    open_browser: Callable[[Path], Visit] = request.getfixturevalue("open_page")
    out = tmp_path / "city.gpkg"
    args = [str(demo_run["scene"]), "--checkpoint", str(demo_run["checkpoint"]), "--runtime", "torch", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prediction page" in printed and str(tmp_path / "city.html") in printed and "MB in" in printed
    visit = open_browser(tmp_path / "city.html")
    visit.wait_for_tiles()
    assert visit.errors == [] and visit.outside() == []
    card = visit.page.locator("table.card").inner_text()
    assert "deeplabv3plus" in card and str(demo_run["checkpoint"]) in card and "TTA" in card
    table = pyogrio.read_dataframe(out, layer="labels", read_geometry=False)
    truth = table.groupby("class_id")["area_m2"].sum()
    for row in visit.page.locator("table.legend tbody tr").all():
        class_id = int(row.get_attribute("data-class") or -1)
        assert float(row.get_attribute("data-area") or "nan") == pytest.approx(truth.get(class_id, 0.0), rel=1e-3)

    quiet = tmp_path / "quiet"
    quiet.mkdir()
    assert main([*args, "--out", str(quiet / "q.gpkg"), "--no-report"]) == 0
    assert not (quiet / "q.html").exists() and not (quiet / "q_files").exists()
