"""Label raster → clean polygons (GeoPackage, GeoJSON, GeoParquet), block-wise with seams merged.

Public API: :func:`vectorize` (and its :class:`VectorizeSummary`), plus :func:`class_names_tag` /
:func:`read_class_names` for the ``CLASS_NAMES`` metadata convention that label rasters carry.
"""

from __future__ import annotations

from rs_deeplab.vectorize.blocks import RegionStream, block_windows
from rs_deeplab.vectorize.core import VectorizeSummary, vectorize
from rs_deeplab.vectorize.metadata import CLASS_NAMES_TAG, class_names_tag, read_class_names
from rs_deeplab.vectorize.output import FORMATS

__all__ = [
    "CLASS_NAMES_TAG",
    "FORMATS",
    "RegionStream",
    "VectorizeSummary",
    "block_windows",
    "class_names_tag",
    "read_class_names",
    "vectorize",
]
