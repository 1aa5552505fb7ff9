"""Replay a rosbag2 into a live ROS graph with ``/clock``, the way ``ros2 bag play
--clock`` does, from Python (rosbags reads the bag; rclpy publishes).

Messages are published as the bag's serialized CDR bytes (``Publisher.publish(bytes)``,
rclpy's raw publish): nothing is deserialised, and the subscriber receives exactly the
recorded bytes. The type hashes of the bag (rosbags' Jazzy type store) are those of
the wheels' message packages, so the types match over DDS.

Time: ``/clock`` carries bag time, so a node with ``use_sim_time`` follows the bag
exactly. While playing, the clock advances smoothly (every ``1 / clock_hz`` wall
seconds, never past the next message) and is published at each message's log time
just before the message. ``rate`` scales playback (2.0 = twice real time).
:class:`ClockTicker` keeps ``/clock`` running before the bag (held short of its start,
so a sim-time node's timers fire while it starts up) and after it (so its timers keep
draining queues and publishing while it is being queried); without that, a sim-time
node's timers stop with the last message.

QoS: each publisher offers what the bag's metadata recorded (reliability, durability,
depth; ``/tf_static`` transient-local); topics without a record get reliable,
volatile, depth 100.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BagReplayer", "ClockTicker", "ReplayStats", "message_class"]

CLOCK_TOPIC = "/clock"


def message_class(msgtype: str) -> Any:
    """``"sensor_msgs/msg/Image"`` -> the rclpy message class."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _time_msg(stamp_ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def _qos_from_bag(profiles: Sequence[Any]) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = True
    transient = False
    depth = 100
    if profiles:
        names = [(p.reliability.name, p.durability.name, int(p.depth)) for p in profiles]
        reliable = all(r != "BEST_EFFORT" for r, _, _ in names)
        transient = all(d == "TRANSIENT_LOCAL" for _, d, _ in names)
        depth = max([d for _, _, d in names if d > 0] or [100])
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(depth, 10),
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


class ClockTicker:
    """Publishes ``/clock`` from a thread: ``start_ns + (wall elapsed) * rate``, capped
    at ``until_ns`` when given (the clock then holds)."""

    def __init__(
        self,
        publisher: Any,
        start_ns: int,
        rate: float = 1.0,
        hz: float = 100.0,
        until_ns: int | None = None,
    ) -> None:
        from rosgraph_msgs.msg import Clock

        self._pub = publisher
        self._clock_type = Clock
        self.start_ns, self.rate, self.until_ns = int(start_ns), float(rate), until_ns
        self._period = 1.0 / hz
        self._stop = threading.Event()
        self._wall0 = time.monotonic()
        self.now_ns = self.start_ns
        self._thread = threading.Thread(target=self._run, name="clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = self.start_ns + int((time.monotonic() - self._wall0) * self.rate * 1e9)
            if self.until_ns is not None:
                t = min(t, self.until_ns)
            self.now_ns = t
            try:
                self._pub.publish(self._clock_type(clock=_time_msg(t)))
            except Exception:  # the context is shutting down
                return
            self._stop.wait(self._period)

    def stop(self) -> int:
        """Stop publishing; returns the last clock value."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        return self.now_ns


@dataclass
class ReplayStats:
    messages: dict[str, int] = field(default_factory=dict)  # published per topic
    bag_start_ns: int = 0
    bag_end_ns: int = 0
    wall_start: float = 0.0  # time.monotonic() of the first message
    wall_end: float = 0.0
    max_lag_s: float = 0.0  # worst delay of a message behind its schedule

    @property
    def wall_s(self) -> float:
        return self.wall_end - self.wall_start

    @property
    def bag_duration_s(self) -> float:
        return (self.bag_end_ns - self.bag_start_ns) / 1e9


class BagReplayer:
    """Publishes a bag's messages on ``node`` (which the caller spins or not: publishing
    needs no spinning) paced by ``rate``, with ``/clock``."""

    def __init__(
        self,
        node: Any,
        bag_dir: str | Path,
        rate: float = 1.0,
        *,
        clock: bool = True,
        clock_hz: float = 100.0,
        topics: Iterable[str] | None = None,
    ) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import Reader
        from rosgraph_msgs.msg import Clock

        if not rate > 0:
            raise ValueError("rate must be > 0")
        self.node = node
        self.rate = float(rate)
        self.clock_hz = float(clock_hz)
        self.reader = Reader(Path(bag_dir))
        self.reader.open()
        wanted = set(topics) if topics is not None else None
        self.connections = [
            c for c in self.reader.connections if wanted is None or c.topic in wanted
        ]
        self.publishers: dict[str, Any] = {}
        for c in self.connections:
            if c.topic in self.publishers:
                continue
            qos = _qos_from_bag(getattr(c.ext, "offered_qos_profiles", ()) or ())
            self.publishers[c.topic] = node.create_publisher(message_class(c.msgtype), c.topic, qos)
        clock_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, clock_qos) if clock else None
        self.start_ns = int(self.reader.start_time)
        self.end_ns = int(self.reader.end_time)
        self.counts = {
            t: sum(c.msgcount for c in self.connections if c.topic == t) for t in self.publishers
        }

    def close(self) -> None:
        self.reader.close()

    def subscribers_ready(self, topics: Iterable[str] | None = None) -> bool:
        """Every (or each named) topic has a matched subscriber."""
        names = list(topics) if topics is not None else list(self.publishers)
        return all(self.publishers[t].get_subscription_count() > 0 for t in names)

    def clock_ticker(self, start_ns: int, until_ns: int | None = None) -> ClockTicker:
        if self.clock_pub is None:
            raise RuntimeError("replayer made without clock")
        return ClockTicker(self.clock_pub, start_ns, self.rate, self.clock_hz, until_ns)

    def _publish_clock(self, stamp_ns: int) -> None:
        if self.clock_pub is not None:
            from rosgraph_msgs.msg import Clock

            self.clock_pub.publish(Clock(clock=_time_msg(stamp_ns)))

    def play(self, on_message: Callable[[str, int], None] | None = None) -> ReplayStats:
        """Publish every message at its (scaled) time. ``on_message(topic, log_time_ns)``
        is called after each one (for progress bars)."""
        stats = ReplayStats(
            messages=dict.fromkeys(self.publishers, 0),
            bag_start_ns=self.start_ns,
            bag_end_ns=self.end_ns,
        )
        wall0 = time.monotonic()
        stats.wall_start = wall0
        last_clock_ns = -1
        clock_period = 1.0 / self.clock_hz
        for conn, log_ns, raw in self.reader.messages(connections=self.connections):
            target = wall0 + (log_ns - self.start_ns) / 1e9 / self.rate
            while True:
                now = time.monotonic()
                if now >= target:
                    break
                if self.clock_pub is not None:
                    sim = self.start_ns + int((now - wall0) * self.rate * 1e9)
                    sim = min(sim, log_ns)
                    if sim > last_clock_ns:
                        self._publish_clock(sim)
                        last_clock_ns = sim
                time.sleep(min(target - now, clock_period))
            stats.max_lag_s = max(stats.max_lag_s, time.monotonic() - target)
            if log_ns > last_clock_ns:
                self._publish_clock(log_ns)
                last_clock_ns = log_ns
            self.publishers[conn.topic].publish(bytes(raw))
            stats.messages[conn.topic] += 1
            if on_message is not None:
                on_message(conn.topic, log_ns)
        stats.wall_end = time.monotonic()
        return stats
