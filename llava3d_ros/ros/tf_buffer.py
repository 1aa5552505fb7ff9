"""A small TF buffer for environments without tf2_ros (ROS 2 from wheels): a frame tree
fed by /tf and /tf_static, lookups with interpolation (linear translation, slerp
rotation) and no extrapolation. Plain Python + numpy, no rclpy, so it is unit tested
on its own; the node uses tf2_ros instead whenever it is importable.

Lookups never block: a stamp newer than the data is ``TransformUnavailableError`` with
reason "future" (retry later), an older one than the cache keeps is "expired". Stamp 0
means "latest" (queries use it; the ingest worker drops images stamped 0 before they
get here).

Transforms are validated where TF is fed: non-finite values and quaternions whose norm
is off by more than :data:`QUATERNION_NORM_TOLERANCE` are refused (``ValueError``), as
tf2 refuses them; a quaternion within the tolerance is normalised. Before, a non-unit
quaternion was silently normalised whatever its norm (a zero or 1e6-norm quaternion
from a broken publisher became some rotation).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llava3d_ros.core.geometry import (
    interpolate_transform,
    invert_transform,
    make_transform,
    validate_transform,
)

#: |q| must lie in [1 - tol, 1 + tol]; within it the quaternion is normalised.
QUATERNION_NORM_TOLERANCE = 0.01


def transform_from_parts(
    translation: Sequence[float], quaternion_xyzw: Sequence[float]
) -> np.ndarray:
    """4x4 transform of a TF message's translation and rotation, or ``ValueError`` for
    non-finite values or a quaternion that is not (nearly) unit length."""
    tr = np.asarray(translation, dtype=np.float64)
    q = np.asarray(quaternion_xyzw, dtype=np.float64)
    if not (np.all(np.isfinite(tr)) and np.all(np.isfinite(q))):
        raise ValueError(f"non-finite transform: translation {tr.tolist()}, rotation {q.tolist()}")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise ValueError(
            f"rotation quaternion {q.tolist()} has norm {norm:.6g}; it must be a unit "
            f"quaternion (|q| within {QUATERNION_NORM_TOLERANCE} of 1)"
        )
    return make_transform(tr, q / norm)


class TransformUnavailableError(LookupError):
    """``reason``: "unknown_frame", "disconnected", "future" or "expired"."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)  # sorted ns
    transforms: list[np.ndarray] = field(default_factory=list)  # T_parent_child

    def at(self, stamp_ns: int, child: str) -> np.ndarray:
        if self.static:
            return self.transforms[-1]
        if stamp_ns == 0:
            return self.transforms[-1]
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            return self.transforms[i]
        if i == len(self.stamps):
            raise TransformUnavailableError(
                "future",
                f"{self.parent} <- {child}: asked for {stamp_ns * 1e-9:.3f} s, "
                f"latest is {self.stamps[-1] * 1e-9:.3f} s",
            )
        if i == 0:
            raise TransformUnavailableError(
                "expired",
                f"{self.parent} <- {child}: asked for {stamp_ns * 1e-9:.3f} s, "
                f"oldest kept is {self.stamps[0] * 1e-9:.3f} s",
            )
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        alpha = (stamp_ns - t0) / (t1 - t0)
        return interpolate_transform(self.transforms[i - 1], self.transforms[i], alpha)


class TransformBuffer:
    def __init__(self, cache_time_s: float = 10.0):
        self.cache_ns = int(cache_time_s * 1e9)
        self._edges: dict[str, _Edge] = {}  # child frame -> edge to its parent
        self._lock = threading.Lock()

    def set_transform(
        self, parent: str, child: str, stamp_ns: int, transform: np.ndarray, static: bool = False
    ) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform {parent!r} <- {child!r}")
        transform = validate_transform(transform, f"transform {parent!r} <- {child!r}")
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                # A frame has one parent: a re-parented frame starts a fresh history.
                edge = self._edges[child] = _Edge(parent, static)
            if static:
                edge.stamps, edge.transforms = [stamp_ns], [transform]
                return
            i = bisect.bisect_left(edge.stamps, stamp_ns)
            if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
                edge.transforms[i] = transform
            else:
                edge.stamps.insert(i, stamp_ns)
                edge.transforms.insert(i, transform)
            cutoff = edge.stamps[-1] - self.cache_ns
            drop = bisect.bisect_left(edge.stamps, cutoff)
            if drop > 0 and drop < len(edge.stamps):
                del edge.stamps[:drop], edge.transforms[:drop]

    def frames(self) -> set[str]:
        with self._lock:
            return set(self._edges) | {e.parent for e in self._edges.values()}

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
            if len(chain) > 1000:
                raise TransformUnavailableError("disconnected", f"TF cycle at {frame!r}")
        return chain

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """T_target_source at ``stamp_ns`` (0 = latest available on each edge)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        with self._lock:
            known = set(self._edges) | {e.parent for e in self._edges.values()}
            for frame in (target, source):
                if frame not in known:
                    raise TransformUnavailableError("unknown_frame", f"frame {frame!r} is unknown")
            up_source, up_target = self._chain(source), self._chain(target)
            common = next((f for f in up_source if f in set(up_target)), None)
            if common is None:
                raise TransformUnavailableError(
                    "disconnected", f"{target!r} and {source!r} are not in one TF tree"
                )
            t_common_source = np.eye(4)
            for child in up_source[: up_source.index(common)]:
                t_common_source = self._edges[child].at(stamp_ns, child) @ t_common_source
            t_common_target = np.eye(4)
            for child in up_target[: up_target.index(common)]:
                t_common_target = self._edges[child].at(stamp_ns, child) @ t_common_target
        return invert_transform(t_common_target) @ t_common_source
