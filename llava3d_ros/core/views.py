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

from .geometry import CameraIntrinsics

# Depth nearer than the point by more than this hides it (metres): fused-depth noise and
# the object's own thickness stay under it.
DEFAULT_OCCLUSION_TOLERANCE_M = 0.3


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
