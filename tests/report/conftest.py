"""The browser the page tests share: Debian's headless chromium driven by Playwright, one launch per session.

``open_page(path)`` loads a page from ``file://`` and records every request URL and every console error or
uncaught exception, so a test can assert that nothing left the page's folder and nothing failed. The browser is
``$RS_DEEPLAB_CHROMIUM``, else ``chromium`` on the PATH, else ``/usr/bin/chromium``; none is ever downloaded. A
missing browser skips these tests on a workstation and fails them where ``RS_DEEPLAB_REQUIRE_BROWSER=1`` (CI:
``.ci/run`` installs chromium and sets it).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

VIEWPORT = {"width": 1000, "height": 700}


def chromium_path() -> str | None:
    """The chromium executable the tests drive, or None."""
    for candidate in (os.environ.get("RS_DEEPLAB_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


_RUNNING: dict[str, Any] = {}
"""The browser of this session: a test module outside tests/report that imports these fixtures (e.g.
``tests/inference/writing/test_report_page.py``) gets its own fixture instance, which must reuse it (Playwright's
sync API cannot start twice in one thread)."""


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless chromium (Playwright ``Browser``), shared by the session."""
    if "browser" in _RUNNING:
        yield _RUNNING["browser"]
        return
    executable = chromium_path()
    if executable is None:
        message = "no chromium browser: apt-get install chromium (or set RS_DEEPLAB_CHROMIUM)"
        if os.environ.get("RS_DEEPLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        _RUNNING["browser"] = launched
        try:
            yield launched
        finally:
            _RUNNING.clear()
            launched.close()


@dataclass
class Visit:
    """A page open in the browser, with what it asked for and what went wrong."""

    page: Any
    path: Path
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def outside(self) -> list[str]:
        """Requested URLs that are neither the page nor inside its folder ``<stem>_files/``."""
        inside = (self.path.resolve().as_uri(), self.path.resolve().with_name(f"{self.path.stem}_files").as_uri() + "/")
        return [u for u in self.requests if not (u == inside[0] or u.startswith(inside[1]))]

    def wait_for_tiles(self) -> None:
        """Wait until every tile the map asked for has loaded and faded in."""
        self.page.wait_for_function(
            "document.querySelectorAll('img.leaflet-tile').length > 0 && "
            "Array.from(document.querySelectorAll('img.leaflet-tile')).every(i => i.complete && "
            "i.classList.contains('leaflet-tile-loaded'))"
        )
        self.page.wait_for_timeout(350)  # Leaflet's 200 ms fade-in

    def screenshot(self, selector: str = "#map") -> np.ndarray:
        """An element's pixels as an ``H × W × 3`` uint8 array."""
        png = self.page.locator(selector).screenshot(animations="disabled")
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="session")
def open_page(browser: Any) -> Iterator[Callable[[Path], Visit]]:
    """``open_page(path)``: a fresh browser context on ``path`` (``file://``), ready (``window.RS.ready``)."""
    contexts: list[Any] = []

    def visit(path: Path) -> Visit:
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        contexts.append(context)
        page = context.new_page()
        result = Visit(page, path)
        page.on("request", lambda r: result.requests.append(r.url))
        page.on("console", lambda m: result.errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: result.errors.append(str(e)))
        page.on("requestfailed", lambda r: result.errors.append(f"request failed: {r.url}"))
        page.goto(path.resolve().as_uri())
        page.wait_for_function("window.RS && window.RS.ready === true")
        return result

    yield visit
    for context in contexts:
        context.close()
