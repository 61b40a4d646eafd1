"""Keep large buffers in the heap: the capture path allocates megabyte-sized bytes per read.

glibc serves allocations of at least 128 KiB (rising dynamically to at most 32 MiB) with a
fresh ``mmap`` and returns freed memory at the top of the heap to the system once more than
128 KiB is free there. A 1 MiB read, its lines, its JSON and its frames then each cost a map,
256 page faults and an unmap: on a VM that is about 1 ms per MiB, more than everything else
the nanny does with those bytes. Raising both thresholds lets freed buffers be reused. The
memory kept is bounded by the largest burst in flight (a few reads), not by output volume.
"""

from __future__ import annotations

import ctypes
import sys

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations below this come from the heap (glibc caps it at 32 MiB on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory kept at the top of the heap before it is given back.
TRIM_THRESHOLD = 64 << 20


def keep_large_buffers() -> bool:
    """Tune glibc's malloc for megabyte buffers; False where it does not apply (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
