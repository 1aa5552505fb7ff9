"""sensor_msgs/Image and geometry message conversions with numpy (no cv_bridge).

Works on any object with the message's fields, so it is tested without a ROS graph.
Every failure raises ``ImageConversionError`` whose ``reason`` is the drop-counter key
the node uses ("unknown_encoding", "bad_image_size").
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from llava3d_ros.core.geometry import quaternion_from_rotation_matrix

# encoding -> (numpy dtype, channels)
_COLOR_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "8UC3": ("u1", 3),  # treated as rgb8: the generic name carries no channel order
}
_DEPTH_ENCODINGS: dict[str, tuple[str, int]] = {
    "16UC1": ("u2", 1),
    "mono16": ("u2", 1),
    "32FC1": ("f4", 1),
}
COLOR_ENCODINGS = tuple(_COLOR_ENCODINGS)
DEPTH_ENCODINGS = tuple(_DEPTH_ENCODINGS)


class ImageConversionError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ImageLike(Protocol):
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: Any


def _to_array(msg: ImageLike, table: dict[str, tuple[str, int]], kind: str) -> np.ndarray:
    if msg.encoding not in table:
        raise ImageConversionError(
            "unknown_encoding",
            f"unsupported {kind} encoding {msg.encoding!r}; accepted: {', '.join(table)}",
        )
    code, channels = table[msg.encoding]
    dtype = np.dtype(code).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.height <= 0 or msg.width <= 0:
        raise ImageConversionError("bad_image_size", f"empty {kind} image {msg.width}x{msg.height}")
    if msg.step < row_bytes:
        raise ImageConversionError(
            "bad_image_size", f"{kind} step {msg.step} < {row_bytes} bytes per row"
        )
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    if buf.size < msg.step * (msg.height - 1) + row_bytes:
        raise ImageConversionError(
            "bad_image_size",
            f"{kind} data has {buf.size} bytes, {msg.width}x{msg.height} {msg.encoding} "
            f"with step {msg.step} needs {msg.step * msg.height}",
        )
    rows = np.lib.stride_tricks.as_strided(
        buf, shape=(msg.height, row_bytes), strides=(msg.step, 1), writeable=False
    )
    arr = np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width, channels)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def image_to_rgb(msg: ImageLike) -> np.ndarray:
    """-> (H, W, 3) uint8 RGB, whatever the colour encoding."""
    arr = _to_array(msg, _COLOR_ENCODINGS, "colour")
    if msg.encoding in ("bgr8", "bgra8"):
        arr = arr[..., 2::-1]
    elif msg.encoding == "mono8":
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def depth_image_to_array(msg: ImageLike) -> np.ndarray:
    """-> (H, W) raw depth (uint16 millimetres or float32 metres, as encoded)."""
    return _to_array(msg, _DEPTH_ENCODINGS, "depth")[..., 0]


def fill_image(msg: Any, array: np.ndarray, encoding: str) -> Any:
    """Write ``array`` into a sensor_msgs/Image-like ``msg`` (little endian, packed rows)."""
    table = {**_COLOR_ENCODINGS, **_DEPTH_ENCODINGS}
    if encoding not in table:
        raise ImageConversionError("unknown_encoding", f"unsupported encoding {encoding!r}")
    code, channels = table[encoding]
    arr = np.ascontiguousarray(array, dtype=np.dtype(code).newbyteorder("<"))
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ImageConversionError(
            "bad_image_size", f"{encoding} needs {channels} channels, got shape {array.shape}"
        )
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * arr.dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, stamp: Any) -> Any:
    stamp.sec, stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return stamp


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about +z by ``yaw`` radians, 3x3."""
    c, s = float(np.cos(yaw)), float(np.sin(yaw))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def fill_pose(pose: Any, center: np.ndarray, rotation: np.ndarray) -> Any:
    """Write a position and a 3x3 rotation into a geometry_msgs/Pose-like object."""
    q = quaternion_from_rotation_matrix(rotation)
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in center)
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)
    return pose


def fill_box_pose(pose: Any, box: Any, t_target_map: np.ndarray | None = None) -> Any:
    """A Box3D's centre and yaw as a Pose, optionally moved into another frame by
    ``t_target_map`` (4x4)."""
    center = np.asarray(box.center, dtype=np.float64)
    rot = yaw_matrix(box.yaw)
    if t_target_map is not None:
        center = t_target_map[:3, :3] @ center + t_target_map[:3, 3]
        rot = t_target_map[:3, :3] @ rot
    return fill_pose(pose, center, rot)
