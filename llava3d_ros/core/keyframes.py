"""Keyframe selection: the encoder is the expensive step, so a frame is integrated only
when the camera moved or turned enough since the last keyframe, or enough time passed
(a static camera still refreshes the memory of a changing scene)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llava3d_ros.core.geometry import rotation_angle_between, translation_between
from llava3d_ros.core.options import option


@dataclass(frozen=True)
class KeyframePolicy:
    min_translation_m: float = option(0.10, "integrate when the camera moved this far", 0.0, 100.0)
    min_rotation_deg: float = option(10.0, "... or turned this much", 0.0, 360.0)
    max_interval_s: float = option(2.0, "... or this long passed (0 = never by time)", 0.0, 3600.0)
    min_interval_s: float = option(
        0.0, "never integrate more often than this (caps encoder load)", 0.0, 3600.0
    )

    def __post_init__(self) -> None:
        for name in ("min_translation_m", "min_rotation_deg", "min_interval_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class KeyframeSelector:
    def __init__(self, policy: KeyframePolicy | None = None):
        self.policy = policy or KeyframePolicy()
        self._last_pose: np.ndarray | None = None
        self._last_stamp: float | None = None

    def reset(self) -> None:
        self._last_pose = None
        self._last_stamp = None

    def check(self, t_map_camera: np.ndarray, stamp_s: float) -> str | None:
        """The reason this frame is a keyframe ("first", "moved", "turned", "timer"), or None."""
        p = self.policy
        if self._last_pose is None or self._last_stamp is None:
            return "first"
        dt = stamp_s - self._last_stamp
        if dt < 0:
            # Time went backwards (bag restarted, sim reset): start over.
            return "first"
        if dt < p.min_interval_s:
            return None
        if translation_between(self._last_pose, t_map_camera) >= p.min_translation_m:
            return "moved"
        if np.degrees(rotation_angle_between(self._last_pose, t_map_camera)) >= p.min_rotation_deg:
            return "turned"
        if p.max_interval_s > 0 and dt >= p.max_interval_s:
            return "timer"
        return None

    def accept(self, t_map_camera: np.ndarray, stamp_s: float) -> None:
        self._last_pose = np.array(t_map_camera, dtype=np.float64)
        self._last_stamp = stamp_s
