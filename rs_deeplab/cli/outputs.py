"""Output-location checks made before any work: a file or folder the run can write, that is no input."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import PathLike, is_vsi
from rs_deeplab.remote.scenes import is_url

MAGIC: dict[str, tuple[bytes, ...]] = {
    "GeoTIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "GeoPackage": (b"SQLite format 3\x00",),
    "GPKG": (b"SQLite format 3\x00",),
    "GeoJSON": (b"{",),
    "GeoParquet": (b"PAR1",),
}
"""The first bytes of each output kind: an existing file that starts otherwise is someone's other data."""


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _local_inputs(inputs: Iterable[PathLike | None]) -> list[Path]:
    return [Path(p) for p in inputs if p is not None and not is_url(p) and not is_vsi(p)]


def same_path(a: Path, b: Path) -> bool:
    """Whether two local paths name the same file (a hard link or symlink counts; nothing need exist)."""
    if a.exists() and b.exists():
        with contextlib.suppress(OSError):
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_writable_folder(folder: Path, what: str) -> None:
    """Create and remove a small file in ``folder`` to show the run can write there.

    Raises:
        InputError: The folder refuses new files (permissions, a read-only or virtual file system).
    """
    probe = folder / f".rs_deeplab-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise InputError(
            f"{what}: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
    finally:  # also when Ctrl-C lands between the create and the close
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_output_file(
    path: PathLike, *, what: str, kind: str | None = None, inputs: Iterable[PathLike | None] = ()
) -> None:
    """Refuse an output file the run could not (or must not) write, before any work starts.

    Args:
        path: The file the run will write (through a temporary sibling, then a rename).
        what: How the user named it, e.g. ``--out labels.tif``; starts the error message.
        kind: A key of :data:`MAGIC`: an existing file at ``path`` must be of this kind to be replaced.
        inputs: The run's inputs; the output may not be one of them.

    Raises:
        InputError: ``path`` is a folder, an input, an existing file of another kind; its folder is missing, is a
            file, or cannot be written to.
    """
    out = Path(path)
    if out.is_dir():
        raise InputError(f"{what}: {out} is a folder where a file is expected; name a file in it")
    for source in _local_inputs(inputs):
        if same_path(out, source):
            raise InputError(f"{what}: {out} is an input of this run and would be overwritten; choose another name")
    existing = nearest_existing(out.parent)
    if not existing.is_dir():
        raise InputError(f"{what}: {existing} is a file, not a folder; fix the path")
    if existing != out.parent and existing.resolve() != out.parent.resolve():
        raise InputError(f"{what}: folder {out.parent} does not exist; create it first")
    check_writable_folder(out.parent, what)
    if kind is not None and out.is_file() and out.stat().st_size > 0:
        try:
            with out.open("rb") as f:
                head = f.read(16).lstrip()
        except OSError as exc:
            raise InputError(f"{what}: {out} exists and cannot be read ({exc.strerror}); remove it") from None
        if not head.startswith(MAGIC[kind]):
            raise InputError(f"{what}: {out} exists and is not a {kind}; remove it or choose another name")


def check_output_folder(path: PathLike, *, what: str) -> None:
    """Refuse a report folder that is a file, lies under a file, or cannot be written (it may not exist yet).

    Raises:
        InputError: As above.
    """
    out = Path(path)
    existing = nearest_existing(out)
    if not existing.is_dir():
        if existing != out:
            raise InputError(f"{what}: {existing} is a file, not a folder; fix the path")
        raise InputError(f"{what}: {out} is a file where a folder is expected; name a folder")
    check_writable_folder(existing, what)
