"""3D boxes and spatial relations between them, computed exactly from box geometry.

Conventions: boxes live in the map frame, z up (REP-103). A box is a yaw-rotated
cuboid: ``center`` (3,), ``size`` (3,) full extents along the box's own x/y/z axes, and
``yaw`` (rad) about +z. Axis-aligned boxes are ``yaw == 0``.

Viewer-relative relations ("left of", "in front of") take a :class:`Viewpoint` - a
position and a viewing direction. Only the horizontal part of the viewing direction
matters: "left" is ``up x forward`` with up = +z, so a camera pitched down at a table
still has a well-defined left.

Every relation returns a :class:`RelationResult` with the answer (bool or number), a
signed ``margin`` in metres (how much room the answer has; its sign agrees with the
answer for boolean relations) and a ``score`` in [0, 1] (0 clearly false, 0.5 borderline,
1 clearly true). ``relation(name, a, b, viewpoint)`` calls them by name for the
question-answering code.

numpy only: usable from the nodes, the evaluator and tests alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "RELATIONS",
    "RELATION_PHRASES",
    "Box3D",
    "RelationResult",
    "Viewpoint",
    "above",
    "behind",
    "below",
    "between",
    "bigger",
    "convex_polygon_intersection",
    "describe_position",
    "distance",
    "in_front_of",
    "iou_3d",
    "left_of",
    "next_to",
    "on_top_of",
    "polygon_area",
    "relation",
    "relation_names",
    "right_of",
    "smaller",
]

_EPS = 1e-12
# Defaults of the relation thresholds (metres unless stated). A voxel memory quantises
# surfaces to ~0.05-0.2 m, so contact can read as a gap or an overlap of about one voxel.
ON_TOP_GAP_TOL = 0.1
ON_TOP_MIN_OVERLAP = 0.3  # fraction of the smaller footprint that must be under/over the other
NEXT_TO_ABS_TOL = 0.15
NEXT_TO_REL_TOL = 1.0  # x the mean largest horizontal extent of the two boxes
SIZE_CLEAR_RATIO = 2.0  # volume ratio at which bigger/smaller is "clearly" true


# --------------------------------------------------------------------------- polygons


def polygon_area(poly: ArrayLike) -> float:
    """Signed shoelace area of a 2D polygon (K, 2); positive when counter-clockwise."""
    p = np.asarray(poly, dtype=np.float64)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def convex_polygon_intersection(subject: ArrayLike, clip: ArrayLike) -> NDArray[np.float64]:
    """Intersection of two convex counter-clockwise polygons, (K, 2) CCW (K may be 0).

    Sutherland-Hodgman: clip ``subject`` successively by each edge's inner half-plane
    of ``clip``; exact for convex clip polygons up to float rounding."""
    out = np.asarray(subject, dtype=np.float64)
    c = np.asarray(clip, dtype=np.float64)
    n = len(c)
    for i in range(n):
        if len(out) == 0:
            break
        a, b = c[i], c[(i + 1) % n]
        edge = b - a
        # > 0 inside (left of the directed edge for a CCW clip polygon).
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])
        nxt = np.roll(out, -1, axis=0)
        side_nxt = np.roll(side, -1)
        pts: list[NDArray[np.float64]] = []
        for p, q, sp, sq in zip(out, nxt, side, side_nxt, strict=True):
            if sp >= 0.0:
                pts.append(p)
            if (sp >= 0.0) != (sq >= 0.0):
                t = sp / (sp - sq)
                pts.append(p + t * (q - p))
        out = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return out


def _point_segment_distance(
    p: NDArray[np.float64], a: NDArray[np.float64], b: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Distance of points p (K, 2) to segments a->b (S, 2) -> (K, S)."""
    ab = b - a  # (S, 2)
    ap = p[:, None, :] - a[None, :, :]  # (K, S, 2)
    denom = np.maximum(np.einsum("sd,sd->s", ab, ab), _EPS)
    t = np.clip(np.einsum("ksd,sd->ks", ap, ab) / denom, 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - closest, axis=-1)


def _convex_polygon_distance(p1: NDArray[np.float64], p2: NDArray[np.float64]) -> float:
    """Euclidean distance between two convex CCW polygons (0 when they touch or overlap)."""
    if abs(polygon_area(convex_polygon_intersection(p1, p2))) > _EPS:
        return 0.0
    # Disjoint (or touching) convex sets: the closest pair involves a vertex of one.
    e1 = np.roll(p1, -1, axis=0)
    e2 = np.roll(p2, -1, axis=0)
    d12 = _point_segment_distance(p1, p2, e2).min()
    d21 = _point_segment_distance(p2, p1, e1).min()
    return float(min(d12, d21))


