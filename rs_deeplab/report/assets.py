"""The JavaScript libraries vendored into the package (``static/``) and how a page gets its own copy of them.

Each library sits in ``static/<name>/`` with its licence file, copied unchanged from the npm registry (versions and
checksums in ``static/VERSIONS.md``); ``static/rs_deeplab/`` holds this project's own page scripts and styles. A page
copies what it uses into its folder, so it opens from ``file://`` with no network and keeps working after the
package is upgraded.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

STATIC = Path(__file__).with_name("static")
"""The package data folder (shipped in wheels through ``[tool.setuptools.package-data]``)."""
LIBRARIES: dict[str, tuple[str, ...]] = {
    "leaflet": ("leaflet.js", "leaflet.css", "images", "LICENSE"),
    "proj4": ("proj4.js", "LICENSE.md"),
    "rs_deeplab": (),
}
"""Per vendored folder, the files a page needs (empty: the whole folder)."""


def copy_assets(dest: Path, libraries: Sequence[str] = tuple(LIBRARIES)) -> list[Path]:
    """Copy ``libraries`` (folders of ``static/``) into ``dest/<name>/``; return the folders written.

    Raises:
        FileNotFoundError: The package was installed without its data (a packaging bug, not a user error).
    """
    written = []
    for name in libraries:
        source, target = STATIC / name, dest / name
        target.mkdir(parents=True, exist_ok=True)
        for entry in LIBRARIES[name] or tuple(p.name for p in sorted(source.iterdir())):
            src = source / entry
            if src.is_dir():
                shutil.copytree(src, target / entry, dirs_exist_ok=True)
            else:
                shutil.copy2(src, target / entry)
        written.append(target)
    return written
