"""Give freed heap memory back to the operating system.

glibc keeps memory freed by Python, numpy and onnxruntime in its arenas for reuse, so
the resident size of a long-running node reflects its peak rather than what it holds.
After a lifecycle cleanup (a whole configuration released: encoder session, voxel map,
object layer) the node collects reference cycles and asks glibc to trim, so a robot that
reconfigures does not carry the old configuration's peak; while active it trims
periodically (``ingest.heap_trim_period_s``), which gives back what freed per-frame image
buffers leave behind. Elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from functools import cache
from typing import cast


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only (not musl)
    except OSError:
        return None
    return cast("Callable[[int], int] | None", trim)


def trim_heap() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim``); True when it ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_freed_memory() -> bool:
    """Collect cyclic garbage, then trim the C heap; True when the heap was trimmed."""
    gc.collect()
    return trim_heap()
