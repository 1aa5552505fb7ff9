"""The object layer's messages: ``~/objects`` (llava3d_interfaces/ObjectList), the
labelled instance boxes for RViz, and an instance's surface points as a PointCloud2.

Plain functions from core snapshots to messages, tested without a graph."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from geometry_msgs.msg import Vector3
from llava3d_interfaces.msg import ObjectList, SceneObject
from rclpy.duration import Duration
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from llava3d_ros.core.objects.instances import ObjectInstance, ObjectSnapshot
from llava3d_ros.ros.conversions import fill_box_pose
from llava3d_ros.ros.visualisation import box_markers, make_cloud

_OBJECT_RGBA = (0.2, 0.6, 1.0, 0.35)
_FURNITURE_RGBA = (0.8, 0.6, 0.2, 0.2)


def _time(seconds: float) -> DurationMsg:
    """Seconds as a builtin_interfaces Duration (Time has the same sec/nanosec fields)."""
    return Duration(seconds=max(float(seconds), 0.0)).to_msg()


def scene_object_msg(inst: ObjectInstance) -> SceneObject:
    msg = SceneObject(id=int(inst.id), role=inst.role, label=inst.label)
    msg.label_score = float(inst.label_score)
    msg.top_labels = list(inst.labels.names)
    msg.top_scores = [float(v) for v in inst.labels.scores]
    msg.color = inst.colour
    fill_box_pose(msg.center, inst.box)
    msg.size = Vector3(
        x=float(inst.box.size[0]), y=float(inst.box.size[1]), z=float(inst.box.size[2])
    )
    msg.support_id = int(inst.support_id)
    msg.num_points = len(inst.points)
    msg.num_observations = int(inst.observations)
    # builtin_interfaces/Time and Duration share their fields (sec, nanosec).
    for field, value in (("first_seen", inst.first_seen), ("last_seen", inst.last_seen)):
        d = _time(value)
        t = getattr(msg, field)
        t.sec, t.nanosec = d.sec, d.nanosec
    return msg


def object_list_msg(header: Header, snapshot: ObjectSnapshot, pending_crops: int = 0) -> ObjectList:
    msg = ObjectList(
        header=header,
        objects=[scene_object_msg(i) for i in snapshot.instances],
        update_count=int(snapshot.version),
        update_time_s=float(snapshot.update_time_s),
        pending_crops=int(pending_crops),
    )
    d = _time(snapshot.stamp)
    msg.data_stamp.sec, msg.data_stamp.nanosec = d.sec, d.nanosec
    return msg


def object_markers(header: Header, snapshot: ObjectSnapshot) -> MarkerArray:
    """Every instance as a labelled box: objects blue, furniture orange."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for role, rgba in (("object", _OBJECT_RGBA), ("furniture", _FURNITURE_RGBA)):
        insts = [i for i in snapshot.instances if i.role == role]
        labels = [f"#{i.id} {i.colour} {i.label} {i.label_score:.2f}" for i in insts]
        markers += box_markers(header, [i.box for i in insts], labels, ns=role, rgba=rgba)
    return MarkerArray(markers=markers)


def instance_cloud(
    header: Header, inst: ObjectInstance, t_target_map: np.ndarray | None = None
) -> PointCloud2:
    """An instance's surface points (x, y, z, rgb), moved into another frame when given."""
    pts = inst.points.astype(np.float64)
    if t_target_map is not None:
        pts = pts @ t_target_map[:3, :3].T + t_target_map[:3, 3]
    colors = np.clip(np.round(inst.colors * 255.0), 0, 255).astype(np.uint8)
    return make_cloud(header, pts.astype(np.float32), colors)