def _interval_gap(lo1: float, hi1: float, lo2: float, hi2: float) -> float:
    return max(0.0, lo2 - hi1, lo1 - hi2)


def _wrap_angle(a: NDArray[np.float64] | float) -> Any:
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


# --------------------------------------------------------------------------- boxes


def _vec3(name: str, value: ArrayLike) -> NDArray[np.float64]:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return v


@dataclass(eq=False)
class Box3D:
    """A yaw-rotated 3D box in the map frame (fields match vision_msgs/BoundingBox3D)."""

    center: NDArray[np.float64]
    size: NDArray[np.float64]  # full extents along the box axes (x along yaw)
    yaw: float = 0.0  # rotation about +z, radians
    label: str = ""
    score: float = 0.0
    num_voxels: int = 0

    def __post_init__(self) -> None:
        self.center = _vec3("center", self.center)
        self.size = _vec3("size", self.size)
        if np.any(self.size < 0):
            raise ValueError(f"box size must be non-negative, got {self.size}")
        self.yaw = float(self.yaw)
        if not math.isfinite(self.yaw):
            raise ValueError("box yaw must be finite")

    @classmethod
    def from_min_max(cls, lo: ArrayLike, hi: ArrayLike, **kw: Any) -> Box3D:
        """Axis-aligned box from its min and max corners."""
        lo_a, hi_a = _vec3("lo", lo), _vec3("hi", hi)
        return cls(center=(lo_a + hi_a) / 2.0, size=np.maximum(hi_a - lo_a, 0.0), **kw)

    # -- geometry -------------------------------------------------------------------

    @property
    def volume(self) -> float:
        return float(np.prod(self.size))

    @property
    def z_min(self) -> float:
        return float(self.center[2] - self.size[2] / 2.0)

    @property
    def z_max(self) -> float:
        return float(self.center[2] + self.size[2] / 2.0)

    @property
    def footprint_area(self) -> float:
        return float(self.size[0] * self.size[1])

    @property
    def quaternion_xyzw(self) -> NDArray[np.float64]:
        """Orientation as a geometry_msgs/Quaternion (x, y, z, w): rotation about +z by yaw."""
        h = self.yaw / 2.0
        return np.array([0.0, 0.0, math.sin(h), math.cos(h)])

    def _rotation2d(self) -> NDArray[np.float64]:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s], [s, c]])

    def footprint(self) -> NDArray[np.float64]:
        """The 4 footprint corners (x, y), counter-clockwise, (4, 2)."""
        hx, hy = self.size[0] / 2.0, self.size[1] / 2.0
        local = np.array([[hx, -hy], [hx, hy], [-hx, hy], [-hx, -hy]])
        return local @ self._rotation2d().T + self.center[:2]

    def corners(self) -> NDArray[np.float64]:
        """The 8 corners (8, 3): bottom face CCW (as :meth:`footprint`), then the top face."""
        fp = self.footprint()
        zs = np.array([self.z_min] * 4 + [self.z_max] * 4)
        return np.column_stack([np.vstack([fp, fp]), zs])

    def to_local(self, points: ArrayLike) -> NDArray[np.float64]:
        """Points (N, 3) in map frame -> box frame (origin at center, axes along the box)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3) - self.center
        xy = p[:, :2] @ self._rotation2d()  # R^T p for row vectors
        return np.column_stack([xy, p[:, 2]])

    def contains(self, points: ArrayLike, tol: float = 0.0) -> NDArray[np.bool_]:
        """Which of the points (N, 3) lie inside the box (boundary included, +tol metres)."""
        local = self.to_local(points)
        return np.all(np.abs(local) <= self.size / 2.0 + tol, axis=1)

    def axis_aligned(self) -> Box3D:
        """The smallest axis-aligned box holding this one (same label/score)."""
        c = self.corners()
        return Box3D.from_min_max(
            c.min(0), c.max(0), label=self.label, score=self.score, num_voxels=self.num_voxels
        )

    def intersection_volume(self, other: Box3D) -> float:
        dz = min(self.z_max, other.z_max) - max(self.z_min, other.z_min)
        if dz <= 0.0:
            return 0.0
        if self.yaw == other.yaw:
            # Common frame: the footprint overlap is a plain rectangle overlap (exact, and
            # the ScanRefer formula when yaw == 0).
            d = self.to_local(other.center[None])[0, :2]
            ox = min(self.size[0] / 2, d[0] + other.size[0] / 2) - max(
                -self.size[0] / 2, d[0] - other.size[0] / 2
            )
            oy = min(self.size[1] / 2, d[1] + other.size[1] / 2) - max(
                -self.size[1] / 2, d[1] - other.size[1] / 2
            )
            return max(ox, 0.0) * max(oy, 0.0) * dz
        poly = convex_polygon_intersection(self.footprint(), other.footprint())
        return max(polygon_area(poly), 0.0) * dz

    def iou(self, other: Box3D) -> float:
        """Exact 3D IoU of two yaw-rotated boxes (footprint polygon overlap x z overlap)."""
        inter = self.intersection_volume(other)
        union = self.volume + other.volume - inter
        if union <= _EPS:
            return 0.0
        return float(min(max(inter / union, 0.0), 1.0))

    def distance_to(self, other: Box3D) -> tuple[float, float]:
        """(centre distance, surface gap) in metres; the gap is 0 when the boxes touch/overlap.

        The gap is exact: for two prisms (footprint x z-interval) the squared distance is
        the footprint distance squared plus the z-interval gap squared."""
        center_d = float(np.linalg.norm(self.center - other.center))
        dxy = _convex_polygon_distance(self.footprint(), other.footprint())
        dz = _interval_gap(self.z_min, self.z_max, other.z_min, other.z_max)
        return center_d, float(math.hypot(dxy, dz))

    def to_dict(self) -> dict[str, Any]:
        return {
            "center": [float(v) for v in self.center],
            "size": [float(v) for v in self.size],
            "yaw": self.yaw,
            "label": self.label,
            "score": float(self.score),
            "num_voxels": int(self.num_voxels),
        }

    def __repr__(self) -> str:
        c = ", ".join(f"{v:.3f}" for v in self.center)
        s = ", ".join(f"{v:.3f}" for v in self.size)
        return (
            f"Box3D(center=[{c}], size=[{s}], yaw={self.yaw:.3f}, label={self.label!r}, "
            f"score={self.score:.3f}, num_voxels={self.num_voxels})"
        )


def iou_3d(a: Box3D, b: Box3D) -> float:
    """Exact 3D IoU of two (possibly yaw-rotated) boxes."""
    return a.iou(b)


# --------------------------------------------------------------------------- viewpoint


@dataclass(frozen=True)
class Viewpoint:
    """Where the viewer stands and looks, in the map frame (z up).

    ``forward`` may have any pitch; only its horizontal direction is used. A viewer
    looking straight down has no horizontal direction: build it with
    :meth:`from_camera_transform`, which then uses the image "up" direction."""

    position: NDArray[np.float64]
    forward: NDArray[np.float64]

    def __post_init__(self) -> None:
        pos = _vec3("position", self.position)
        fwd = _vec3("forward", self.forward)
        h = np.array([fwd[0], fwd[1], 0.0])
        n = float(np.linalg.norm(h))
        if n < 1e-6:
            raise ValueError("viewpoint forward direction has no horizontal component")
        object.__setattr__(self, "position", pos)
        object.__setattr__(self, "forward", h / n)

    @property
    def left(self) -> NDArray[np.float64]:
        """Unit horizontal vector to the viewer's left (up x forward)."""
        f = self.forward
        return np.array([-f[1], f[0], 0.0])

    @classmethod
    def from_transform(cls, t_map_frame: ArrayLike, forward_axis: str = "x") -> Viewpoint:
        """From a 4x4 pose of a body frame in the map (``T_map_frame``).

        ``forward_axis``: "x" for REP-103 body frames (base_link), "z" for optical frames."""
        t = np.asarray(t_map_frame, dtype=np.float64)
        if t.shape != (4, 4):
            raise ValueError(f"expected a 4x4 transform, got shape {t.shape}")
        axes = {"x": 0, "y": 1, "z": 2, "-x": 0, "-y": 1, "-z": 2}
        if forward_axis not in axes:
            raise ValueError(f"forward_axis must be one of {sorted(axes)}")
        sign = -1.0 if forward_axis.startswith("-") else 1.0
        return cls(position=t[:3, 3], forward=sign * t[:3, axes[forward_axis]])

    @classmethod
    def from_camera_transform(cls, t_map_optical: ArrayLike) -> Viewpoint:
        """From ``T_map_camera_optical`` (x right, y down, z forward).

        When the camera looks (nearly) straight down, "forward" is the image-up direction
        (-y), which is what a person reading the image calls "further away"."""
        t = np.asarray(t_map_optical, dtype=np.float64)
        if t.shape != (4, 4):
            raise ValueError(f"expected a 4x4 transform, got shape {t.shape}")
        z = t[:3, 2]
        if math.hypot(z[0], z[1]) < 0.1:
            return cls(position=t[:3, 3], forward=-t[:3, 1])
        return cls(position=t[:3, 3], forward=z)

    def to_local(self, points: ArrayLike) -> NDArray[np.float64]:
        """Map points (N, 3) -> (N, 3) viewer coordinates [forward, left, up] (metres)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3) - self.position
        return np.column_stack([p @ self.forward, p @ self.left, p[:, 2]])


# --------------------------------------------------------------------------- relations


@dataclass(frozen=True)
class RelationResult:
    """Outcome of one spatial relation.

    value:  bool for predicates, float for measures (distance in m, volume ratio).
    margin: predicates: signed slack in metres on the deciding quantity (> 0 iff value;
            bigger/smaller: log volume ratio); measures: see the function's docstring.
    score:  predicates: 0 clearly false, 0.5 borderline, 1 clearly true; measures: 1.
    """

    name: str
    value: bool | float
    margin: float
    score: float
    details: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Plain Python types, so `result.value is True` works and results serialise to JSON.
        v = self.value
        object.__setattr__(self, "value", bool(v) if isinstance(v, (bool, np.bool_)) else float(v))
        object.__setattr__(self, "margin", float(self.margin))
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "details", {k: float(x) for k, x in self.details.items()})

    @property
    def confidence(self) -> float:
        """How sure the answer is, in [0, 1] (0 = coin flip)."""
        if isinstance(self.value, bool):
            return float(abs(2.0 * self.score - 1.0))
        return float(self.score)


def _soft(slack: float, scale: float) -> float:
    """Map a signed slack to [0, 1]: 0.5 at zero, saturating at +-scale (monotone)."""
    if scale <= _EPS:
        return 1.0 if slack > 0 else (0.0 if slack < 0 else 0.5)
    return float(0.5 + 0.5 * np.clip(slack / scale, -1.0, 1.0))


def _mirror(name: str, r: RelationResult) -> RelationResult:
    """``r`` computed with the arguments swapped, renamed, details keyed to the caller's a/b."""
    swap = {"_a": "_b", "_b": "_a"}
    details = {(k[:-2] + swap[k[-2:]] if k[-2:] in swap else k): v for k, v in r.details.items()}
    return RelationResult(name, bool(r.value), r.margin, r.score, details)


