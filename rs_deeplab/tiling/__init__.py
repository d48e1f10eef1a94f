"""Stage 1, tiling: scenes and their labels (rasters or polygons) cut into georeferenced crops and a tile index.

Public API: :func:`tile_scenes` (what ``pipelines/tile.py`` calls) with :class:`SceneSpec` and
:class:`TileSummary`; :func:`tile_preset` / :func:`find_scenes` for the benchmark datasets as downloaded;
:func:`read_index` for the ``index.gpkg`` it writes. Imports no torch.
"""

from __future__ import annotations

from rs_deeplab.tiling.index import read_index
from rs_deeplab.tiling.presets import find_scenes, tile_preset
from rs_deeplab.tiling.scenes import SceneSpec
from rs_deeplab.tiling.tiler import TileSummary, tile_scenes

__all__ = ["SceneSpec", "TileSummary", "find_scenes", "read_index", "tile_preset", "tile_scenes"]
