"""The frame LLaVA-3D's position embeddings were trained in, fitted to the robot's map.

Both position MLPs (scene tokens and ``<boxes>`` clicks) saw ScanNet scenes in their
axis-aligned frame: z up, the floor at z ~ 0, xy centred on the room, metres. A robot's
map frame is none of that: its origin can be 100 m from the room, its z = 0 is wherever
odometry started (a robot on the first floor of a building mapped from the basement),
and an IMU-less odometry can leave the floor tilted. Map coordinates fed straight in are
out of distribution for every position embedding, and in bf16 large coordinates round
to 0.25 m steps at 32-64 m.

:class:`SceneFrame` is a rigid map -> scene transform: a rotation that takes the floor's
normal to +z (the smallest one, so the map's heading is kept), then a shift that puts
the floor at z = 0 and the middle of the scene tokens' xy extent at the origin.
:func:`fit_scene_frame` estimates it from the pooled scene-token positions: the floor is
the plane through the most of the lowest points (RANSAC on a fixed seed, refined by
least squares), accepted when its normal is within ``max_tilt_deg`` of the map's z;
without one, the map's z stays up and the floor is the 2nd percentile of z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .prompt import TextBox

__all__ = ["SceneFrame", "fit_floor", "fit_scene_frame"]


@dataclass(frozen=True)
class SceneFrame:
    """``scene = R @ map - origin`` (``origin`` in the rotated frame); ``R`` (3, 3)."""

    rotation: np.ndarray
    origin: np.ndarray

    @staticmethod
    def identity() -> SceneFrame:
        return SceneFrame(np.eye(3), np.zeros(3))

    def to_scene(self, points_map: np.ndarray) -> np.ndarray:
        p = np.asarray(points_map, dtype=np.float64)
        return p @ self.rotation.T - self.origin

    def to_map(self, points_scene: np.ndarray) -> np.ndarray:
        p = np.asarray(points_scene, dtype=np.float64)
        return (p + self.origin) @ self.rotation

    @property
    def tilt_deg(self) -> float:
        """Angle between the map's z and the scene's z (the floor's tilt in the map)."""
        return math.degrees(math.acos(float(np.clip(self.rotation[2, 2], -1.0, 1.0))))

    def box_to_map(self, box: TextBox) -> TextBox:
        """An axis-aligned scene-frame box -> the axis-aligned map box around it (the
        same box when the floor is level: the rotation then leaves z and heading)."""
        c = np.asarray(box.center, dtype=np.float64)
        half = np.asarray(box.size, dtype=np.float64) / 2.0
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        corners = self.to_map(c + signs * half)
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        center = self.to_map(c[None])[0]
        return TextBox(
            center=(float(center[0]), float(center[1]), float(center[2])),
            size=(float(hi[0] - lo[0]), float(hi[1] - lo[1]), float(hi[2] - lo[2])),
            start=box.start,
            end=box.end,
        )


def _rotation_to_z(normal: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit ``normal`` (z > 0) to +z."""
    up = np.array([[0.0, 0.0, 1.0]])
    return np.asarray(Rotation.align_vectors(up, normal[None])[0].as_matrix())


def fit_floor(
    points: np.ndarray,
    *,
    max_tilt_deg: float = 30.0,
    inlier_m: float = 0.05,
    lowest_fraction: float = 0.3,
    min_inlier_fraction: float = 0.05,
    iterations: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, float] | None:
    """(unit normal with positive z, offset d) of the floor plane ``n . p + d = 0``, or
    None when no plane within ``max_tilt_deg`` of level holds ``min_inlier_fraction`` of
    the points. Candidates are drawn from the lowest ``lowest_fraction`` of the points
    along z (floors are below tables); inliers are counted over all points."""
    p = np.asarray(points, dtype=np.float64)
    p = p[np.all(np.isfinite(p), axis=1)]
    if len(p) < 3:
        return None
    low = p[p[:, 2] <= np.quantile(p[:, 2], lowest_fraction)]
    if len(low) < 3:
        return None
    rng = np.random.default_rng(seed)
    cos_max = math.cos(math.radians(max_tilt_deg))
    best: tuple[int, np.ndarray] | None = None
    for _ in range(iterations):
        a, b, c = low[rng.choice(len(low), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = float(np.linalg.norm(n))
        if norm < 1e-9:
            continue
        n = n / norm
        if n[2] < 0:
            n = -n
        if n[2] < cos_max:
            continue
        inliers = np.abs((p - a) @ n) < inlier_m
        count = int(inliers.sum())
        if best is None or count > best[0]:
            best = (count, inliers)
    if best is None or best[0] < max(3, min_inlier_fraction * len(p)):
        return None
    q = p[best[1]]
    centre = q.mean(axis=0)
    normal = np.linalg.svd(q - centre, full_matrices=False)[2][-1]
    if normal[2] < 0:
        normal = -normal
    if normal[2] < cos_max:
        return None
    return normal, float(-normal @ centre)


def fit_scene_frame(
    points_map: np.ndarray, *, max_tilt_deg: float = 30.0, min_tilt_deg: float = 1.0
) -> SceneFrame:
    """The scene frame of pooled scene-token positions (module doc). A floor tilted less
    than ``min_tilt_deg`` counts as level (a fit's noise must not turn the map's axes)."""
    p = np.asarray(points_map, dtype=np.float64).reshape(-1, 3)
    p = p[np.all(np.isfinite(p), axis=1)]
    if len(p) == 0:
        return SceneFrame.identity()
    floor = fit_floor(p, max_tilt_deg=max_tilt_deg)
    if floor is None:
        rotation = np.eye(3)
        rotated = p
        floor_z = float(np.quantile(p[:, 2], 0.02))
    else:
        normal, offset = floor
        if math.degrees(math.acos(min(1.0, float(normal[2])))) < min_tilt_deg:
            rotation, rotated = np.eye(3), p
            # The level plane's height under the middle of the points.
            mid = p[:, :2].mean(axis=0)
            floor_z = float(-(offset + normal[0] * mid[0] + normal[1] * mid[1]) / normal[2])
        else:
            rotation = _rotation_to_z(normal)
            rotated = p @ rotation.T
            floor_z = -offset  # n . p = -d is the floor's height along the new z
    lo = np.quantile(rotated[:, :2], 0.01, axis=0)
    hi = np.quantile(rotated[:, :2], 0.99, axis=0)
    centre = (lo + hi) / 2.0
    return SceneFrame(rotation, np.array([centre[0], centre[1], floor_z]))
