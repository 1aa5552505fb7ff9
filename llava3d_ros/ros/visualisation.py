"""RViz outputs: labelled boxes of the latest grounding (``~/grounding_markers``) and the
memory as a point cloud coloured by a PCA of its features (``~/memory_cloud``).

The message builders are plain functions (tested without a graph); :class:`Visualiser`
owns the lifecycle publishers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from llava3d_ros.core.encoders.base import GROUND, VISION
from llava3d_ros.core.spatial import Box3D
from llava3d_ros.ros.conversions import fill_box_pose

#: Box colour (RGBA) of grounding results.
_BOX_RGBA = (0.1, 0.9, 0.2, 0.35)


def box_markers(
    header: Header,
    boxes: Sequence[Box3D],
    labels: Sequence[str],
    ns: str = "boxes",
    rgba: tuple[float, float, float, float] = _BOX_RGBA,
) -> list[Marker]:
    """A translucent cube and a text label per box (ids 0..n-1 in ``ns`` and
    ``ns + "_labels"``)."""
    markers: list[Marker] = []
    for i, (box, text) in enumerate(zip(boxes, labels, strict=True)):
        cube = Marker(header=header, ns=ns, id=i, type=Marker.CUBE, action=Marker.ADD)
        fill_box_pose(cube.pose, box)
        cube.scale.x, cube.scale.y, cube.scale.z = (max(float(v), 0.01) for v in box.size)
        cube.color.r, cube.color.g, cube.color.b, cube.color.a = rgba
        label = Marker(header=header, ns=f"{ns}_labels", id=i, type=Marker.TEXT_VIEW_FACING)
        label.pose.position.x, label.pose.position.y = float(box.center[0]), float(box.center[1])
        label.pose.position.z = float(box.center[2] + box.size[2] / 2 + 0.08)
        label.scale.z = 0.08
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = text
        markers += [cube, label]
    return markers


def pca_colors(features: np.ndarray, max_sample: int = 2048) -> np.ndarray:
    """(N, C) features -> (N, 3) uint8: the top 3 principal components as RGB, so voxels
    with similar features share a colour (what RViz users read as "same stuff").

    The components come from the C x C covariance of at most ``max_sample`` evenly spaced
    rows (an SVD of every row took seconds at 384 channels and kept a core busy), with
    signs fixed so the largest loading is positive: colours stay put between messages."""
    x = features.astype(np.float32, copy=False)
    x = x[:, np.all(np.isfinite(x), axis=0)] if x.size else x
    if len(x) < 3 or x.shape[1] < 3:
        return np.full((len(features), 3), 200, np.uint8)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sample = (x[:: max(1, len(x) // max_sample)] - mean).astype(np.float64)
    _, vectors = np.linalg.eigh(sample.T @ sample)
    comps = vectors[:, ::-1][:, :3]
    comps *= np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(3)])
    comps32 = comps.astype(np.float32)
    proj = x @ comps32 - mean @ comps32
    lo, hi = np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0)
    return (np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def make_cloud(header: Header, points: np.ndarray, colors: np.ndarray) -> PointCloud2:
    """x, y, z float32 + rgb packed in a float32, the layout RViz colours by."""
    n = len(points)
    c = colors.astype(np.uint32)
    rgb = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    data = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    data["x"], data["y"], data["z"] = points[:, 0], points[:, 1], points[:, 2]
    data["rgb"] = rgb
    fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
    ]
    return PointCloud2(
        header=header,
        height=1,
        width=n,
        fields=fields,
        is_bigendian=False,
        point_step=16,
        row_step=16 * n,
        data=data.tobytes(),
        is_dense=True,
    )


class Visualiser:
    """The RViz publishers of one configuration (created on configure, destroyed on
    cleanup). Publishing needs the node active: lifecycle publishers drop otherwise."""

    def __init__(self, node: Any, max_cloud_points: int) -> None:
        self._node = node
        self.max_cloud_points = max_cloud_points
        self.markers = node.create_lifecycle_publisher(MarkerArray, "~/grounding_markers", 10)
        self.cloud = node.create_lifecycle_publisher(PointCloud2, "~/memory_cloud", 2)

    def destroy(self) -> None:
        for pub in (self.markers, self.cloud):
            self._node.destroy_lifecycle_publisher(pub)

    def publish_grounding(self, header: Header, boxes: Sequence[Box3D], query: str) -> None:
        labels = [f"{query} {b.score:.2f}" for b in boxes]
        markers = [Marker(header=header, action=Marker.DELETEALL)]
        self.markers.publish(MarkerArray(markers=markers + box_markers(header, boxes, labels)))

    def publish_memory_cloud(self, header: Header, memory: Any) -> None:
        if len(memory) == 0:
            return
        kind = GROUND if GROUND in memory.feature_dims else VISION
        view = memory.snapshot_view([kind])
        points = view.centroids.float().cpu().numpy()
        feats = view.features[kind].float()
        if len(points) > self.max_cloud_points:
            keep = np.linspace(0, len(points) - 1, self.max_cloud_points).astype(np.int64)
            points, feats = points[keep], feats[keep]
        colors = pca_colors(feats.cpu().numpy())
        self.cloud.publish(make_cloud(header, points, colors))
