"""The last few keyframes as images: what a 2D model sees when asked about the view.

The memory keeps features, not pictures. A question about what the camera sees now ("what
is in front of me") needs the picture itself, so the pipeline keeps the colour image,
depth, intrinsics and pose of its latest keyframes in a small ring (newest last). For a
question about one object, :meth:`ViewRing.facing` picks the kept view that sees the
object most squarely: in the image, in front of the camera, not hidden behind nearer
depth, closest to the optical axis.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .geometry import CameraIntrinsics, transform_points
from .spatial import Box3D

# Depth nearer than the point by more than this hides it (metres): fused-depth noise and
# the object's own thickness stay under it.
DEFAULT_OCCLUSION_TOLERANCE_M = 0.3
# Lifting a 2D box: pixels within this depth of the box centre's depth are the object
# (the rest is what lies behind or in front of it inside the rectangle).
DEFAULT_OBJECT_DEPTH_BAND_M = 0.3


@dataclass(frozen=True)
class KeyframeView:
    """One integrated keyframe. Arrays are the ring's own copies (read-only)."""

    stamp_ns: int  # the colour image's header stamp
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32 metres, NaN where invalid
    intrinsics: CameraIntrinsics
    t_map_camera: np.ndarray  # (4, 4) camera -> map, optical frame (z forward)

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns * 1e-9

    def sees(
        self, point_map: np.ndarray, tolerance_m: float = DEFAULT_OCCLUSION_TOLERANCE_M
    ) -> float | None:
        """Cosine between the optical axis and the ray to ``point_map`` when the point is
        in the image, in front of the camera and not behind nearer depth; else None."""
        t_cam_map = np.linalg.inv(self.t_map_camera)
        p = t_cam_map[:3, :3] @ np.asarray(point_map, np.float64) + t_cam_map[:3, 3]
        if p[2] <= 1e-6:
            return None
        k = self.intrinsics
        u = k.fx * p[0] / p[2] + k.cx
        v = k.fy * p[1] / p[2] + k.cy
        if not (0 <= u < k.width and 0 <= v < k.height):
            return None
        d = self.depth_m[int(v), int(u)]
        if np.isfinite(d) and d < p[2] - tolerance_m:
            return None  # something nearer covers it
        return float(p[2] / np.linalg.norm(p))

    def lift_box(
        self,
        rect: tuple[float, float, float, float],
        label: str = "",
        band_m: float = DEFAULT_OBJECT_DEPTH_BAND_M,
        min_pixels: int = 10,
    ) -> Box3D | None:
        """A 2D box (u0, v0, u1, v1 in this view's pixels) -> the map-frame box of the
        surface it frames: the valid depth in the rectangle, kept within ``band_m`` of
        the median depth of its central half (the object, not the wall behind it), its
        2nd..98th percentile extent. None when too few pixels have depth."""
        k = self.intrinsics
        u0, v0, u1, v1 = (float(x) for x in rect)
        c0, c1 = max(0, int(np.floor(u0))), min(k.width, int(np.ceil(u1)))
        r0, r1 = max(0, int(np.floor(v0))), min(k.height, int(np.ceil(v1)))
        if c1 - c0 < 1 or r1 - r0 < 1:
            return None
        depth = self.depth_m[r0:r1, c0:c1]
        h, w = depth.shape
        centre = depth[h // 4 : h - h // 4 or h, w // 4 : w - w // 4 or w]
        centre = centre[np.isfinite(centre)]
        if centre.size == 0:
            return None
        keep = np.isfinite(depth) & (np.abs(depth - np.median(centre)) <= band_m)
        if int(keep.sum()) < min_pixels:
            return None
        rows, cols = np.nonzero(keep)
        z = depth[rows, cols].astype(np.float64)
        x = (cols + c0 - k.cx) / k.fx * z  # the pinhole back-projection of ``unproject``
        y = (rows + r0 - k.cy) / k.fy * z
        pts = transform_points(self.t_map_camera, np.stack([x, y, z], axis=1))
        lo, hi = np.percentile(pts, 2, axis=0), np.percentile(pts, 98, axis=0)
        return Box3D.from_min_max(lo, hi, label=label, score=1.0, num_voxels=int(keep.sum()))


class ViewRing:
    """The ``size`` latest keyframe views (thread-safe: ingest adds, queries read)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self._views: deque[KeyframeView] = deque(maxlen=self.size)
        self._lock = threading.Lock()

    def add(
        self,
        stamp_ns: int,
        rgb: np.ndarray,
        depth_m: np.ndarray,
        intrinsics: CameraIntrinsics,
        t_map_camera: np.ndarray,
    ) -> None:
        """Keep copies of one keyframe's arrays (the caller may reuse its buffers)."""
        arrays: list[np.ndarray] = [
            np.array(rgb, np.uint8, copy=True),
            np.array(depth_m, np.float32, copy=True),
            np.array(t_map_camera, np.float64, copy=True),
        ]
        for a in arrays:
            a.setflags(write=False)
        view = KeyframeView(int(stamp_ns), arrays[0], arrays[1], intrinsics, arrays[2])
        with self._lock:
            self._views.append(view)

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)

    def clear(self) -> None:
        with self._lock:
            self._views.clear()

    def latest(self) -> KeyframeView | None:
        with self._lock:
            return self._views[-1] if self._views else None

    def facing(
        self, point_map: np.ndarray, tolerance_m: float = DEFAULT_OCCLUSION_TOLERANCE_M
    ) -> KeyframeView | None:
        """The kept view that sees ``point_map`` closest to its optical axis (the newest
        of equals), or None when no kept view sees it."""
        with self._lock:
            views = list(self._views)
        best: tuple[float, int, KeyframeView] | None = None
        for i, view in enumerate(views):
            cos = view.sees(point_map, tolerance_m)
            if cos is not None and (best is None or (cos, i) > best[:2]):
                best = (cos, i, view)
        return None if best is None else best[2]
