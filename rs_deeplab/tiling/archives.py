"""Files of a dataset folder, extracted or inside zip archives read in place through GDAL's ``/vsizip/``."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rs_deeplab.cli.errors import InputError


@dataclass(frozen=True)
class Entry:
    """One file under a dataset root, on disk or a zip member.

    Attributes:
        path: Path GDAL opens: a file path, or ``/vsizip//abs/archive.zip/member``.
        name: The file name.
        folders: Folder names from the root down to the file; an archive counts as a folder of its stem.
    """

    path: str
    name: str
    folders: tuple[str, ...]

    def in_folder(self, *words: str) -> bool:
        """Whether any enclosing folder (or archive) name contains one of ``words`` (case-insensitive)."""
        return any(w.lower() in f.lower() for f in self.folders for w in words)


def _zip_entries(root: Path, archive: Path) -> list[Entry]:
    """The members of ``archive``; a corrupt or truncated archive is a one-line :class:`InputError`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{archive}: not a readable zip archive ({exc}); download it again") from None
    outer = (*archive.relative_to(root).parent.parts, archive.stem)
    entries = []
    for name in names:
        member = PurePosixPath(name)
        vsi = f"/vsizip/{archive.resolve()}/{name}"
        entries.append(Entry(vsi, member.name, (*outer, *member.parent.parts)))
    return entries


def list_entries(root: Path, suffixes: tuple[str, ...]) -> list[Entry]:
    """Files under ``root`` with one of ``suffixes``, extracted ones first, then members of every ``*.zip``.

    Raises:
        InputError: A zip archive under ``root`` cannot be read.
    """
    entries = [
        Entry(str(p), p.name, p.relative_to(root).parent.parts)
        for p in sorted(root.rglob("*"))
        if p.suffix.lower() in suffixes and p.is_file()
    ]
    for archive in sorted(root.rglob("*.zip")):
        entries.extend(e for e in _zip_entries(root, archive) if PurePosixPath(e.name).suffix.lower() in suffixes)
    return entries
