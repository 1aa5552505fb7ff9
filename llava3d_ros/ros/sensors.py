"""The sensor executor: high-rate traffic (images, camera info, /tf, /clock) on an
internal node ``<name>_sensors`` spun by its own single-threaded executor thread.

Why a second node: rclpy's executors rebuild their wait set in Python on every wake-up,
over every entity of their nodes. The main node carries ~50 (lifecycle, parameter and
action services); with images, TF and /clock on it, 10 Hz RGB-D kept a whole core of
this 2-core machine busy and the encoder ran ~3x slower than in-process. The sensor node
has only the subscriptions, so a wake-up costs little.

/clock (40 Hz from ``ros2 bag play``, up to 1 kHz from simulators) is received here too,
and the main node's clock follows it through rclpy's TimeSource; the main node's own
/clock subscription is dropped (one private attribute of rclpy's Node, ``_time_source``,
is touched for that; a test fails if rclpy renames it).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from rclpy.clock import ROSClock
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time_source import TimeSource


class SensorHub:
    """Owns the sensor node, its executor thread and the subscriptions made on it."""

    def __init__(self, main: Node, name: str) -> None:
        # Same context, so the same remappings and namespace apply. use_sim_time is the
        # main node's; the sensor node's own time source stays off.
        self.node = Node(
            name,
            context=main.context,
            start_parameter_services=False,
            parameter_overrides=[Parameter("use_sim_time", value=False)],
        )
        self.clock_source = self._route_clock(main)
        self._subscriptions: list[Any] = []
        self._executor = SingleThreadedExecutor(context=main.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _route_clock(self, main: Node) -> TimeSource:
        source = TimeSource(node=self.node)
        own = getattr(main, "_time_source", None)  # rclpy.node.Node's time source
        if own is not None:
            own.detach_node()  # drops the main node's /clock subscription
        clock = main.get_clock()
        if not isinstance(clock, ROSClock):  # a Node's clock always is one
            raise TypeError(f"node clock is a {type(clock).__name__}, not a ROSClock")
        source.attach_clock(clock)
        source.ros_time_is_active = bool(main.get_parameter("use_sim_time").value)
        return source

    def set_use_sim_time(self, value: bool) -> None:
        self.clock_source.ros_time_is_active = bool(value)

    def _spin(self) -> None:
        # Ends when the context shuts down (Ctrl-C) or destroy() shuts the executor down.
        with contextlib.suppress(ExternalShutdownException, RuntimeError):
            self._executor.spin()

    def subscribe(self, msg_type: Any, topic: str, callback: Any, qos: Any) -> Any:
        sub = self.node.create_subscription(msg_type, topic, callback, qos)
        self._subscriptions.append(sub)
        return sub

    def unsubscribe_all(self) -> None:
        for sub in self._subscriptions:
            self.node.destroy_subscription(sub)
        self._subscriptions = []

    def destroy(self) -> None:
        self.unsubscribe_all()
        self._executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
