"""What every stage runs on: artifacts and their records, chunked resumable runs and the Dask
runner, the work folder's lock, progress, the device and memory checks."""