def _need_viewpoint(name: str, viewpoint: Viewpoint | None) -> Viewpoint:
    if viewpoint is None:
        raise ValueError(f"relation {name!r} is viewer-relative and needs a viewpoint")
    return viewpoint


def _azimuth_interval(box: Box3D, vp: Viewpoint) -> tuple[float, float, float]:
    """(mid azimuth, half width, horizontal range) of the box as seen by the viewer.

    Azimuth is measured from the viewing direction, positive to the left."""
    local = vp.to_local(np.vstack([box.corners(), box.center]))
    c_az = math.atan2(local[-1, 1], local[-1, 0])
    rng = float(math.hypot(local[-1, 0], local[-1, 1]))
    if _point_in_footprint(box, vp.position):
        return c_az, math.pi, rng  # viewer inside the footprint: it spans every direction
    rel = _wrap_angle(np.arctan2(local[:-1, 1], local[:-1, 0]) - c_az)
    lo, hi = float(rel.min()), float(rel.max())
    return c_az + (lo + hi) / 2.0, (hi - lo) / 2.0, rng


def _point_in_footprint(box: Box3D, p: NDArray[np.float64]) -> bool:
    local = box.to_local(p[None])[0]
    return bool(abs(local[0]) <= box.size[0] / 2 and abs(local[1]) <= box.size[1] / 2)


