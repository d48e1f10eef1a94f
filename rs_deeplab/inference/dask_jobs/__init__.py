"""Inference on a Dask cluster: ranges of scene rows as tasks, and one worker per GPU."""
