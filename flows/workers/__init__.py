"""The workers that run blocks: the Dask cluster, the device, one model per worker process."""
