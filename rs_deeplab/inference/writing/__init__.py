"""Writing a run's outputs: streamed label rasters, the region mosaic and polygons, the prediction page."""
