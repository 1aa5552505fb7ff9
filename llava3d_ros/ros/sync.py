"""Bounded RGB-D synchronisation (the nvblox pattern): subscription callbacks only
enqueue; the ingest worker drains the queues, pairing colour and depth by nearest stamp within
a slop and attaching the latest camera info. Plain Python, no rclpy, so it is tested
on its own. Stamps are integer nanoseconds (no float rounding across long bags).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

ColorT = TypeVar("ColorT")
DepthT = TypeVar("DepthT")
InfoT = TypeVar("InfoT")


@dataclass
class SyncedFrame(Generic[ColorT, DepthT, InfoT]):
    stamp_ns: int  # the colour image's stamp: the frame is placed at this time
    color: ColorT
    depth: DepthT
    info: InfoT
    depth_offset_ns: int  # depth stamp - colour stamp


class RgbdSynchronizer(Generic[ColorT, DepthT, InfoT]):
    """Pairs colour and depth messages by nearest stamp.

    Thread-safe: callbacks may run on other executor threads than the drain timer.
    Every message that never becomes part of a frame is counted in ``drops`` by reason:
    ``queue_overflow`` (callbacks outpaced the drain), ``no_depth_match`` (no depth within
    the slop), ``no_camera_info`` (no camera info received yet), ``out_of_order``.
    """

    def __init__(self, slop_ns: int = 20_000_000, queue_size: int = 30):
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.slop_ns = slop_ns
        self._color: deque[tuple[int, ColorT]] = deque()
        self._depth: deque[tuple[int, DepthT]] = deque()
        self._queue_size = queue_size
        self._info: InfoT | None = None
        self._lock = threading.Lock()
        self.drops: Counter[str] = Counter()

    def _push(self, queue: deque, stamp_ns: int, msg: object) -> None:
        if queue and stamp_ns < queue[-1][0]:
            # Bags replayed twice or clock jumps: keep the queue sorted by refusing.
            self.drops["out_of_order"] += 1
            return
        queue.append((stamp_ns, msg))
        if len(queue) > self._queue_size:
            queue.popleft()
            self.drops["queue_overflow"] += 1

    def add_color(self, stamp_ns: int, msg: ColorT) -> None:
        with self._lock:
            self._push(self._color, stamp_ns, msg)

    def add_depth(self, stamp_ns: int, msg: DepthT) -> None:
        with self._lock:
            self._push(self._depth, stamp_ns, msg)

    def add_camera_info(self, msg: InfoT) -> None:
        with self._lock:
            self._info = msg

    def take_drops(self) -> Counter[str]:
        """The drops counted since the last call (so a caller can keep monotonic totals
        across synchronisers)."""
        with self._lock:
            out, self.drops = self.drops, Counter()
        return out

    def pending(self) -> tuple[int, int]:
        with self._lock:
            return len(self._color), len(self._depth)

    def reset(self) -> None:
        with self._lock:
            self._color.clear()
            self._depth.clear()

    def pop_frames(self) -> list[SyncedFrame[ColorT, DepthT, InfoT]]:
        """Every colour image that can be decided now, oldest first.

        A colour image at stamp c is decided when a depth image stamped >= c has arrived
        (no closer one can come later), or when a later colour image stamped >= c + slop
        shows the depth stream is lagging; then the nearest depth within the slop is
        used, or the colour image is dropped."""
        out: list[SyncedFrame[ColorT, DepthT, InfoT]] = []
        with self._lock:
            while self._color:
                c_stamp, color = self._color[0]
                has_later_depth = bool(self._depth) and self._depth[-1][0] >= c_stamp
                has_later_color = len(self._color) > 1 and (
                    self._color[-1][0] >= c_stamp + self.slop_ns
                )
                if not (has_later_depth or has_later_color):
                    break
                self._color.popleft()
                best = min(
                    range(len(self._depth)),
                    key=lambda i: abs(self._depth[i][0] - c_stamp),
                    default=None,
                )
                if best is None or abs(self._depth[best][0] - c_stamp) > self.slop_ns:
                    self.drops["no_depth_match"] += 1
                    continue
                if self._info is None:
                    self.drops["no_camera_info"] += 1
                    continue
                # Pairs are one-to-one; depth older than the match can never pair with a
                # later colour image.
                for _ in range(best):
                    self._depth.popleft()
                    self.drops["no_color_match"] += 1
                d_stamp, depth = self._depth.popleft()
                out.append(SyncedFrame(c_stamp, color, depth, self._info, d_stamp - c_stamp))
        return out
