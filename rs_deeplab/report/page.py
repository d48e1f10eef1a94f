"""What every page shares: the output checks, the atomic write of a page and its folder, HTML helpers.

A page ``x.html`` keeps everything it loads in ``x_files/`` beside it (libraries, tiles, data scripts) and refers to
it by relative URLs only, so it opens from ``file://`` with no network and no request leaves that folder. Data goes
into ``<script>`` files that set a global (browsers refuse ``fetch`` of ``file://`` URLs). :func:`write_page`
builds the folder and the page under temporary names, then renames the folder and the page: a reader sees the old
page or the new one, never half of one, and a failed write leaves the old page as it was and no temporary behind. A
write that fails for lack of space (full disk, quota, ``ulimit -f``; also inside GDAL or libtiff) is the project's
one line naming the page (:func:`rs_deeplab.cli.diskspace.space_checked`).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rs_deeplab.cli.diskspace import space_checked
from rs_deeplab.cli.errors import InputError
from rs_deeplab.cli.outputs import nearest_existing
from rs_deeplab.report.assets import copy_assets


def files_folder(page: Path) -> Path:
    """The folder that holds a page's libraries and data: ``x_files/`` beside ``x.html``."""
    return page.with_name(f"{page.stem}_files")


def check_page_path(page: Path) -> None:
    """Check that ``page`` and its folder can be written (before any expensive work).

    Raises:
        InputError: The folder is missing or not writable, or the page or its folder's name is taken by the wrong
            kind of file; one line naming the path and the fix.
    """
    parent = page.parent if str(page.parent) else Path(".")
    if not parent.is_dir():
        existing = nearest_existing(parent)
        if not existing.is_dir():
            raise InputError(f"{page}: cannot write the page: {existing} is a file, not a folder; fix the path")
        raise InputError(f"{page}: cannot write the page: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(
            f"{page}: cannot write the page: folder {parent} is not writable; choose another --out or pass --no-report"
        )
    if page.is_dir():
        raise InputError(f"{page}: cannot write the page: a folder has that name; move it or pass --no-report")
    folder = files_folder(page)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: cannot write the page's folder: a file has that name; move it or pass --no-report")


@dataclass(frozen=True)
class PageOutput:
    """A written page: its path, its folder, and the folder's size in files and bytes."""

    page: Path
    folder: Path
    files: int
    bytes: int

    def size_text(self) -> str:
        """The folder's size for a summary line, e.g. ``3.2 MB in 412 files``."""
        return f"{self.bytes / 1e6:.1f} MB in {self.files} files"


def folder_size(folder: Path) -> tuple[int, int]:
    """Files and bytes under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def write_page(
    page: Path, build: Callable[[Path], str], libraries: tuple[str, ...] = ("leaflet", "proj4", "rs_deeplab")
) -> PageOutput:
    """Write ``page`` and its folder atomically.

    Args:
        page: The ``.html`` path.
        build: Called with the temporary folder (libraries already copied into ``lib/``); writes its data there and
            returns the page's HTML, which refers to the folder as ``<stem>_files/``.
        libraries: Folders of ``static/`` the page loads.

    Raises:
        DiskFullError: The folder or the page did not fit (disk, quota or file-size limit); one line naming the
            page. Nothing is left: the old page and folder stay as they were.
    """
    check_page_path(page)
    folder = files_folder(page)
    temporary = page.with_name(f".{folder.name}.partial-{os.getpid()}")
    partial = page.with_name(f".{page.name}.partial-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        with space_checked(page):  # everything that takes space; the renames below take none
            temporary.mkdir()
            copy_assets(temporary / "lib", libraries)
            partial.write_text(build(temporary), encoding="utf-8")
        old = page.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        temporary.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(partial, page)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        partial.unlink(missing_ok=True)
    files, size = folder_size(folder)
    return PageOutput(page, folder, files, size + page.stat().st_size)


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def js_global(name: str, value: Any) -> str:
    """A script that sets ``window[name]`` to ``value`` (JSON), safe to inline in a page or to write as a file."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    text = text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"window[{json.dumps(name)}] = {text};\n"


def html_page(title: str, folder: str, body: str, styles: tuple[str, ...], scripts: tuple[str, ...]) -> str:
    """A whole HTML page: ``styles`` and ``scripts`` are paths under the page's folder ``folder``."""
    links = "".join(f'<link rel="stylesheet" href="{esc(folder)}/{esc(s)}">\n' for s in styles)
    tags = "".join(f'<script src="{esc(folder)}/{esc(s)}"></script>\n' for s in scripts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n{links}</head>\n<body>\n{body}\n{tags}"
        "</body>\n</html>\n"
    )
