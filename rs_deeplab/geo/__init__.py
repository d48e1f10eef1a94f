"""Rasters and grids: validated GeoTIFF reads and writes, window grids, ground sampling distance, mosaics and VRTs."""
