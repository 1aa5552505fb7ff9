"""Transform lookups for the node, without blocking: tf2_ros where it is importable (a
ROS 2 install), otherwise the package's own buffer fed by /tf and /tf_static (ROS 2
from wheels has no tf2_ros). Both raise ``TransformUnavailableError`` with a reason.

Bad transforms (non-finite, a quaternion that is not unit length within 1 %) are refused
where TF is fed, by both backends (tf2 refuses a quaternion whose squared norm is off by
more than 1e-3), so a frame that needs one waits and is dropped with its TF reason."""

from __future__ import annotations

from typing import Any

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from llava3d_ros.ros.conversions import stamp_to_ns
from llava3d_ros.ros.tf_buffer import (
    TransformBuffer,
    TransformUnavailableError,
    transform_from_parts,
)

try:  # a ROS 2 install
    import tf2_ros
except ImportError:  # ROS 2 from wheels
    tf2_ros = None


def transform_msg_to_matrix(t: Any) -> np.ndarray:
    """A geometry_msgs/Transform as 4x4; ``ValueError`` for a non-finite transform or a
    quaternion that is not (nearly) unit length (see :func:`transform_from_parts`)."""
    tr, q = t.translation, t.rotation
    return transform_from_parts([tr.x, tr.y, tr.z], [q.x, q.y, q.z, q.w])


class TfSource:
    """``lookup(target, source, stamp_ns)`` -> T_target_source (4x4), never blocking."""

    def __init__(self, node: Node, cache_s: float = 30.0, prefer_tf2: bool = True):
        self._node = node
        self.rejected = 0  # transforms refused by the built-in buffer (tf2 logs its own)
        self.backend = "tf2_ros" if (prefer_tf2 and tf2_ros is not None) else "builtin"
        if self.backend == "tf2_ros":
            from rclpy.duration import Duration

            self._tf2_buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_s))
            self._listener = tf2_ros.TransformListener(self._tf2_buffer, node)
        else:
            self._buffer = TransformBuffer(cache_time_s=cache_s)
            from tf2_msgs.msg import TFMessage

            dynamic = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            static = QoSProfile(
                depth=100,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
                history=HistoryPolicy.KEEP_LAST,
            )
            self._subs = [
                node.create_subscription(TFMessage, "/tf", self._on_tf, dynamic),
                node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, static),
            ]

    def _feed(self, msg: Any, static: bool) -> None:
        for t in msg.transforms:
            try:
                self._buffer.set_transform(
                    t.header.frame_id,
                    t.child_frame_id,
                    stamp_to_ns(t.header.stamp),
                    transform_msg_to_matrix(t.transform),
                    static=static,
                )
            except ValueError as exc:  # malformed transform: log, keep the others
                self.rejected += 1
                self._node.get_logger().warning(
                    f"ignoring transform {t.header.frame_id!r} <- {t.child_frame_id!r} "
                    f"({self.rejected} rejected so far): {exc}",
                    throttle_duration_sec=5.0,
                )

    def _on_tf(self, msg: Any) -> None:
        self._feed(msg, static=False)

    def _on_tf_static(self, msg: Any) -> None:
        self._feed(msg, static=True)

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        if self.backend == "builtin":
            return self._buffer.lookup(target, source, stamp_ns)
        try:
            t = self._tf2_buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns))
        except tf2_ros.ExtrapolationException as exc:
            reason = "future" if "future" in str(exc) else "expired"
            raise TransformUnavailableError(reason, str(exc)) from exc
        except tf2_ros.ConnectivityException as exc:
            raise TransformUnavailableError("disconnected", str(exc)) from exc
        except tf2_ros.LookupException as exc:
            raise TransformUnavailableError("unknown_frame", str(exc)) from exc
        except tf2_ros.TransformException as exc:
            raise TransformUnavailableError("unknown_frame", str(exc)) from exc
        return transform_msg_to_matrix(t.transform)

    def destroy(self) -> None:
        if self.backend == "builtin":
            for sub in self._subs:
                self._node.destroy_subscription(sub)
        else:
            self._listener.unregister()
