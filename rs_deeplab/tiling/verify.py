"""Every block of a compressed scene decoded before the first crop is written: a corrupt middle fails up front.

Opening a scene reads its first and last pixel (:func:`rs_deeplab.tiling.checks.check_readable`), which finds a
truncated file and, for formats decoded from the top (PNG, JPEG, members of a zip archive), corruption anywhere
before the end. A GeoTIFF compressed block by block (deflate, LZW, ZSTD, JPEG...) decodes each block on its own: a
damaged block in the middle shows only when a task reaches it, after other crops were written. Such scenes are
therefore read once, strip by strip, before the output folder is created. Uncompressed GeoTIFFs (any bytes are
valid pixels) and remote scenes (the whole object would be downloaded twice) are not read again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rs_deeplab.cli.errors import RsDeeplabError
from rs_deeplab.geo.raster import open_raster, read_error
from rs_deeplab.remote.scenes import reads_remote
from rs_deeplab.tiling.crops import SceneJob

STRIP_BYTES = 64 << 20
"""Most decoded bytes held at once while a scene is read through."""


def paths_to_read(jobs: Sequence[SceneJob]) -> list[str]:
    """The local images and label rasters of ``jobs`` (each once) that :func:`read_every_block` reads through:
    block-compressed GeoTIFFs (opened here to see; uncompressed scenes cost no task on the workers).
    """  # noqa: D205
    paths: list[str] = []
    for job in jobs:
        label = None if job.label is None or job.label.kind == "vector" else job.label.path
        for path in (job.image, label):
            if path is not None and path not in paths and not reads_remote(path) and _block_compressed(path):
                paths.append(path)
    return paths


def _block_compressed(path: str) -> bool:
    with open_raster(path) as src:
        return bool(src.driver == "GTiff" and src.compression is not None)


def read_every_block(path: str) -> bool:
    """Dask task: decode every block of a block-compressed GeoTIFF; returns whether it was read (False: not one).

    Raises:
        RasterReadError: A block cannot be decoded; the message names the file and the rows.
    """
    try:
        return _read_every_block(path)
    except RsDeeplabError as exc:
        error = exc
    error.__cause__ = error.__context__ = None  # GDAL's causes do not unpickle on the client (see tile_rows)
    raise error


def _read_every_block(path: str) -> bool:
    with open_raster(path) as src:
        if src.driver != "GTiff" or src.compression is None:
            return False
        block_rows = max(1, src.block_shapes[0][0])
        row_bytes = src.width * src.count * np.dtype(src.dtypes[0]).itemsize
        rows = max(block_rows, STRIP_BYTES // max(1, row_bytes) // block_rows * block_rows)
        for top in range(0, src.height, rows):
            window = Window(0, top, src.width, min(rows, src.height - top))
            try:
                src.read(window=window)
            except (RasterioError, OSError) as exc:
                raise read_error(path, exc, f"rows {top}-{top + window.height - 1}") from exc
    return True
