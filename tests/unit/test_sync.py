"""RGB-D synchroniser: pairing by nearest stamp, slop, lag handling and drop counts."""

from __future__ import annotations

import threading

import pytest

from llava3d_ros.ros.sync import RgbdSynchronizer

MS = 1_000_000


def _sync(**kw) -> RgbdSynchronizer[str, str, str]:  # type: ignore[no-untyped-def]
    s: RgbdSynchronizer[str, str, str] = RgbdSynchronizer(**kw)
    s.add_camera_info("K")
    return s


def test_exact_stamps_pair_one_to_one() -> None:
    s = _sync(slop_ns=5 * MS)
    for i in range(5):
        s.add_color(i * 33 * MS, f"c{i}")
        s.add_depth(i * 33 * MS, f"d{i}")
    frames = s.pop_frames()
    assert [(f.color, f.depth, f.depth_offset_ns) for f in frames] == [
        (f"c{i}", f"d{i}", 0) for i in range(5)
    ]
    assert sum(s.drops.values()) == 0


def test_nearest_depth_within_slop_and_waiting_for_depth() -> None:
    s = _sync(slop_ns=10 * MS)
    s.add_color(100 * MS, "c")
    s.add_depth(92 * MS, "d_early")
    assert s.pop_frames() == []  # a closer depth image may still come
    s.add_depth(104 * MS, "d_close")
    (frame,) = s.pop_frames()
    assert frame.depth == "d_close" and frame.depth_offset_ns == 4 * MS
    assert s.drops["no_color_match"] == 1  # d_early can never be used


def test_colour_without_depth_in_slop_is_dropped_and_counted() -> None:
    s = _sync(slop_ns=5 * MS)
    s.add_color(100 * MS, "c0")
    s.add_depth(120 * MS, "d")
    assert s.pop_frames() == []
    assert s.drops["no_depth_match"] == 1


def test_lagging_depth_stream_decided_by_later_colour() -> None:
    s = _sync(slop_ns=10 * MS)
    s.add_depth(95 * MS, "d")
    s.add_color(100 * MS, "c0")
    assert s.pop_frames() == []
    s.add_color(133 * MS, "c1")  # time moved on; depth will not get closer to c0
    (frame,) = s.pop_frames()
    assert (frame.color, frame.depth) == ("c0", "d")


def test_no_camera_info_drops() -> None:
    s: RgbdSynchronizer[str, str, str] = RgbdSynchronizer(slop_ns=0)
    s.add_color(1, "c")
    s.add_depth(1, "d")
    assert s.pop_frames() == []
    assert s.drops["no_camera_info"] == 1


def test_bounded_queues_count_overflow_and_out_of_order() -> None:
    s = _sync(queue_size=3)
    for i in range(10):
        s.add_color(i, f"c{i}")
    assert s.pending() == (3, 0)
    assert s.drops["queue_overflow"] == 7
    s.add_color(2, "late")
    assert s.drops["out_of_order"] == 1


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="slop"):
        RgbdSynchronizer(slop_ns=-1)
    with pytest.raises(ValueError, match="queue_size"):
        RgbdSynchronizer(queue_size=0)


def test_concurrent_producers_lose_nothing() -> None:
    s = _sync(slop_ns=0, queue_size=10_000)
    n = 2000

    def produce(add, tag: str) -> None:  # type: ignore[no-untyped-def]
        for i in range(n):
            add(i * MS, f"{tag}{i}")

    threads = [
        threading.Thread(target=produce, args=(s.add_color, "c")),
        threading.Thread(target=produce, args=(s.add_depth, "d")),
    ]
    for t in threads:
        t.start()
    frames = []
    while any(t.is_alive() for t in threads):
        frames += s.pop_frames()
    for t in threads:
        t.join()
    frames += s.pop_frames()
    assert [f.color for f in frames] == [f"c{i}" for i in range(n)]
    assert all(f.depth_offset_ns == 0 for f in frames)
