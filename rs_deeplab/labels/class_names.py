"""Class names stored in a label raster's metadata (GDAL tag ``CLASS_NAMES``): no GIS stack, rasterio or torch.

Convention: a label raster carries its class names, in index order, as the GDAL dataset tag ``CLASS_NAMES``
holding a JSON list of strings (``{"CLASS_NAMES": '["impervious_surface", "building", ...]'}``). The inference
stage writes it with :func:`class_names_tag` next to the colour table of ``ClassScheme.colormap()``; the
vectorizer reads it back with :func:`read_class_names`. Pixel value ``i`` has name ``names[i]``; values without a
name are called ``class_<i>``. Kept apart from :mod:`rs_deeplab.vectorize` so that inference, which writes the
tag, does not import the vectorizer's shapely/pyogrio stack (a GPU inference box has rasterio only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rs_deeplab.cli.errors import InputError

CLASS_NAMES_TAG = "CLASS_NAMES"
"""GDAL metadata key (default domain) of the JSON list of class names."""


def class_names_tag(names: Sequence[str]) -> dict[str, str]:
    """Return the dataset tags that record ``names`` (index order) in a label raster.

    Pass the result as ``tags=`` to :func:`rs_deeplab.geo.raster.write_geotiff` or to ``dataset.update_tags(**tags)``.

    Raises:
        InputError: A name is not a non-empty string or names repeat.
    """
    names = list(names)
    if not all(isinstance(n, str) and n for n in names):
        raise InputError(f"class names must be non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise InputError(f"class names must be unique, got {names!r}")
    return {CLASS_NAMES_TAG: json.dumps(names)}


def read_class_names(dataset: Any) -> list[str] | None:
    """Return the class names recorded in an open rasterio dataset, or None when it records none.

    The dataset tag ``CLASS_NAMES`` is read first, then the same tag on band 1. A tag that is not a JSON list
    of strings is ignored (None), so a foreign raster never breaks vectorizing.
    """
    for tags in (dataset.tags(), dataset.tags(1)):
        raw = tags.get(CLASS_NAMES_TAG)
        if raw is None:
            continue
        try:
            names = json.loads(raw)
        except ValueError:
            return None
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
        return None
    return None


def class_name(names: Sequence[str], value: int) -> str:
    """Name of class ``value``: ``names[value]`` when present, else ``class_<value>``."""
    return names[value] if 0 <= value < len(names) else f"class_{value}"
