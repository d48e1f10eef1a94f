"""rs_deeplab: remote-sensing semantic segmentation with DeepLab, from GeoTIFF scenes to GeoPackage polygons."""

from __future__ import annotations

from rs_deeplab.cli.errors import CheckpointError, ConfigError, InputError, RasterError, RsDeeplabError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "RasterError",
    "RsDeeplabError",
    "__version__",
]
