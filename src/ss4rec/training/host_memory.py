"""Keep freed host memory for the next training step (glibc's malloc settings on CPU).

A CPU training step allocates and frees tens of MB of tensors. With glibc's defaults, freed
blocks above a moving size threshold go back to the kernel (``munmap``, or trimming the top
of the heap) and are taken again at the next step, where every 4 KiB page is a page fault
the kernel must zero. Measured on the bundled ML-100K at length 50 (1 thread, one batch
repeated): an SS4Rec step took ~7,700 page faults and 19 ms of system time, 196 ms in all;
with freed memory kept, 0 faults and 148 ms (SASRec's step: ~1,400 faults, unchanged at
~150 ms). glibc's own dynamic threshold does not settle on this pattern.

:func:`keep_freed_memory` therefore sets, once per process, on Linux with glibc:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's largest): blocks below it come from the heap and
  are reused, not mapped and unmapped each step;
* ``M_TRIM_THRESHOLD`` = 1 GiB: up to that much free memory at the heap's top is kept.

The peak resident memory is what the step needs either way (``scripts/bench_train.py``
reports it); the process just keeps its peak between steps. Nothing is changed where the C
library is not glibc, when the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
(their choice wins), or with ``SS4REC_KEEP_FREED_MEMORY=0``. The trainer calls it when it
trains on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

DISABLE_ENV = "SS4REC_KEEP_FREED_MEMORY"  # "0" leaves glibc's defaults
USER_ENVS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc accepts at most 32 MiB on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 1 << 30

_state: dict = {}  # "result": what the first call did, for every later call


def keep_freed_memory() -> str:
    """Set glibc's malloc to keep freed memory (see the module docstring); a log line saying
    what was done. Idempotent; never raises."""
    if "result" not in _state:
        _state["result"] = _apply()
    return _state["result"]


def _apply() -> str:
    if os.environ.get(DISABLE_ENV, "").strip() == "0":
        return f"host memory: glibc defaults ({DISABLE_ENV}=0)"
    chosen = [name for name in USER_ENVS if name in os.environ]
    if chosen:
        return f"host memory: the user's malloc settings ({', '.join(chosen)})"
    if not sys.platform.startswith("linux"):
        return "host memory: the C library's defaults (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):
        return "host memory: the C library's defaults (not glibc)"
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1:
        return f"host memory: glibc {version} refused the settings; its defaults stay"
    return (f"host memory: freed blocks kept for reuse (glibc {version}: mmap threshold 32 MiB, "
            f"trim threshold 1 GiB; {DISABLE_ENV}=0 to turn off)")
