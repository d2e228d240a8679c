"""A test hook, on PYTHONPATH as ``sitecustomize`` of the real processes a fault test starts.

With ``SEMTILE_TEST_HOLD=<folder>``, the first call of the store's ``write`` (``SEMTILE_TEST_HOLD_IN=write``:
before the result's arrays are read) or ``_publish`` (``=publish``: its result staged whole, not yet renamed
into place) after ``<folder>/arm`` is made takes that file, writes ``<folder>/held-<pid>`` (the call's first
argument) and waits until ``<folder>/go`` exists. Afterwards ``<folder>/after-<pid>-<n>`` holds its outcome.
Nothing else changes: it only chooses the moment at which a fault lands.
"""

import os

_FOLDER = os.environ.get("SEMTILE_TEST_HOLD")

if _FOLDER:
    import pathlib
    import time

    from semtile.store.directory import DirectoryStore

    _NAME = "write" if os.environ.get("SEMTILE_TEST_HOLD_IN", "write") == "write" else "_publish"
    _REAL = getattr(DirectoryStore, _NAME)
    _CALLS = [0]

    def _held(self, *args, **kwargs):
        _CALLS[0] += 1
        n, folder = _CALLS[0], pathlib.Path(_FOLDER)
        try:
            (folder / "arm").unlink()
            armed = True
        except FileNotFoundError:
            armed = False
        if armed:
            (folder / f"held-{os.getpid()}").write_text(str(args[0]))
            deadline = time.time() + 120
            while not (folder / "go").exists() and time.time() < deadline:
                time.sleep(0.05)
        try:
            value = _REAL(self, *args, **kwargs)
        except BaseException as exc:
            (folder / f"after-{os.getpid()}-{n}").write_text(f"{type(exc).__name__}: {exc}")
            raise
        (folder / f"after-{os.getpid()}-{n}").write_text("ok")
        return value

    setattr(DirectoryStore, _NAME, _held)
