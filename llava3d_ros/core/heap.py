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
import time
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


class GcPauses:
    """How long the garbage collector stopped this process (``gc.callbacks``).

    A full (generation 2) collection of a large heap holds the interpreter for as long as
    it takes to walk every tracked object; every thread of a node (sensor callbacks, the
    ingest worker) waits meanwhile. The node reports these figures in /diagnostics so
    that a stall can be told apart from slow work. Monotonic per process; one instance
    is installed at a time per owner (``install`` / ``uninstall``)."""

    def __init__(self, long_pause_s: float = 0.1, clock: Callable[[], float] = time.perf_counter):
        self.long_pause_s = long_pause_s
        self._clock = clock
        self._t0: float | None = None
        self.collections = [0, 0, 0]  # per generation
        self.total_s = 0.0
        self.max_s = 0.0
        self.long_pauses = 0  # pauses of at least long_pause_s

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        # Collections never overlap (they run under the interpreter lock), so one start
        # time suffices.
        if phase == "start":
            self._t0 = self._clock()
            return
        if self._t0 is None:
            return
        pause = self._clock() - self._t0
        self._t0 = None
        gen = int(info.get("generation", 2))
        self.collections[min(max(gen, 0), 2)] += 1
        self.total_s += pause
        self.max_s = max(self.max_s, pause)
        self.long_pauses += pause >= self.long_pause_s

    def values(self) -> dict[str, str]:
        """Diagnostics key/values (monotonic counters and the longest pause)."""
        return {
            "gc_full_collections": str(self.collections[2]),
            "gc_pause_total_ms": f"{1e3 * self.total_s:.0f}",
            "gc_pause_max_ms": f"{1e3 * self.max_s:.1f}",
            "gc_long_pauses": str(self.long_pauses),
        }
