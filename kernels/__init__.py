"""Pure array kernels: arrays in, arrays out; no I/O, no Dask, no torch."""
