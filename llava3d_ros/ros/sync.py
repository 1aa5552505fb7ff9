"""Bounded RGB-D synchronisation (the nvblox pattern): subscription callbacks only
enqueue; the ingest worker drains the queues, pairing colour and depth by nearest stamp
within a slop and attaching the latest camera info. Plain Python, no rclpy, so it is
tested on its own. Stamps are integer nanoseconds (no float rounding across long bags).

Robustness rules (one badly stamped image once stopped ingest for good: a colour image
stamped 1 h ahead sat at the head of the queue and every later one was refused as out of
order; a lone future depth image decided every later colour image as unmatched):

- the queues are kept sorted by stamp: an image older than the newest queued one is
  inserted, not refused; only an image whose time was already decided (at or before the
  newest paired colour image, by less than ``horizon_ns``; for depth, more than a slop
  before it) is dropped as ``out_of_order``. One that is older by more than the horizon
  is a time jump (a bag restarted, a simulator reset) and is accepted;
- evidence that a colour image can be decided must come from near it: a depth image
  stamped in ``[c, c + horizon]``, or a depth image within the slop and the next colour
  image in ``[c + slop, c + horizon]``. An image far in the future decides nothing;
- a colour image never blocks a newer one: when a later colour image is paired, every
  earlier one is decided too (paired within the slop or dropped). A decidable colour
  image with no depth in the slop is dropped alone and forces nothing;
- a pair decided before any camera info arrived is held (the newest one), not dropped:
  camera info and images are separate topics, and the first camera info often comes
  after the first images;
- the queues are bounded by arrival: an image still queued when ``queue_size`` newer
  ones have arrived on its stream is dropped (``queue_overflow``), so one that is never
  decided (a future stamp) leaves, and a full queue drops the first arrived.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

ColorT = TypeVar("ColorT")
DepthT = TypeVar("DepthT")
InfoT = TypeVar("InfoT")

#: Default decision horizon: how far past a colour image another image may be stamped
#: and still count as a sign that the colour image's depth had its chance.
DEFAULT_HORIZON_NS = 1_000_000_000


@dataclass
class SyncedFrame(Generic[ColorT, DepthT, InfoT]):
    stamp_ns: int  # the colour image's stamp: the frame is placed at this time
    color: ColorT
    depth: DepthT
    info: InfoT
    depth_offset_ns: int  # depth stamp - colour stamp


class _SortedQueue:
    """(stamp, arrival, msg) entries sorted by stamp (ties in arrival order)."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, Any]] = []
        self.stamps: list[int] = []  # parallel to entries, for bisect
        self.arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self.entries)

    def insert(self, stamp: int, msg: Any) -> int:
        """Insert; returns the entry's arrival number."""
        arrival = next(self.arrivals)
        i = bisect.bisect_right(self.stamps, stamp)
        self.stamps.insert(i, stamp)
        self.entries.insert(i, (stamp, arrival, msg))
        return arrival

    def insert_entry(self, stamp: int, arrival: int, msg: Any) -> None:
        """Re-insert an entry taken out (keeps its arrival number)."""
        i = bisect.bisect_right(self.stamps, stamp)
        self.stamps.insert(i, stamp)
        self.entries.insert(i, (stamp, arrival, msg))

    def pop(self, i: int = 0) -> tuple[int, int, Any]:
        del self.stamps[i]
        return self.entries.pop(i)

    def evict_older_arrivals(self, oldest_kept: int) -> int:
        """Remove the entries that arrived before ``oldest_kept``; returns how many."""
        stale = [k for k, e in enumerate(self.entries) if e[1] < oldest_kept]
        for k in reversed(stale):
            self.pop(k)
        return len(stale)

    def first_at_or_after(self, stamp: int) -> int:
        return bisect.bisect_left(self.stamps, stamp)

    def nearest(self, stamp: int) -> int | None:
        """Index of the entry nearest to ``stamp`` (the older on a tie), or None."""
        i = bisect.bisect_left(self.stamps, stamp)
        candidates = [k for k in (i - 1, i) if 0 <= k < len(self.stamps)]
        if not candidates:
            return None
        return min(candidates, key=lambda k: abs(self.stamps[k] - stamp))

    def clear(self) -> None:
        self.entries.clear()
        self.stamps.clear()


