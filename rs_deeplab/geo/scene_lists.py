"""Scene arguments for many scenes at once: glob patterns and text files listing scenes, expanded to one list.

A scripts' ``SCENE`` argument may be, besides a path, URL, GDAL path or STAC Item (passed on unchanged):

- a glob pattern, quoted so the shell passes it on (``'tiles/**/*.tif'``; ``**`` matches any depth), expanded to
  the files it matches in sorted order (folders and hidden files left out). A URL or ``/vsi...`` path is never
  globbed, and an existing file whose name holds ``*``, ``?`` or ``[`` is that file;
- a text file listing scenes, one per line: ``@scenes.txt`` (any name), or a plain argument ending in ``.txt`` or
  ``.lst``. Blank lines and lines starting with ``#`` are skipped; a relative path is read from the text file's
  folder; a line may be a path, URL, GDAL path, STAC Item or glob pattern (not another list).

No torch; only the local file system is looked at (URLs are not fetched).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from rs_deeplab.cli.errors import InputError
from rs_deeplab.remote.scenes import gdal_path, is_remote, source_url

LIST_SUFFIXES = (".txt", ".lst")
"""A plain argument with one of these suffixes is a text file listing scenes (``@`` marks one of any name)."""
BINARY_PROBE = 1 << 16
"""Bytes of a text file looked at for NUL bytes (binary data) before the rest is read."""
QUOTE_HINT = "quote the pattern so the shell passes it on; check the folder"


def expand_scenes(args: Sequence[str]) -> list[str]:
    """Scene arguments with glob patterns and text files replaced by the scenes they name, in order.

    Args:
        args: Scene arguments as given on the command line (see the module docstring for the forms).

    Returns:
        The scenes: each plain argument as it is; each glob's matches in sorted order; each text file's scenes in
        its line order (relative ones joined to the file's folder). Empty when ``args`` is.

    Raises:
        InputError: A glob that matches no file; a text file that does not exist, is not text, or lists no scene;
            a listed local scene that does not exist (named with the file and line); a scene that comes twice.
    """
    scenes: list[tuple[str, str]] = []  # (scene, where it came from)
    for arg in args:
        if arg.startswith("@"):
            scenes += _read_list(arg[1:])
        elif _is_list(arg):
            scenes += _read_list(arg)
        elif _is_glob(arg):
            problem = f"no file matches {arg!r} ({QUOTE_HINT})"
            scenes += [(match, f"by pattern {arg!r}") for match in _glob(arg, problem)]
        else:
            scenes.append((arg, "as an argument"))
    _check_once(scenes)
    return [scene for scene, _ in scenes]


def _is_list(arg: str) -> bool:
    """Whether a plain argument (no ``@``) is a text file of scenes: a local ``.txt``/``.lst`` path."""
    return not _is_vsi(arg) and arg.lower().endswith(LIST_SUFFIXES)


def _is_vsi(arg: str) -> bool:
    """Whether ``arg`` is a URL or GDAL path, which is passed on as it is."""
    return is_remote(arg) or arg.startswith("/vsi")


def _is_glob(arg: str) -> bool:
    """Whether ``arg`` is a pattern to expand: wildcards, not remote, and no file of that very name."""
    return not _is_vsi(arg) and glob.has_magic(arg) and not os.path.lexists(arg)


def _glob(pattern: str, problem: str) -> list[str]:
    """The files ``pattern`` matches, sorted.

    Raises:
        InputError: ``problem``, when none matches.
    """
    matches = sorted(m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if not os.path.isdir(m))
    if not matches:
        raise InputError(problem)
    return matches


def _read_list(path: str) -> list[tuple[str, str]]:
    """The scenes a text file lists, each with its ``file line N`` origin.

    Raises:
        InputError: The file is missing, a folder, not text, or lists no scene; a listed local scene or glob
            names no file.
    """
    if _is_vsi(path):
        raise InputError(f"scene list {path}: lists are read from local files; download it and pass the local copy")
    path = os.path.expanduser(path)
    try:
        with open(path, "rb") as f:
            data = f.read(BINARY_PROBE)
            if b"\0" not in data:  # a raster passed by mistake is not read whole
                data += f.read()
    except FileNotFoundError:
        raise InputError(f"scene list {path}: no such file; pass a text file with one scene per line") from None
    except IsADirectoryError:
        raise InputError(f"scene list {path} is a folder; pass a text file with one scene per line") from None
    except OSError as exc:
        raise InputError(f"scene list {path}: cannot be read ({exc.strerror}); check its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise InputError(
            f"scene list {path} is not a text file (binary data); list one scene per line in plain text "
            "(UTF-8), or pass a raster without @ and not named .txt/.lst"
        )
    folder = os.path.dirname(path)
    scenes: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path} line {number}"
        if line.startswith("@"):
            raise InputError(f"{where}: {line}: lists do not nest; list its scenes here, or pass it as an argument")
        scene = line if _is_vsi(line) else os.path.join(folder, os.path.expanduser(line))
        if _is_glob(scene):
            problem = f"{where}: no file matches {line!r} (relative patterns are read from the list's folder)"
            scenes += [(match, f"at {where}") for match in _glob(scene, problem)]
        elif _is_vsi(scene) or os.path.exists(scene):
            scenes.append((scene, f"at {where}"))
        else:
            looked = "" if scene == line else f" (looked for {scene}: relative paths are read from the list's folder)"
            raise InputError(f"{where}: {line} does not exist{looked}; fix or remove the line")
    if not scenes:
        raise InputError(f"scene list {path} lists no scene (only blank lines and # comments); add one per line")
    return scenes


def _check_once(scenes: Sequence[tuple[str, str]]) -> None:
    """Raise when a scene comes twice (the same file, or the same URL).

    Raises:
        InputError: The second one, with where both came from.
    """
    seen: dict[str, str] = {}
    for scene, where in scenes:
        key = source_url(gdal_path(scene)) if _is_vsi(scene) else os.path.normcase(os.path.abspath(scene))
        if key in seen:
            first = seen[key]
            origins = "" if first == where == "as an argument" else f" ({first} and {where})"
            raise InputError(f"{scene} is listed twice{origins}; give each scene once")
        seen[key] = where
