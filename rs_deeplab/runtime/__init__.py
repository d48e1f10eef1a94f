"""Where and how work runs: devices and precision, process and worker tuning, cores, the Dask cluster and its watch."""
