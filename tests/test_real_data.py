"""The real-data helper: a missing ../shared/data/real fails with where it is expected, and never skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest


def test_missing_real_data_fails_naming_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    absent = tmp_path / "shared" / "data" / "real"
    monkeypatch.setattr(conftest, "REAL_DATA", absent)
    with pytest.raises(pytest.fail.Exception) as failure:
        conftest.require_real_data()
    assert not isinstance(failure.value, pytest.skip.Exception)
    assert str(absent) in failure.value.msg
    assert "../shared/data/real" in failure.value.msg


def test_present_real_data_is_the_folder_of_samples(real_data: Path, request: pytest.FixtureRequest) -> None:
    assert real_data == conftest.REAL_DATA
    assert (real_data / "README.md").is_file() and (real_data / "cogeo.tif").is_file()
    assert request.node.get_closest_marker("real_data")  # using the fixture marks the test
