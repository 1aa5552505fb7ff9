"""RGB-D synchroniser: pairing by nearest stamp, slop, lag handling and drop counts; a
badly stamped image (an hour ahead, a time jump back, a garbage pair) never blocks the
frames after it."""

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


def test_no_camera_info_drops_all_but_the_newest_pair() -> None:
    s: RgbdSynchronizer[str, str, str] = RgbdSynchronizer(slop_ns=0)
    for i in (1, 2, 3):
        s.add_color(i, f"c{i}")
        s.add_depth(i, f"d{i}")
        assert s.pop_frames() == []
    assert s.drops["no_camera_info"] == 2
    assert s.pending() == (1, 1)  # the newest pair waits for camera info


def test_camera_info_after_the_first_images_loses_no_frame() -> None:
    """Camera info and images are separate topics: the first info often arrives after
    the first images. Before: the first frame was dropped (no_camera_info), so a test
    feeding N frames and waiting for N keyframes timed out now and then."""
    s: RgbdSynchronizer[str, str, str] = RgbdSynchronizer(slop_ns=0)
    s.add_color(1, "c1")
    s.add_depth(1, "d1")
    assert s.pop_frames() == []
    s.add_camera_info("K")
    (frame,) = s.pop_frames()
    assert (frame.color, frame.depth, frame.info) == ("c1", "d1", "K")
    assert not s.drops and s.pending() == (0, 0)


def test_bounded_queues_count_overflow_and_out_of_order() -> None:
    s = _sync(queue_size=3, slop_ns=0)
    for i in range(10):
        s.add_color(i, f"c{i}")
    assert s.pending() == (3, 0)
    assert s.drops["queue_overflow"] == 7
    s.add_depth(9, "d9")
    assert [f.color for f in s.pop_frames()] == ["c9"]  # c7, c8: no depth in the slop
    s.add_color(8, "late")  # its time was decided: refused
    assert s.drops["out_of_order"] == 1
    s.add_depth(5, "late depth")  # can pair with no colour image after c9
    assert s.drops["out_of_order"] == 2


def test_older_stamps_are_inserted_in_order_not_refused() -> None:
    """Before: an image older than the newest queued one was refused as out_of_order."""
    s = _sync(slop_ns=5 * MS)
    s.add_color(200 * MS, "c2")
    s.add_color(100 * MS, "c1")  # arrived late, but nothing was decided yet
    s.add_depth(100 * MS, "d1")
    s.add_depth(200 * MS, "d2")
    assert [(f.color, f.depth) for f in s.pop_frames()] == [("c1", "d1"), ("c2", "d2")]
    assert sum(s.drops.values()) == 0


def _stream(
    s: RgbdSynchronizer[str, str, str], start_ms: int, n: int, depth_first: bool = True
) -> list[str]:
    """n pairs 33 ms apart from ``start_ms``; the colour images synchronised."""
    out = []
    for i in range(n):
        t = (start_ms + 33 * i) * MS
        if depth_first:
            s.add_depth(t, f"d{i}")
            s.add_color(t, f"c{i}")
        else:
            s.add_color(t, f"c{i}")
            s.add_depth(t, f"d{i}")
        out += [f.color for f in s.pop_frames()]
    return out


HOUR = 3600 * 1000  # ms


@pytest.mark.parametrize("depth_first", [True, False])
def test_a_lone_future_colour_image_blocks_nothing(depth_first: bool) -> None:
    """Before: a colour image stamped 1 h ahead sat at the head of the queue and every
    later colour image was refused as out_of_order until deactivate/activate."""
    s = _sync(slop_ns=5 * MS)
    s.add_color(1000 * MS + HOUR * MS, "future")
    got = _stream(s, 1000, 20, depth_first)
    assert got == [f"c{i}" for i in range(20)]
    assert s.drops["out_of_order"] == 0 and s.drops["no_depth_match"] == 0


@pytest.mark.parametrize("depth_first", [True, False])
def test_a_lone_future_depth_image_decides_nothing(depth_first: bool) -> None:
    """Before: every later frame was dropped as no_depth_match (the future depth image
    decided each colour image before its own depth arrived, and later depth images were
    refused as out of order)."""
    s = _sync(slop_ns=5 * MS)
    s.add_depth(1000 * MS + HOUR * MS, "future")
    got = _stream(s, 1000, 20, depth_first)
    assert got == [f"c{i}" for i in range(20)]
    assert s.drops["no_depth_match"] == 0 and s.drops["out_of_order"] == 0


def test_an_undecided_future_image_leaves_after_queue_size_newer_ones() -> None:
    s = _sync(slop_ns=5 * MS, queue_size=5)
    s.add_color(HOUR * MS, "future")
    s.add_depth(2 * HOUR * MS, "future depth")
    # Colour first, depth later: the newest colour image waits for its depth.
    got = _stream(s, 1000, 10, depth_first=False)
    assert got == [f"c{i}" for i in range(10)]
    assert s.pending() == (0, 0)  # both future images were evicted by arrival order
    assert s.drops["queue_overflow"] == 2


def test_time_jumping_back_starts_a_new_timeline() -> None:
    """A bag restarted (or a simulator reset): stamps jump back by more than the
    horizon; the new timeline pairs as usual instead of being refused for ever."""
    s = _sync(slop_ns=5 * MS)
    assert _stream(s, 100_000, 5) == [f"c{i}" for i in range(5)]
    assert _stream(s, 1_000, 5) == [f"c{i}" for i in range(5)]
    assert s.drops["out_of_order"] == 0


def test_an_unmatched_colour_image_never_blocks_newer_ones() -> None:
    """A colour image whose depth never comes is decided once a later one is, even when
    nothing near it in time says so (a slow camera: frames 2 s apart)."""
    s = _sync(slop_ns=5 * MS)
    s.add_color(1000 * MS, "lonely")
    s.add_depth(3000 * MS, "d")
    s.add_color(3000 * MS, "c")
    assert [f.color for f in s.pop_frames()] == ["c"]
    assert s.drops["no_depth_match"] == 1


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


def test_a_garbage_image_cannot_force_decisions_on_frames_around_it() -> None:
    """A lone colour image and a lone depth image 0.5 s apart, both ahead of the stream:
    the colour one is decidable (depth passed it) and unmatched: it is dropped alone; the
    frames before it, whose depth is still on its way, are not decided with it."""
    s = _sync(slop_ns=5 * MS)
    s.add_color(4000 * MS, "garbage")
    s.add_depth(4500 * MS, "garbage depth")
    got = _stream(s, 1000, 20, depth_first=False)
    assert got == [f"c{i}" for i in range(20)]
    assert s.drops == {"no_depth_match": 1}
