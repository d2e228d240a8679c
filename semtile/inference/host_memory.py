"""The C allocator's settings for a process that runs scans: freed buffers are kept for the next scan.

Each scan allocates the same few large buffers (its padded frame, canvases,
encoded arrays: 1-10 MB for a 1.2 MP scan) and frees them. By default glibc
serves such a block with ``mmap`` once it is over a threshold it adjusts on the
fly, and hands the top of a heap back to the system when more than about twice
that is free; either way the next scan's buffer is fresh memory, which the
kernel faults in and zeroes page by page. Measured with the null engine
(``benchmarks/host.py``'s path, one core, alternated with the default): kernel
time per 1.2 MP scan 9.4 -> 5.1 and 13.9 -> 8.1 ms, CPU 32.5 -> 28.0 and
37.3 -> 31.2 ms (docs/benchmarks.md, "Host pipeline").

The settings: blocks up to 32 MiB (glibc's largest threshold) come from the
heap, and up to 256 MiB of free memory at a heap's top stays there. Larger
blocks (the buffers of a large scan) are still mapped and unmapped each time.
The cost is memory kept: at most what the largest scans of the run once used.
A user's own ``MALLOC_*`` or ``GLIBC_TUNABLES`` settings are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD"]

MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20
TOP_PAD = 64 * 2**20
# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_state: dict = {}


def keep_freed_memory() -> dict:
    """Set the allocator once per process (glibc only); what was done: ``{"applied": bool, "why": str}``."""
    with _lock:
        if not _state:
            _state.update(_apply())
        return dict(_state)


def _apply() -> dict:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {"applied": False, "why": "not glibc"}
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if user:
        return {"applied": False, "why": f"the environment sets {', '.join(user)}"}
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {"applied": False, "why": "no mallopt"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: setting any of these stops glibc adjusting it, and its fixed default is 128 KiB.
    done = all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                                (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                                (_M_TOP_PAD, TOP_PAD)))
    return {"applied": done, "why": "set" if done else "mallopt refused a setting"}
