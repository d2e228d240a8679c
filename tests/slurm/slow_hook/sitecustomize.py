"""A test hook, on PYTHONPATH as ``sitecustomize`` of the SLURM worker jobs a walltime test starts.

With ``SEMTILE_TEST_SLOW_WRITE=<seconds>``, each call of the store's ``write`` waits that long first, so that a
run of a few tiny scans outlasts a worker's ``--lifetime``. Nothing else changes.
"""

import os

_DELAY = float(os.environ.get("SEMTILE_TEST_SLOW_WRITE", "0") or 0)

if _DELAY > 0:
    import time

    from semtile.store.directory import DirectoryStore

    _REAL = DirectoryStore.write

    def _slow(self, *args, **kwargs):
        time.sleep(_DELAY)
        return _REAL(self, *args, **kwargs)

    DirectoryStore.write = _slow
