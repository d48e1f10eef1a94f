"""Take the screenshots of the demo's three pages (README, docs/train.md, infer.md, evaluate.md) in headless chromium.

After ``make demo``, ``python docs/page_screenshots.py`` opens ``runs/demo/report.html``, ``demo_out/labels.html``
and ``demo_out/scores.html`` (or the pages given with ``--training``, ``--prediction``, ``--evaluation``) from
``file://`` and writes ``docs/demo_training_page.png``, ``docs/demo_prediction_page.png`` and
``docs/demo_evaluation_page.png`` (256-colour PNGs). The browser is Debian's ``chromium`` (``$RS_DEEPLAB_CHROMIUM``
to name another); nothing is downloaded. A page that logs an error, or asks for a file outside its folder, is
refused.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from PIL import Image

DOCS = Path(__file__).resolve().parent
VIEWPORT = {"width": 1280, "height": 860}
PAGES = {
    "training": Path("runs/demo/report.html"),
    "prediction": Path("demo_out/labels.html"),
    "evaluation": Path("demo_out/scores.html"),
}
TILES_LOADED = (
    "Array.from(document.querySelectorAll('img.leaflet-tile')).every(i => i.complete && "
    "i.classList.contains('leaflet-tile-loaded'))"
)


def chromium() -> str:
    """The browser to drive: ``$RS_DEEPLAB_CHROMIUM``, else ``chromium`` on the PATH."""
    found = os.environ.get("RS_DEEPLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).is_file():
        raise SystemExit("error: no chromium browser: apt-get install chromium (or set RS_DEEPLAB_CHROMIUM)")
    return found


def shoot(browser: Any, page_path: Path, out: Path) -> None:
    """Open ``page_path``, wait for it (and its map's tiles) to be drawn, and save the viewport as ``out``."""
    if not page_path.is_file():
        raise SystemExit(f"error: {page_path}: no such page; run `make demo` first (or pass its path)")
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    try:
        page = context.new_page()
        problems: list[str] = []
        folder = page_path.resolve().with_name(f"{page_path.stem}_files").as_uri() + "/"
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on(
            "request",
            lambda r: (
                None
                if r.url.startswith(folder) or r.url == page_path.resolve().as_uri()
                else problems.append(f"outside the page's folder: {r.url}")
            ),
        )
        page.goto(page_path.resolve().as_uri())
        page.wait_for_function("window.RS && window.RS.ready === true")
        page.wait_for_function(TILES_LOADED)
        page.wait_for_timeout(400)  # Leaflet fades tiles in over 200 ms: the picture, not a test, waits for it
        if problems:
            raise SystemExit(f"error: {page_path}: {problems[0]}")
        picture = Image.open(io.BytesIO(page.screenshot(animations="disabled"))).convert("RGB")
        picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    """Write the three screenshots; print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for kind, default in PAGES.items():
        parser.add_argument(f"--{kind}", type=Path, default=default, help=f"the {kind} page (default: {default})")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder of the PNGs (default: docs/)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            for kind in PAGES:
                out = args.out / f"demo_{kind}_page.png"
                shoot(browser, getattr(args, kind), out)
                print(out)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
