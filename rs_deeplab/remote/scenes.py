"""Remote scenes: scene arguments resolved to the path GDAL opens (STAC Items among them), names for their outputs.

A scene argument may be a local path, a GDAL path (``/vsicurl/``, ``/vsis3/``, ``/vsizip/``...), an ``http(s)://``
URL, an ``s3://``/``gs://`` URL or a STAC Item (:mod:`rs_deeplab.remote.stac`). Remote scenes are read window by window
through GDAL (never downloaded whole); :func:`stat_remote` asks the server once for the object's size and version
(ETag, Last-Modified), which both checks that the windows can be read (found, allowed, Range requests honoured) and
fingerprints the scene for resuming.

URLs → GDAL paths, the read settings and the server checks live one layer down, in :mod:`rs_deeplab.remote.paths`
(which :mod:`rs_deeplab.geo.raster` and :mod:`rs_deeplab.remote.stac` import); this module re-exports them, so
``from rs_deeplab.remote.scenes import gdal_path`` keeps working. Timeouts and retries (``RS_DEEPLAB_HTTP_*``) and the
probe
live in :mod:`rs_deeplab.remote.http`.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from rs_deeplab.cli.errors import InputError
from rs_deeplab.remote.http import FALSE_WORDS, S3_CREDENTIALS_FIX, RemoteStat, env_flag, http_problem
from rs_deeplab.remote.paths import (
    GDAL_PROBLEMS,
    OPEN_OPTIONS,
    REMOTE_VSI,
    URL_SCHEMES,
    gdal_path,
    gdal_problem,
    is_remote,
    is_url,
    reads_remote,
    remote_env,
    retry_or_raise,
    server_problem,
    source_url,
    stat_remote,
)
from rs_deeplab.remote.stac import is_stac_item, item_vrt

__all__ = [
    "FALSE_WORDS",
    "GDAL_PROBLEMS",
    "OPEN_OPTIONS",
    "REMOTE_VSI",
    "S3_CREDENTIALS_FIX",
    "URL_SCHEMES",
    "RemoteStat",
    "env_flag",
    "gdal_path",
    "gdal_problem",
    "http_problem",
    "is_remote",
    "is_url",
    "local_output",
    "reads_remote",
    "remote_env",
    "retry_or_raise",
    "scene_name",
    "scene_names",
    "scene_source",
    "scene_stem",
    "server_problem",
    "source_url",
    "stat_remote",
]


def scene_stem(path: str | os.PathLike[str]) -> str:
    """The file stem naming outputs of a scene: ``https://h/x/scene.tif?sig=..`` → ``scene``."""
    text = _remote_path(str(path))
    return PurePosixPath(text).stem if "/" in text else os.path.splitext(os.path.basename(text))[0]


def _remote_path(text: str) -> str:
    """A remote scene's path without host or query (a URL's path); a local path as it is."""
    if is_remote(text):
        return urlsplit(source_url(text)).path if is_url(source_url(text)) else text.split("?", 1)[0]
    return text


def scene_names(scenes: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Distinct, stable names for the outputs of several scenes.

    Each scene's file stem, with as many of its parent folders in front (joined by ``_``) as it takes to tell it
    from the job's other scenes with the same file name: ``north/scene.tif`` and ``south/scene.tif`` →
    ``north_scene`` and ``south_scene``; scenes whose file names differ keep their stems. The same command always
    gives the same names (a re-run resumes them).

    Raises:
        InputError: A scene listed twice, or names that stay equal (``a/b_c.tif`` beside ``a_b/c.tif``).
    """
    parts = [tuple(_name_parts(s)) for s in scenes]
    distinct = set(parts)
    suffixes: dict[int, Counter[tuple[str, ...]]] = {}  # per depth: how many distinct scenes end that way

    def shared(own: tuple[str, ...], depth: int) -> bool:
        if depth not in suffixes:
            suffixes[depth] = Counter(p[-depth:] for p in distinct)
        return suffixes[depth][own[-depth:]] > 1

    names = []
    for own in parts:
        depth = 1
        while depth < len(own) and shared(own, depth):
            depth += 1
        names.append("_".join(own[-depth:]))
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        j = first.setdefault(name, i)
        if j != i:
            what = "is listed twice" if parts[j] == parts[i] else f"and {scenes[j]} get the same output name"
            raise InputError(f"{scenes[i]} {what} ({name}); give each scene once, or run them with different --out")
    return names


def _name_parts(path: str | os.PathLike[str]) -> list[str]:
    """A scene's folders and file stem, outermost first (a URL's path; a local path made absolute)."""
    text = _remote_path(str(path)) if is_remote(path) else os.path.abspath(path)
    folders = [p for p in PurePosixPath(text.replace(os.sep, "/")).parent.parts if p not in ("/", "")]
    return [*folders, scene_stem(path)]


def scene_name(path: str | os.PathLike[str]) -> str:
    """The file name of a scene for messages: ``/vsicurl/https://h/x/scene.tif`` → ``scene.tif``."""
    text = source_url(str(path))
    return PurePosixPath(urlsplit(text).path if is_url(text) else text).name


def scene_source(arg: str | os.PathLike[str], assets: Sequence[str] | None = None) -> str:
    """Resolve a scene argument to the path GDAL opens; remote scenes are checked with the server first.

    Args:
        arg: A local path (returned as it is; checked where it is opened, as before), a GDAL path, a URL, or a
            STAC Item (``.json`` file or URL), whose ``assets`` are stacked into a local VRT
            (:func:`rs_deeplab.remote.stac.item_vrt`).
        assets: STAC asset names, in band order (only for a STAC Item).

    Raises:
        RasterError: A remote scene that cannot be read window by window (see :func:`stat_remote`).
        InputError: ``assets`` for a scene that is no STAC Item, or a STAC Item without them.
    """
    text = str(arg)
    if is_stac_item(text):
        return str(item_vrt(text, assets))
    if assets:
        raise InputError(f"{text}: --assets picks bands of a STAC Item (.json), and this is a raster; drop --assets")
    if not is_remote(text):
        return text
    path = gdal_path(text)
    stat_remote(path)
    return path


def local_output(text: str) -> Path:
    """An ``argparse`` type for output paths: outputs stay local, so a URL or GDAL network path is a usage error.

    Raises:
        argparse.ArgumentTypeError: ``text`` is remote.
    """
    if is_remote(text):
        raise argparse.ArgumentTypeError(
            f"{text}: outputs are written locally; pass a local path (upload it afterwards)"
        )
    return Path(text)
