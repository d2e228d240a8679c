"""The allocator setting of a process that runs scans: a freed large buffer's memory serves the next one."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")

PROBE = r"""
import ctypes, json, sys
import numpy as np
from semtile.inference.host_memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
state = keep_freed_memory() if sys.argv[1] == "tuned" else {"applied": False}
mapped = []
for _ in range(5):  # a scan's buffer, freed, then the next scan's of the same size
    a = np.ones(6 * 2**20, dtype=np.uint8)
    mapped.append(libc.mallinfo2().hblkhd)  # bytes in blocks served by mmap, this buffer's among them
    del a
print(json.dumps({"state": state, "again": keep_freed_memory() if sys.argv[1] == "tuned" else None, "mapped": mapped}))
"""


def _probe(mode: str, **env) -> dict:
    import json

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_after_the_setting_a_freed_scan_buffer_is_reused_not_mapped_afresh():
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    tuned = _probe("tuned")
    assert tuned["state"] == {"applied": True, "why": "set"} and tuned["again"] == tuned["state"]
    assert max(tuned["mapped"]) < 6 * 2**20  # every 6 MB buffer came from the heap
    default = _probe("default")
    assert default["mapped"][0] >= 6 * 2**20  # without it the first one is mapped (glibc's threshold is 128 KiB)


@glibc
def test_a_users_own_allocator_settings_are_kept():
    got = _probe("tuned", MALLOC_MMAP_THRESHOLD_="1048576")
    assert got["state"] == {"applied": False, "why": "the environment sets MALLOC_MMAP_THRESHOLD_"}