def _depth_interval(box: Box3D, vp: Viewpoint) -> tuple[float, float]:
    d = vp.to_local(box.corners())[:, 0]
    return float((d.min() + d.max()) / 2.0), float((d.max() - d.min()) / 2.0)


def left_of(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` left of ``b`` as the viewer sees them (by bearing, i.e. in the image)?

    Compares the middles of the boxes' bearing intervals; score 1 (0) once a's interval
    lies entirely left (right) of b's. Margin: bearing difference x mean range (m)."""
    vp = _need_viewpoint("left_of", viewpoint)
    mid_a, hw_a, r_a = _azimuth_interval(a, vp)
    mid_b, hw_b, r_b = _azimuth_interval(b, vp)
    d = float(_wrap_angle(mid_a - mid_b))
    margin = d * (r_a + r_b) / 2.0
    return RelationResult(
        "left_of",
        d > 0.0,
        margin,
        _soft(d, hw_a + hw_b),
        {"bearing_deg_a": math.degrees(mid_a), "bearing_deg_b": math.degrees(mid_b)},
    )


def right_of(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` right of ``b`` as the viewer sees them? (mirror of :func:`left_of`)."""
    return _mirror("right_of", left_of(b, a, _need_viewpoint("right_of", viewpoint)))


def in_front_of(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` closer to the viewer than ``b``, by depth along the viewing direction?

    Score 1 once a's depth interval ends before b's begins. Margin: depth difference (m)."""
    vp = _need_viewpoint("in_front_of", viewpoint)
    mid_a, hw_a = _depth_interval(a, vp)
    mid_b, hw_b = _depth_interval(b, vp)
    d = mid_b - mid_a
    return RelationResult(
        "in_front_of", d > 0.0, d, _soft(d, hw_a + hw_b), {"depth_a": mid_a, "depth_b": mid_b}
    )


def behind(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` further from the viewer than ``b``? (mirror of :func:`in_front_of`)."""
    return _mirror("behind", in_front_of(b, a, _need_viewpoint("behind", viewpoint)))


def above(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` higher than ``b`` (centres; score 1 once a's bottom is above b's top)?"""
    d = float(a.center[2] - b.center[2])
    s = (a.size[2] + b.size[2]) / 2.0
    return RelationResult("above", d > 0.0, d, _soft(d, s), {"vertical_gap": a.z_min - b.z_max})


def below(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` lower than ``b``? (mirror of :func:`above`)."""
    r = above(b, a)
    return RelationResult(
        "below", bool(r.value), r.margin, r.score, {"vertical_gap": b.z_min - a.z_max}
    )


def on_top_of(
    a: Box3D,
    b: Box3D,
    viewpoint: Viewpoint | None = None,
    *,
    gap_tol: float = ON_TOP_GAP_TOL,
    min_overlap: float = ON_TOP_MIN_OVERLAP,
) -> RelationResult:
    """Is ``a`` resting on ``b``: a's bottom within ``gap_tol`` of b's top, a higher than b,
    and at least ``min_overlap`` of the smaller footprint overlapping the other?

    Margin: the smallest slack of the three conditions (m; the overlap slack is scaled by
    the smaller footprint's side length)."""
    gap = a.z_min - b.z_max
    slack_gap = gap_tol - abs(gap)
    slack_up = float(a.center[2] - b.center[2])
    fa, fb = a.footprint(), b.footprint()
    inter = max(polygon_area(convex_polygon_intersection(fa, fb)), 0.0)
    min_area = min(a.footprint_area, b.footprint_area)
    side = math.sqrt(max(min_area, _EPS))
    if inter > 0.0:
        frac = inter / max(min_area, _EPS)
        slack_ov = (frac - min_overlap) * side
        s_ov = _soft(frac - min_overlap, min_overlap)
    else:
        frac = 0.0
        slack_ov = -max(_convex_polygon_distance(fa, fb), _EPS)
        s_ov = _soft(slack_ov, side)
    margin = min(slack_gap, slack_up, slack_ov)
    score = min(_soft(slack_gap, gap_tol), _soft(slack_up, (a.size[2] + b.size[2]) / 2.0), s_ov)
    return RelationResult(
        "on_top_of", margin > 0.0, margin, score, {"vertical_gap": gap, "footprint_overlap": frac}
    )


def next_to(
    a: Box3D,
    b: Box3D,
    viewpoint: Viewpoint | None = None,
    *,
    abs_tol: float = NEXT_TO_ABS_TOL,
    rel_tol: float = NEXT_TO_REL_TOL,
) -> RelationResult:
    """Are the boxes close: surface gap <= max(abs_tol, rel_tol x mean largest horizontal
    extent)? Size-relative, so a cup 10 cm from a plate and a chair 40 cm from a table both
    count. Margin: threshold - gap (m). Stacked boxes (gap 0) also count as next to."""
    _, gap = a.distance_to(b)
    ext = (max(a.size[0], a.size[1]) + max(b.size[0], b.size[1])) / 2.0
    thr = max(abs_tol, rel_tol * ext)
    m = thr - gap
    return RelationResult(
        "next_to", m > 0.0, m, _soft(m, thr), {"surface_gap": gap, "threshold": thr}
    )


def between(a: Box3D, b: Box3D, c: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` between ``b`` and ``c`` in the horizontal plane?

    a's centre must project inside the segment b->c and lie within a corridor of half
    width = mean half of the largest horizontal extents of b and c (+ a's own half extent).
    Margin: the smaller of the along-segment and corridor slacks (m)."""
    p, q0, q1 = a.center[:2], b.center[:2], c.center[:2]
    seg = q1 - q0
    length = float(np.linalg.norm(seg))
    if length < 1e-9:
        return RelationResult("between", False, -float(np.linalg.norm(p - q0)), 0.0, {})
    u = seg / length
    t = float(np.dot(p - q0, u))  # metres along the segment
    perp = abs(float(u[0] * (p - q0)[1] - u[1] * (p - q0)[0]))
    half = lambda box: max(box.size[0], box.size[1]) / 2.0  # noqa: E731
    width = (half(b) + half(c)) / 2.0 + half(a)
    slack_along = min(t, length - t)
    slack_side = width - perp
    margin = min(slack_along, slack_side)
    score = min(_soft(slack_along, length / 2.0), _soft(slack_side, width))
    return RelationResult(
        "between", margin > 0.0, margin, score, {"along": t / length, "lateral_offset": perp}
    )


def distance(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Centre-to-centre distance (m). ``margin`` = centre distance - surface gap: how much
    the answer depends on where one measures from; ``details`` has both and the horizontal
    and vertical components."""
    center_d, gap = a.distance_to(b)
    d = a.center - b.center
    return RelationResult(
        "distance",
        center_d,
        center_d - gap,
        1.0,
        {
            "center_distance": center_d,
            "surface_gap": gap,
            "horizontal": float(math.hypot(d[0], d[1])),
            "vertical": float(d[2]),
        },
    )


def bigger(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` bigger than ``b`` by volume? Margin: ln(vol_a / vol_b); score 1 (0) from a
    ratio of ``SIZE_CLEAR_RATIO`` (its inverse) on."""
    va, vb = max(a.volume, _EPS), max(b.volume, _EPS)
    lr = math.log(va / vb)
    return RelationResult(
        "bigger",
        lr > 0.0,
        lr,
        _soft(lr, math.log(SIZE_CLEAR_RATIO)),
        {"volume_a": a.volume, "volume_b": b.volume, "ratio": va / vb},
    )


def smaller(a: Box3D, b: Box3D, viewpoint: Viewpoint | None = None) -> RelationResult:
    """Is ``a`` smaller than ``b`` by volume? (mirror of :func:`bigger`)."""
    r = _mirror("smaller", bigger(b, a))
    return RelationResult(
        "smaller",
        bool(r.value),
        r.margin,
        r.score,
        {**r.details, "ratio": a.volume / max(b.volume, _EPS)},
    )


RelationFn = Callable[..., RelationResult]

#: How a relation reads in an expression or an answer ("the mug on the table").
RELATION_PHRASES: dict[str, str] = {
    "left_of": "left of",
    "right_of": "right of",
    "in_front_of": "in front of",
    "behind": "behind",
    "above": "above",
    "below": "below",
    "next_to": "next to",
    "on_top_of": "on",
    "between": "between",
}

RELATIONS: dict[str, RelationFn] = {
    "left_of": left_of,
    "right_of": right_of,
    "in_front_of": in_front_of,
    "behind": behind,
    "above": above,
    "below": below,
    "on_top_of": on_top_of,
    "next_to": next_to,
    "between": between,
    "distance": distance,
    "bigger": bigger,
    "smaller": smaller,
}

# Common phrasings the question parser may pass through unchanged.
_ALIASES = {
    "left": "left_of",
    "to_the_left_of": "left_of",
    "right": "right_of",
    "to_the_right_of": "right_of",
    "in_front": "in_front_of",
    "front": "in_front_of",
    "front_of": "in_front_of",
    "closer": "in_front_of",
    "closer_than": "in_front_of",
    "nearer": "in_front_of",
    "behind_of": "behind",
    "in_back_of": "behind",
    "farther": "behind",
    "further": "behind",
    "farther_than": "behind",
    "over": "above",
    "higher": "above",
    "higher_than": "above",
    "under": "below",
    "underneath": "below",
    "beneath": "below",
    "lower": "below",
    "lower_than": "below",
    "on": "on_top_of",
    "on_top": "on_top_of",
    "onto": "on_top_of",
    "resting_on": "on_top_of",
    "near": "next_to",
    "beside": "next_to",
    "close_to": "next_to",
    "by": "next_to",
    "adjacent_to": "next_to",
    "distance_to": "distance",
    "how_far": "distance",
    "far": "distance",
    "larger": "bigger",
    "larger_than": "bigger",
    "bigger_than": "bigger",
    "smaller_than": "smaller",
}


def _canonical(name: str) -> str:
    key = "_".join(name.strip().lower().replace("-", " ").split())
    return _ALIASES.get(key, key)


def relation_names() -> list[str]:
    """Canonical relation names accepted by :func:`relation` (aliases also work)."""
    return sorted(RELATIONS)


def relation(
    name: str,
    a: Box3D,
    b: Box3D | Sequence[Box3D],
    viewpoint: Viewpoint | None = None,
    **kwargs: Any,
) -> RelationResult:
    """Evaluate a relation by name: ``relation("left of", mug, bowl, vp)``.

    ``between`` takes the two reference boxes as ``b``: ``relation("between", a, (b, c))``.
    Names are case-insensitive; spaces/hyphens are underscores; common aliases ("on",
    "near", "under", "larger") map to the canonical names in :data:`RELATIONS`."""
    canon = _canonical(name)
    fn = RELATIONS.get(canon)
    if fn is None:
        raise ValueError(f"unknown relation {name!r}; known: {', '.join(relation_names())}")
    if canon == "between":
        if isinstance(b, Box3D) or len(b) != 2:
            raise ValueError("'between' needs two reference boxes: relation('between', a, (b, c))")
        return between(a, b[0], b[1], viewpoint, **kwargs)
    if not isinstance(b, Box3D):
        raise ValueError(f"relation {canon!r} takes one reference box")
    return fn(a, b, viewpoint, **kwargs)


# --------------------------------------------------------------------------- text


def _direction_words(bearing_deg: float) -> str:
    side = "left" if bearing_deg > 0 else "right"
    ab = abs(bearing_deg)
    if ab < 10.0:
        return "straight ahead"
    if ab < 45.0:
        return f"ahead to the {side}"
    if ab < 135.0:
        return f"to your {side}"
    if ab < 170.0:
        return f"behind you to the {side}"
    return "behind you"


def describe_position(box: Box3D, viewpoint: Viewpoint, landmarks: Sequence[Box3D] = ()) -> str:
    """A short viewer-relative description, e.g.
    "the mug is 2.3 m away, ahead to the left, 0.80 m high, on the table".

    ``landmarks``: labelled boxes; the closest one the box rests on or is next to is named."""
    local = viewpoint.to_local(box.center[None])[0]
    rng = math.hypot(local[0], local[1])
    bearing = math.degrees(math.atan2(local[1], local[0]))
    name = f"the {box.label}" if box.label else "it"
    parts = [
        f"{name} is {rng:.1f} m away",
        _direction_words(bearing) if rng > 0.05 else "here",
        f"{box.center[2]:.2f} m high",
    ]
    best: tuple[float, str] | None = None
    for lm in landmarks:
        if lm is box or not lm.label:
            continue
        if on_top_of(box, lm).value:
            cand = (0.0, f"on the {lm.label}")
        elif next_to(box, lm).value:
            cand = (box.distance_to(lm)[1], f"next to the {lm.label}")
        else:
            continue
        if best is None or cand[0] < best[0]:
            best = cand
    if best is not None:
        parts.append(best[1])
    return ", ".join(parts)
