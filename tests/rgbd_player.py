"""Publishes RGB-D frames, camera info and TF from the test process, the way a camera
driver and a localisation stack would: /tf_static base_link -> camera optical frame,
/tf map -> base_link per frame. Uses the real Middlebury frame (scikit-image)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from llava3d_ros.core.geometry import make_transform, quaternion_from_rotation_matrix
from llava3d_ros.ros.conversions import fill_image, ns_to_stamp

# Middlebury 2014 "Motorcycle" (scikit-image's 4x down-sampled copy) calibration.
MB_F, MB_CX, MB_CY, MB_DOFFS, MB_BASELINE_M = 994.978, 311.193, 254.877, 31.086, 0.193001
CAMERA_FRAME = "camera_color_optical_frame"
# base_link (x forward, z up) -> optical (z forward, x right, y down), 1 m above the base
BASE_TO_OPTICAL_XYZ, BASE_TO_OPTICAL_QUAT = (0.0, 0.0, 1.0), (-0.5, 0.5, -0.5, 0.5)


@dataclass
class RgbdFrame:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_mm: np.ndarray  # (H, W) uint16, 0 = invalid
    k: list[float]  # row-major 3x3


def middlebury_frame() -> RgbdFrame:
    from skimage.data import stereo_motorcycle

    left, _, disp = stereo_motorcycle()
    depth = np.where(np.isfinite(disp), MB_BASELINE_M * MB_F / (disp + MB_DOFFS), 0.0)
    depth_mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    return RgbdFrame(left, depth_mm, [MB_F, 0.0, MB_CX, 0.0, MB_F, MB_CY, 0.0, 0.0, 1.0])


def _transform(parent: str, child: str, stamp: Time, xyz, quat) -> TransformStamped:  # type: ignore[no-untyped-def]
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id, t.header.stamp = parent, child, stamp
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = xyz
    r = t.transform.rotation
    r.x, r.y, r.z, r.w = quat
    return t


class RgbdPlayer:
    def __init__(self, node: Node, prefix: str = "/camera"):
        self.node = node
        # Deep enough that a burst is never overwritten before a slow reader acks it.
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.color = node.create_publisher(Image, f"{prefix}/color/image_raw", reliable)
        self.depth = node.create_publisher(
            Image, f"{prefix}/aligned_depth_to_color/image_raw", reliable
        )
        self.info = node.create_publisher(CameraInfo, f"{prefix}/color/camera_info", reliable)
        self.tf = node.create_publisher(
            TFMessage, "/tf", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        )
        static_qos = QoSProfile(
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.tf_static = node.create_publisher(TFMessage, "/tf_static", static_qos)

    def subscribers_ready(self) -> bool:
        return all(
            p.get_subscription_count() > 0 for p in (self.color, self.depth, self.info, self.tf)
        )

    def publish_static(self) -> None:
        stamp = Time()
        t = _transform("base_link", CAMERA_FRAME, stamp, BASE_TO_OPTICAL_XYZ, BASE_TO_OPTICAL_QUAT)
        self.tf_static.publish(TFMessage(transforms=[t]))

    def publish_camera_pose(self, stamp_ns: int, t_map_camera: np.ndarray) -> None:
        """map -> base_link such that map -> optical frame is ``t_map_camera`` (4x4)."""
        t_base_cam = make_transform(BASE_TO_OPTICAL_XYZ, BASE_TO_OPTICAL_QUAT)
        t_map_base = t_map_camera @ np.linalg.inv(t_base_cam)
        q = quaternion_from_rotation_matrix(t_map_base[:3, :3])
        stamp = ns_to_stamp(stamp_ns, Time())
        xyz = tuple(float(v) for v in t_map_base[:3, 3])
        self.tf.publish(
            TFMessage(transforms=[_transform("map", "base_link", stamp, xyz, tuple(map(float, q)))])
        )

    def publish_pose(self, stamp_ns: int, x: float, yaw: float = 0.0) -> None:
        stamp = ns_to_stamp(stamp_ns, Time())
        q = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
        self.tf.publish(
            TFMessage(transforms=[_transform("map", "base_link", stamp, (x, 0.0, 0.0), q)])
        )

    def publish_frame(
        self,
        frame: RgbdFrame,
        stamp_ns: int,
        *,
        color_encoding: str = "rgb8",
        depth: np.ndarray | None = None,
        depth_encoding: str = "16UC1",
        frame_id: str = CAMERA_FRAME,
        info: bool = True,
    ) -> None:
        stamp = ns_to_stamp(stamp_ns, Time())
        depth_arr = frame.depth_mm if depth is None else depth
        c = fill_image(Image(), frame.rgb, "rgb8")
        c.encoding = color_encoding  # lets tests send a declared-but-unsupported encoding
        d = fill_image(Image(), depth_arr, depth_encoding)
        for msg in (c, d):
            msg.header.stamp, msg.header.frame_id = stamp, frame_id
        if info:
            h, w = frame.rgb.shape[:2]
            ci = CameraInfo(height=h, width=w, distortion_model="plumb_bob")
            ci.header.stamp, ci.header.frame_id = stamp, frame_id
            ci.k = frame.k
            ci.d = [0.0] * 5
            self.info.publish(ci)
        self.depth.publish(d)
        self.color.publish(c)