class RgbdSynchronizer(Generic[ColorT, DepthT, InfoT]):
    """Pairs colour and depth messages by nearest stamp.

    Thread-safe: callbacks may run on other threads than the one draining.
    Every message that never becomes part of a frame is counted in ``drops`` by reason:
    ``queue_overflow`` (callbacks outpaced the drain, or an image waited for
    ``queue_size`` newer ones without being decided), ``no_depth_match`` (no depth
    within the slop), ``no_color_match`` (a depth image no colour image can pair with
    any more), ``no_camera_info`` (no camera info received yet), ``out_of_order`` (an
    image arrived after its time was decided).
    """

    def __init__(
        self,
        slop_ns: int = 20_000_000,
        queue_size: int = 30,
        horizon_ns: int = DEFAULT_HORIZON_NS,
    ):
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if horizon_ns <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon_ns} ns")
        self.slop_ns = slop_ns
        self.horizon_ns = max(horizon_ns, slop_ns)
        self._queue_size = queue_size
        self._color = _SortedQueue()
        self._depth = _SortedQueue()
        self._decided_ns: int | None = None  # stamp of the newest paired colour image
        # The newest pair decided before any camera info arrived: held, not dropped, so
        # the first frame survives its camera info arriving after the images (separate
        # topics have no order); a newer pair replaces it (counted as no_camera_info).
        self._held: tuple[int, ColorT, DepthT, int] | None = None
        self._info: InfoT | None = None
        self._lock = threading.Lock()
        self.drops: Counter[str] = Counter()

    # ------------------------------------------------------------------ producers

    def _push(self, queue: _SortedQueue, stamp_ns: int, msg: object) -> None:
        # Bounded by arrival, not by stamp: an image still queued after queue_size newer
        # ones arrived is dropped, whether the drain fell behind or it never matched (a
        # future stamp), so the queue never exceeds queue_size.
        arrival = queue.insert(stamp_ns, msg)
        evicted = queue.evict_older_arrivals(arrival - self._queue_size + 1)
        if evicted:
            self.drops["queue_overflow"] += evicted

    def _in_decided_past(self, stamp_ns: int, newest_useless_ns: int) -> bool:
        """True when ``stamp_ns`` is at most ``newest_useless_ns`` but within the horizon
        of the decided time (further back is another timeline, not a late image)."""
        decided = self._decided_ns
        return decided is not None and decided - self.horizon_ns <= stamp_ns <= newest_useless_ns

    def add_color(self, stamp_ns: int, msg: ColorT) -> None:
        with self._lock:
            decided = self._decided_ns
            if decided is not None and self._in_decided_past(stamp_ns, decided):
                self.drops["out_of_order"] += 1
                return
            if decided is not None and stamp_ns < decided - self.horizon_ns:
                # Time jumped back (bag restarted, simulator reset, a stale image): the
                # old decision says nothing about this timeline.
                self._decided_ns = None
            self._push(self._color, stamp_ns, msg)

    def add_depth(self, stamp_ns: int, msg: DepthT) -> None:
        with self._lock:
            decided = self._decided_ns
            # A depth image older than decided - slop cannot pair with any later colour.
            if decided is not None and self._in_decided_past(stamp_ns, decided - self.slop_ns - 1):
                self.drops["out_of_order"] += 1
                return
            self._push(self._depth, stamp_ns, msg)

    def add_camera_info(self, msg: InfoT) -> None:
        with self._lock:
            self._info = msg

    # ------------------------------------------------------------------ bookkeeping

    def take_drops(self) -> Counter[str]:
        """The drops counted since the last call (so a caller can keep monotonic totals
        across synchronisers)."""
        with self._lock:
            out, self.drops = self.drops, Counter()
        return out

    def pending(self) -> tuple[int, int]:
        """(colour, depth) images queued (a pair held for camera info counts in both)."""
        with self._lock:
            held = int(self._held is not None)
            return len(self._color) + held, len(self._depth) + held

    def reset(self) -> None:
        with self._lock:
            self._color.clear()
            self._depth.clear()
            self._decided_ns = None
            self._held = None

    # ------------------------------------------------------------------ consumer

    def _depth_within_slop(self, c: int) -> int | None:
        best = self._depth.nearest(c)
        if best is None or abs(self._depth.stamps[best] - c) > self.slop_ns:
            return None
        return best

    def _decidable(self, i: int) -> bool:
        """Colour image ``i`` can be decided: a depth image stamped at or after it (and
        within the horizon) has arrived, so no closer one will come from an in-order
        stream; or a depth image within the slop is here and the next colour image
        (within the horizon) is at least a slop later: the depth stream lags, pair now.
        A colour image with no depth near it waits for depth (a lagging stream) rather
        than being dropped when colour runs ahead."""
        c = self._color.stamps[i]
        j = self._depth.first_at_or_after(c)
        if j < len(self._depth) and self._depth.stamps[j] <= c + self.horizon_ns:
            return True
        if i + 1 < len(self._color):
            nxt = self._color.stamps[i + 1]
            return (
                c + self.slop_ns <= nxt <= c + self.horizon_ns
                and self._depth_within_slop(c) is not None
            )
        return False

    def pop_frames(self) -> list[SyncedFrame[ColorT, DepthT, InfoT]]:
        """Every colour image that can be decided now, oldest first: paired with the
        nearest depth image within the slop, or dropped.

        A decidable colour image with a depth image within the slop (a real pair) also
        decides every older colour image (a stale or unmatched image never blocks newer
        ones). A decidable one without is dropped alone and decides nothing else, so a
        garbage image cannot force decisions on the frames around it."""
        out: list[SyncedFrame[ColorT, DepthT, InfoT]] = []
        with self._lock:
            if self._held is not None and self._info is not None:
                h_stamp, h_color, h_depth, h_depth_stamp = self._held
                out.append(
                    SyncedFrame(h_stamp, h_color, h_depth, self._info, h_depth_stamp - h_stamp)
                )
                self._held = None
            n = len(self._color)
            decidable = [self._decidable(i) for i in range(n)]
            anchor = max(
                (
                    i
                    for i in range(n)
                    if decidable[i] and self._depth_within_slop(self._color.stamps[i]) is not None
                ),
                default=-1,
            )
            entries = list(self._color.entries)
            self._color.clear()
            for i, (c_stamp, arrival, color) in enumerate(entries):
                if i > anchor and not decidable[i]:
                    self._color.insert_entry(c_stamp, arrival, color)
                    continue
                if i <= anchor:
                    self._decided_ns = c_stamp  # truly past: a real pair is at or after it
                best = self._depth_within_slop(c_stamp)
                if best is None:
                    self.drops["no_depth_match"] += 1
                    continue
                # Pairs are one-to-one; depth older than the match can never pair with a
                # later colour image.
                for _ in range(best):
                    self._depth.pop(0)
                    self.drops["no_color_match"] += 1
                d_stamp, _arrival, depth = self._depth.pop(0)
                if self._info is None:
                    if self._held is not None:
                        self.drops["no_camera_info"] += 1
                    self._held = (c_stamp, color, depth, d_stamp)
                    continue
                out.append(SyncedFrame(c_stamp, color, depth, self._info, d_stamp - c_stamp))
            if anchor >= 0 and self._decided_ns is not None:
                # Depth older than decided - slop can pair with nothing any more (further
                # back than the horizon it is another timeline's: evicted by arrival).
                newest_useless = self._decided_ns - self.slop_ns - 1
                while len(self._depth) and self._in_decided_past(
                    self._depth.stamps[0], newest_useless
                ):
                    self._depth.pop(0)
                    self.drops["no_color_match"] += 1
        return out
