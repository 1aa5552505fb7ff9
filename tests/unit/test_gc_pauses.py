"""core.heap.GcPauses: counts collections and their pauses through gc.callbacks."""

from __future__ import annotations

import gc

from llava3d_ros.core.heap import GcPauses


def test_counts_a_full_collection_and_its_pause() -> None:
    ticks = iter([10.0, 10.25, 20.0, 20.01])
    pauses = GcPauses(long_pause_s=0.1, clock=lambda: next(ticks))
    pauses.install()
    try:
        gc.collect()  # start at 10.0, stop at 10.25: a long full collection
        gc.collect(0)  # 10 ms, generation 0
    finally:
        pauses.uninstall()
    assert pauses.collections == [1, 0, 1]
    assert abs(pauses.max_s - 0.25) < 1e-9
    assert abs(pauses.total_s - 0.26) < 1e-9
    assert pauses.long_pauses == 1
    v = pauses.values()
    assert v["gc_full_collections"] == "1" and v["gc_long_pauses"] == "1"
    assert v["gc_pause_max_ms"] == "250.0"


def test_uninstall_stops_counting_and_install_is_idempotent() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()
    assert gc.callbacks.count(pauses._callback) == 1
    pauses.uninstall()
    gc.collect()
    assert pauses.collections == [0, 0, 0]
    assert pauses._callback not in gc.callbacks
