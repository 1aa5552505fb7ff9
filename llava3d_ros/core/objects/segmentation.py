"""Instance segmentation of the fused surface: structure, furniture, objects.

Input is the TSDF surface (:class:`~llava3d_ros.core.objects.tsdf.SurfacePoints`, map
frame, z up); output a :class:`Segmentation`: a label per point (-1 = structure or noise),
a structure code per point, and the instances (objects and furniture) with point indices,
voxel keys, boxes and what each rests on. It runs off the ingest path: a worker calls
:func:`segment_surface` every few seconds and feeds :class:`~.tracking.InstanceTracker`.

Method (on the 2 cm voxel grid of the surface points; thresholds in
:class:`SegmentationConfig`; everything is vectorised numpy/scipy):

1. Voxelize (nearest lattice point: TSDF points sit on lattice edges, where floor() flips
   and left whole rows of cells empty); per voxel the mean point and the mean TSDF normal.
2. Floor: the lowest height bin of up-facing voxels covering ``floor_min_area``, refined
   by a least-squares plane (a slightly tilted map is fine); heights are taken above it.
   A 1 cm band of it (any normal; 1.2 cm if up-facing: 99.9 % of the noisy floor's points)
   and everything below is floor. Ceiling likewise (down-facing, highest).
3. Walls: a Hough vote over the horizontal normals' azimuth (direction refined to the
   members' mean normal), then over the offset along it; each offset peak gets a line fit
   and its voxels are binned 10 x 10 cm on the plane. A plane is a wall when one blob of
   cells is ``wall_min_length`` long and ``wall_min_height`` tall - or 30 cm tall and the
   room's boundary - and little is observed behind it (``wall_behind_max``: a shelf front
   has its inside and the floor behind it; a wall has nothing). Rooms need not be
   axis-aligned. The band and 15 cm behind the wall are structure.
4. Furniture tops: connected, level sheets of up-facing voxels above the floor with a
   footprint of at least ``support_min_area``. Each is peeled off with a thin band around
   its height over its footprint (convex hull filled: objects hide the top under them) and
   its slab down to ``slab_depth`` (so an object at a bevelled or thick edge is cut free).
5. Pieces: connected components (26-neighbourhood, ``scipy.sparse.csgraph``) of the rest,
   with three kinds of edges cut: neighbours whose normals face each other (two surfaces
   across a narrow gap), sharp concave creases (``concave_deg``: two touching things meet
   in one), and, inside object-sized components, steps between voxel columns whose tops
   differ by ``step_height`` (two boxes pressed together with flush sides). Every piece
   that rests on nothing - touches no top, is not on the floor - then rejoins the neighbour
   it shares most cut edges with (a mug's handle, a bottle's neck, drawer fronts between
   their grooves), so what stays apart are pieces that each stand on their own.
6. Assembly: a piece touching a top and reaching below it (legs, sides, a cabinet front, a
   shelf's sides through its lower board) is part of that top's furniture; one touching a
   top from above rests on it. A top whose assembly neither reaches the floor nor is
   furniture-sized is a lid or a tray's bottom: it rejoins everything it touches.
   Furniture resting on a top joins it (a shelf's upper level on its lower board), as does
   a low piece spanning the top (a raised lip, side panels standing proud). Loose pieces
   inside a piece of furniture's footprint (grown by ``attach_margin``), on nothing and not
   above it, join it (a pedestal under a top whose column is hidden).
7. Classification: an assembly with a top, or larger than an object
   (``max_object_extent`` on its footprint's minimum-area rectangle,
   ``max_object_height``), is furniture; the rest with ``min_object_voxels`` are objects
   (support: the furniture whose top they rest on, None = the floor); smaller ones noise.

Boxes: the min/max of the instance's points, an object's bottom extended down to the top
or floor it rests on (the peel takes ~1 cm off it), and a yaw box: the minimum-area
rectangle of the footprint (rotating calipers over the convex hull of the voxel
centroids), its extents measured on all points, times the z extent.

Measured with ``benchmarks/segmentation.py`` (rendered rooms, 100 VGA frames fused at 2 cm,
ground-truth poses; this 2-core CPU): on 36 tuning rooms (seeds 1000-1035, 216 objects, 72
pieces of furniture), objects whose instance box has 3D IoU >= 0.25 with the truth: 0.991
clean / 0.986 with the Kinect-like depth noise (>= 0.5: 0.958 / 0.954), furniture 0.972
(the misses are pieces seen only in part: a plant, a bookshelf at the far wall).
Held-out rooms (seeds 2000-2011, 72 objects, 27 pieces of furniture, run once after the
method was frozen): objects 0.986 clean / 1.000 noisy (>= 0.5: 0.931 / 0.986), furniture
0.963. Segmentation p50 39-93 ms for 70-260 k points (surface extraction excluded: 50-170
ms); rooms tiled into a flat of 360 k / 520 k / 640 k points: 143 / 220 / 308 ms on a quiet
machine, 261 / 350 / 483 ms with other jobs running (load average 4).

What does not work well: two objects of the same height pressed together (no crease, no
step) stay one instance; an object closer than ~2 cm to another may join it; an object on
another object (a mug in a tray, a box on a box) joins it; things under a table inside its
footprint are taken for its parts; a wall-mounted shelf is furniture only if it is large.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull, QhullError

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.objects.tsdf import SurfacePoints, validate_config
from llava3d_ros.core.options import option
from llava3d_ros.core.spatial import Box3D

__all__ = [
    "ROLE_FURNITURE",
    "ROLE_OBJECT",
    "STRUCT_CEILING",
    "STRUCT_FLOOR",
    "STRUCT_NOISE",
    "STRUCT_NONE",
    "STRUCT_WALL",
    "Instance",
    "Segmentation",
    "SegmentationConfig",
    "min_area_rectangle",
    "segment_surface",
]

ROLE_OBJECT = "object"
ROLE_FURNITURE = "furniture"

# Per-voxel structure codes (Segmentation.structure).
STRUCT_NONE = 0
STRUCT_FLOOR = 1
STRUCT_WALL = 2
STRUCT_CEILING = 3
STRUCT_NOISE = 4

# The 13 "forward" offsets of the 26-neighbourhood (each undirected edge once).
_FWD = np.array(
    [
        (dx, dy, dz)
        for dx in (-1, 0, 1)
        for dy in (-1, 0, 1)
        for dz in (-1, 0, 1)
        if (dx, dy, dz) > (0, 0, 0)
    ],
    dtype=np.int64,
)


@dataclass(frozen=True)
class SegmentationConfig:
    """Thresholds of :func:`segment_surface`: lengths in metres, angles in degrees. Field
    metadata (``help``, ``min``, ``max``) is what the ROS layer turns into parameters."""

    # Grid and normals.
    voxel_size: float = option(0.02, "segmentation grid (m): the TSDF voxel", 0.005, 0.2)
    horizontal_deg: float = option(
        25.0, "a normal within this angle of +z faces up (of -z, down)", 1.0, 60.0
    )
    # Floor and ceiling.
    floor_min_area: float = option(
        1.0, "least up-facing area (m^2) at one height that makes the floor", 0.01, 100.0
    )
    floor_band: float = option(
        0.012, "up-facing points this close to the floor are floor (m)", 0.0, 0.2
    )
    floor_band_any: float = option(
        0.01, "points this close to the floor are floor whatever their normal (m)", 0.0, 0.2
    )
    ceiling_min_area: float = option(
        0.5, "least down-facing area (m^2) at one height that makes the ceiling", 0.01, 100.0
    )
    ceiling_min_height: float = option(
        1.9, "a ceiling is at least this far above the floor (m)", 0.5, 20.0
    )
    # Walls.
    wall_min_length: float = option(
        1.5, "a wall spans at least this along its plane (m)", 0.2, 50.0
    )
    wall_min_height: float = option(
        1.0,
        "a wall spans at least this in height (lower ones must bound the room) (m)",
        0.2,
        20.0,
    )
    wall_behind_max: float = option(
        0.25,
        "a wall has at most this many observed voxels behind it per voxel of its own "
        "(a furniture front has its inside and the floor behind it)",
        0.0,
        100.0,
    )
    wall_band: float = option(0.03, "points this close to a wall plane are wall (m)", 0.0, 0.3)
    wall_max_planes: int = option(12, "most wall directions searched", 0, 100)
    # Furniture tops and the peel.
    support_min_area: float = option(0.08, "least footprint (m^2) of a furniture top", 0.005, 10.0)
    support_min_height: float = option(
        0.1, "a furniture top is at least this far above the floor (m)", 0.0, 3.0
    )
    support_band: float = option(
        0.012, "peel: points this close to a top's height over it go with the top (m)", 0.0, 0.1
    )
    support_band_up: float = option(
        0.012,
        "peel: up-facing points this close to a top's height go with the top (m)",
        0.0,
        0.1,
    )
    slab_depth: float = option(
        0.04, "peel: the top's slab down to this far below it goes with the top (m)", 0.0, 0.3
    )
    # Pieces.
    facing_cos: float = option(
        0.5,
        "neighbouring voxels whose normals' dot product is below -facing_cos face each "
        "other across a gap and are not connected",
        -1.0,
        1.0,
    )
    concave_deg: float = option(
        35.0,
        "neighbouring voxels whose normals turn towards each other by more than this "
        "meet in a crease where two touching things may be split",
        1.0,
        180.0,
    )
    step_height: float = option(
        0.08,
        "inside an object-sized component, neighbouring voxel columns whose tops differ "
        "by more than this may belong to two things (m); 0 = off",
        0.0,
        1.0,
    )
    floor_contact_piece: float = option(
        0.05, "a piece reaching this close to the floor stands on it (m)", 0.0, 1.0
    )
    # Assembly and classification.
    on_tolerance: float = option(
        0.03,
        "a part whose bottom is within this of a top's height rests on it; lower parts "
        "hold it up (m)",
        0.0,
        0.3,
    )
    floor_contact: float = option(
        0.15, "furniture reaches within this of the floor (else its top is a lid) (m)", 0.0, 2.0
    )
    lip_height: float = option(
        0.05,
        "a low piece on a top rising less than this above it is the top's lip (m)",
        0.0,
        1.0,
    )
    attach_margin: float = option(
        0.06,
        "loose pieces within this of a piece of furniture's footprint and not above it "
        "are part of it (m)",
        0.0,
        1.0,
    )
    max_object_extent: float = option(
        0.8, "longest footprint side of an object; larger is furniture (m)", 0.05, 10.0
    )
    max_object_height: float = option(0.6, "tallest object; taller is furniture (m)", 0.05, 10.0)
    min_object_voxels: int = option(8, "objects smaller than this are noise (voxels)", 1, 100000)

    def __post_init__(self) -> None:
        validate_config(self)


@dataclass(frozen=True, eq=False)
class Instance:
    """One segmented object or piece of furniture (ids are local to one segmentation)."""

    id: int
    role: str  # ROLE_OBJECT or ROLE_FURNITURE
    indices: NDArray[np.int64]  # into the segmented SurfacePoints
    voxel_keys: NDArray[np.int64]  # sorted keys of its voxels (vk.centred_keys)
    support: int | None  # id of the instance it rests on; None = the floor (or nothing)
    support_height: float  # z of the surface it rests on (the floor for support None)
    aabb_min: NDArray[np.float64]
    aabb_max: NDArray[np.float64]
    box: Box3D  # yaw box: minimum-area footprint rectangle x z extent

    @property
    def num_points(self) -> int:
        return int(self.indices.shape[0])

    @property
    def center(self) -> NDArray[np.float64]:
        return (self.aabb_min + self.aabb_max) / 2.0

    @property
    def size(self) -> NDArray[np.float64]:
        return self.aabb_max - self.aabb_min

    def aabb(self) -> Box3D:
        return Box3D.from_min_max(self.aabb_min, self.aabb_max)


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Result of :func:`segment_surface` for one surface."""

    labels: NDArray[np.int32]  # (N,) instance id per point, -1 = structure or noise
    structure: NDArray[np.int8]  # (N,) STRUCT_* code per point (0 for instance points)
    instances: list[Instance]
    floor_height: float | None  # floor z at the map origin (None: no floor found)
    floor_plane: NDArray[np.float64] | None  # (a, b, c): floor z = a x + b y + c
    wall_planes: list[NDArray[np.float64]]  # (nx, ny, d): nx x + ny y = d, normal into the room
    stamp_s: float
    voxel_size: float
    timings_ms: dict[str, float]

    def objects(self) -> list[Instance]:
        return [i for i in self.instances if i.role == ROLE_OBJECT]

    def furniture(self) -> list[Instance]:
        return [i for i in self.instances if i.role == ROLE_FURNITURE]

    def instance(self, instance_id: int) -> Instance:
        return self.instances[instance_id]


# ----------------------------------------------------------------------------- helpers


def _cell_keys(ij: NDArray[np.int64]) -> NDArray[np.int64]:
    """Keys of floor cells (i, j): the voxel key of (i, j, 0)."""
    return vk.pack(np.column_stack([ij, np.zeros(len(ij), np.int64)]))


def _lookup(sorted_keys: NDArray[np.int64], queries: NDArray[np.int64]) -> NDArray[np.int64]:
    """Index of each query in ``sorted_keys``, -1 where absent."""
    pos = np.searchsorted(sorted_keys, queries)
    pos = np.minimum(pos, sorted_keys.size - 1)
    hit = sorted_keys[pos] == queries
    return np.where(hit, pos, -1)


def min_area_rectangle(
    xy: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """(centre (2,), size (2,), yaw) of the minimum-area rectangle holding the points.

    The optimal rectangle has a side on the convex hull (Freeman & Shapira 1975), so each
    hull edge direction is tried (vectorised; hulls here have tens of vertices). Written
    here: scipy has the hull but no rectangle, and open3d's oriented box is 3-D."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(2), np.zeros(2), 0.0
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # collinear or too few points
        hull = pts
    if len(hull) < 3:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        return (lo + hi) / 2, hi - lo, 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    ang = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2))
    c, s = np.cos(ang), np.sin(ang)
    # Hull points in each candidate frame (rotate by -ang): (n_ang, n_hull).
    u = hull[None, :, 0] * c[:, None] + hull[None, :, 1] * s[:, None]
    v = -hull[None, :, 0] * s[:, None] + hull[None, :, 1] * c[:, None]
    area = (u.max(1) - u.min(1)) * (v.max(1) - v.min(1))
    k = int(np.argmin(area))
    du, dv = u[k].max() - u[k].min(), v[k].max() - v[k].min()
    mu, mv = (u[k].max() + u[k].min()) / 2, (v[k].max() + v[k].min()) / 2
    centre = np.array([mu * c[k] - mv * s[k], mu * s[k] + mv * c[k]])
    yaw = float(ang[k])
    size = np.array([du, dv])
    if dv > du:  # x along the long side, yaw in (-pi/2, pi/2]
        size = size[::-1].copy()
        yaw = yaw + np.pi / 2
    if yaw > np.pi / 2:
        yaw -= np.pi
    return centre, size, yaw


def _hull_raster(ij: NDArray[np.int64], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """Boolean raster of ``shape`` with the convex hull of the cells ``ij`` filled."""
    out = np.zeros(shape, dtype=bool)
    out[ij[:, 0], ij[:, 1]] = True
    if len(ij) < 3:
        return out
    try:
        hull = ConvexHull(ij.astype(np.float64))
    except (QhullError, ValueError):
        return out
    gx, gy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    # Inside every hull facet's half-plane (a x + b y + c <= 0), half a cell of slack.
    inside = np.all(pts @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5, axis=1)
    return out | inside.reshape(shape)


class _Groups:
    """Per-label reductions (labels in [0, n)) over one labelling, sorted once.
    Empty labels give +inf (min) / -inf (max)."""

    def __init__(self, labels: NDArray[np.int64], n: int) -> None:
        self.n = n
        self.order = np.argsort(labels, kind="stable")
        sl = labels[self.order]
        self.starts = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1]]) if sl.size else sl
        self.keys = sl[self.starts] if sl.size else sl

    def min(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.full(self.n, np.inf)
        if self.starts.size:
            out[self.keys] = np.minimum.reduceat(values[self.order], self.starts)
        return out

    def max(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.full(self.n, -np.inf)
        if self.starts.size:
            out[self.keys] = np.maximum.reduceat(values[self.order], self.starts)
        return out

    def xy_extent(self, pos: NDArray[np.float64]) -> NDArray[np.float64]:
        """Longest side of each group's axis-aligned footprint."""
        return np.maximum(
            self.max(pos[:, 0]) - self.min(pos[:, 0]), self.max(pos[:, 1]) - self.min(pos[:, 1])
        )


def _components(
    n: int, a: NDArray[np.int64], b: NDArray[np.int64]
) -> tuple[int, NDArray[np.int64]]:
    if n == 0:
        return 0, np.zeros(0, dtype=np.int64)
    g = sparse.coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    k, lab = connected_components(g, directed=False)
    return int(k), lab.astype(np.int64)


# ----------------------------------------------------------------------------- segmenter


class _Grid:
    """The surface voxelized: keys, mean point, mean normal, and the 26-neighbour edges."""

    def __init__(self, surface: SurfacePoints, vs: float) -> None:
        p = surface.points.astype(np.float64, copy=False)
        # Nearest lattice point, not floor: TSDF surface points lie on the voxel lattice's
        # edges (zero crossings between two voxel centres), so two of their coordinates are
        # exact multiples of the voxel size, where floor() flips between neighbouring cells
        # with float error and leaves whole rows of cells empty (surfaces fell apart in
        # strips). See vk.centred_keys.
        keys = vk.centred_keys(p, vs)
        self.keys, self.inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        self.inverse = self.inverse.reshape(-1)
        n = self.keys.size
        self.n = n
        cnt = counts.astype(np.float64)
        self.pos = np.stack(
            [np.bincount(self.inverse, weights=p[:, k], minlength=n) / cnt for k in range(3)], 1
        )
        nrm = surface.normals.astype(np.float64, copy=False)
        nv = np.stack(
            [np.bincount(self.inverse, weights=nrm[:, k], minlength=n) for k in range(3)], 1
        )
        nlen = np.linalg.norm(nv, axis=1, keepdims=True)
        self.normal = nv / np.maximum(nlen, 1e-9)
        # A voxel holding both sides of a thin sheet averages its normals away.
        self.normal_ok = nlen[:, 0] > 0.5 * cnt
        self.ijk = vk.unpack(self.keys)
        self.vs = vs

    def edges(self, subset: NDArray[np.bool_]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """26-neighbour edges (i, j) among the voxels in ``subset`` (indices into the grid)."""
        idx = np.flatnonzero(subset)
        keys = self.keys[idx]  # sorted (self.keys is sorted)
        ijk = self.ijk[idx]
        a_all, b_all = [], []
        for off in _FWD:
            q = vk.pack(ijk + off)
            j = _lookup(keys, q)
            hit = j >= 0
            a_all.append(idx[hit])
            b_all.append(idx[j[hit]])
        return np.concatenate(a_all), np.concatenate(b_all)


def segment_surface(
    surface: SurfacePoints, config: SegmentationConfig | None = None
) -> Segmentation:
    """Segment ``surface`` into structure, furniture and objects (see the module doc)."""
    return _Segmenter(config or SegmentationConfig()).run(surface)


class _Segmenter:
    def __init__(self, cfg: SegmentationConfig) -> None:
        self.cfg = cfg
        self.cos_h = math.cos(math.radians(cfg.horizontal_deg))
        self.sin_h = math.sin(math.radians(cfg.horizontal_deg))
        self.t: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def _lap(self, name: str) -> None:
        now = time.perf_counter()
        self.t[name] = (now - self._t0) * 1e3
        self._t0 = now

    # -- pipeline ---------------------------------------------------------------------
    def run(self, surface: SurfacePoints) -> Segmentation:
        cfg = self.cfg
        n_pts = len(surface)
        if n_pts == 0:
            return Segmentation(
                np.zeros(0, np.int32),
                np.zeros(0, np.int8),
                [],
                None,
                None,
                [],
                surface.stamp_s,
                cfg.voxel_size,
                {},
            )
        g = _Grid(surface, cfg.voxel_size)
        self._lap("voxelize")
        struct = np.zeros(g.n, dtype=np.int8)
        plane = self._floor(g)
        if plane is not None:
            h = g.pos[:, 2] - (plane[0] * g.pos[:, 0] + plane[1] * g.pos[:, 1] + plane[2])
            nz = g.normal[:, 2]
            floor = (h < cfg.floor_band_any) | ((h < cfg.floor_band) & (nz > self.cos_h))
            struct[floor] = STRUCT_FLOOR
            ceil_h = self._ceiling(g, h)
            if ceil_h is not None:
                struct[(h > ceil_h - cfg.floor_band) & (struct == 0)] = STRUCT_CEILING
        else:
            h = g.pos[:, 2] - float(g.pos[:, 2].min())
        self._lap("floor")
        walls = self._walls(g, h, struct)
        self._lap("walls")

        rest = struct == 0
        a, b = g.edges(rest)
        self._lap("edges")
        patches = self._patches(g, h, rest, a, b)
        self._lap("patches")
        peeled = self._peel(g, h, rest, patches)
        self._lap("peel")
        inst_of_voxel, instances_raw = self._assemble(g, h, rest, peeled, patches, a, b)
        self._lap("assemble")

        # Points -> instances.
        vlabel = inst_of_voxel
        labels = vlabel[g.inverse].astype(np.int32)
        sv = struct.copy()
        sv[(struct == 0) & (vlabel < 0)] = STRUCT_NOISE
        pstruct = sv[g.inverse].astype(np.int8)
        instances = self._build(surface, g, labels, instances_raw, plane)
        self._lap("boxes")
        floor_h = None if plane is None else float(plane[2])
        return Segmentation(
            labels=labels,
            structure=pstruct,
            instances=instances,
            floor_height=floor_h,
            floor_plane=None if plane is None else np.asarray(plane, dtype=np.float64),
            wall_planes=walls,
            stamp_s=surface.stamp_s,
            voxel_size=cfg.voxel_size,
            timings_ms=dict(self.t),
        )

    # -- structure --------------------------------------------------------------------
    def _floor(self, g: _Grid) -> NDArray[np.float64] | None:
        """(a, b, c) of the floor z = a x + b y + c, or None."""
        cfg = self.cfg
        up = g.normal[:, 2] > self.cos_h
        if not up.any():
            return None
        z = g.pos[up, 2]
        bin_w = cfg.voxel_size / 2
        lo = z.min()
        idx = np.floor((z - lo) / bin_w).astype(np.int64)
        hist = np.bincount(idx)
        # Area in a +-1 bin window (a level floor's voxels straddle two bins).
        win = np.convolve(hist, np.ones(3, dtype=np.int64), mode="same")
        area = win * cfg.voxel_size**2
        ok = np.flatnonzero(area >= cfg.floor_min_area)
        if ok.size == 0:
            return None
        peak = int(ok[0])
        # The true peak of that first big mode (not its rising edge).
        top = peak + int(np.argmax(win[peak : peak + 5]))
        z0 = lo + (top + 0.5) * bin_w
        sel = up & (np.abs(g.pos[:, 2] - z0) < 3 * bin_w + 0.01)
        pts = g.pos[sel]
        plane = np.array([0.0, 0.0, float(np.median(pts[:, 2]))])
        if len(pts) >= 50:
            # Least squares z = a x + b y + c, twice with outliers (> 1 cm) dropped.
            a_mat = np.column_stack([pts[:, 0], pts[:, 1], np.ones(len(pts))])
            keep = np.ones(len(pts), dtype=bool)
            for _ in range(2):
                sol, *_ = np.linalg.lstsq(a_mat[keep], pts[keep, 2], rcond=None)
                res = np.abs(a_mat @ sol - pts[:, 2])
                keep = res < 0.01
                if keep.sum() < 50:
                    break
            if math.hypot(sol[0], sol[1]) < math.tan(math.radians(10.0)):
                plane = sol
        return plane

    def _ceiling(self, g: _Grid, h: NDArray[np.float64]) -> float | None:
        cfg = self.cfg
        down = (g.normal[:, 2] < -self.cos_h) & (h > cfg.ceiling_min_height)
        if not down.any():
            return None
        bin_w = cfg.voxel_size / 2
        hz = h[down]
        lo = hz.min()
        hist = np.bincount(np.floor((hz - lo) / bin_w).astype(np.int64))
        win = np.convolve(hist, np.ones(3, dtype=np.int64), mode="same")
        ok = np.flatnonzero(win * cfg.voxel_size**2 >= cfg.ceiling_min_area)
        if ok.size == 0:
            return None
        return float(lo + (ok[-1] + 0.5) * bin_w)

    def _walls(
        self, g: _Grid, h: NDArray[np.float64], struct: NDArray[np.int8]
    ) -> list[NDArray[np.float64]]:
        """Mark wall voxels in ``struct``; returns the wall planes (nx, ny, d)."""
        cfg = self.cfg
        vs = cfg.voxel_size
        horiz = (np.abs(g.normal[:, 2]) < self.sin_h) & (struct == 0)
        cand = np.flatnonzero(horiz)
        if cand.size == 0 or cfg.wall_max_planes == 0:
            return []
        nxy = g.normal[cand, :2]
        nxy = nxy / np.maximum(np.linalg.norm(nxy, axis=1, keepdims=True), 1e-9)
        az = np.arctan2(nxy[:, 1], nxy[:, 0])
        cand_xy = g.pos[cand, :2]
        xy_all = g.pos[:, :2]
        cos12 = math.cos(math.radians(12.0))
        n_bins = 180
        abin = np.floor((az + np.pi) / (2 * np.pi) * n_bins).astype(np.int64) % n_bins
        active = np.ones(cand.size, dtype=bool)
        planes: list[NDArray[np.float64]] = []
        min_count = cfg.wall_min_length * cfg.wall_min_height / vs**2 * 0.3
        tried = 0
        while tried < cfg.wall_max_planes:
            tried += 1
            hist = np.bincount(abin[active], minlength=n_bins).astype(np.float64)
            smooth = (
                hist + np.roll(hist, 1) + np.roll(hist, -1) + np.roll(hist, 2) + np.roll(hist, -2)
            )
            k = int(np.argmax(smooth))
            if smooth[k] < min_count:
                break
            theta = (k + 0.5) / n_bins * 2 * np.pi - np.pi
            dirn = np.array([math.cos(theta), math.sin(theta)])
            in_dir = active & (nxy @ dirn > cos12)
            # The bin centre is up to 1 degree off, which smears a 4 m wall's offsets over
            # 7 cm: take the members' mean normal as the direction.
            if in_dir.any():
                mean = nxy[in_dir].sum(axis=0)
                dirn = mean / max(float(np.linalg.norm(mean)), 1e-9)
                in_dir = active & (nxy @ dirn > cos12)
            d = cand_xy @ dirn
            d_all = s_dir = None  # every voxel's offset / position along, when first needed
            # Offsets of this direction: 1 cm bins; take every big peak.
            dsel = d[in_dir]
            if dsel.size == 0:
                active[in_dir] = False
                continue
            d_lo = dsel.min()
            db = np.floor((dsel - d_lo) / 0.01).astype(np.int64)
            dh = np.bincount(db).astype(np.float64)
            dh_s = np.convolve(dh, np.ones(5), mode="same")
            used_dir = np.zeros(cand.size, dtype=bool)
            for _ in range(4):
                j = int(np.argmax(dh_s))
                if dh_s[j] < min_count:
                    break
                d0 = d_lo + (j + 0.5) * 0.01
                near = in_dir & (np.abs(d - d0) < 0.05)
                dh_s[max(0, j - 8) : j + 9] = 0
                used_dir |= near
                if d_all is None or s_dir is None:
                    d_all = xy_all @ dirn
                    s_dir = xy_all @ np.array([-dirn[1], dirn[0]])
                segments = self._wall_segments(g, h, cand[near], dirn, d_all, s_dir)
                for plane, s_lo, s_hi in segments:
                    planes.append(plane)
                    # The band (any normal) and a wall's thickness behind it (the next
                    # room's side of the wall, noise, reflections) - not everything behind.
                    idx = np.flatnonzero(np.abs(d_all - plane[2]) < self.wall_depth + 0.1)
                    dist = xy_all[idx] @ plane[:2] - plane[2]
                    along = xy_all[idx] @ np.array([-plane[1], plane[0]])
                    mark = (along > s_lo - 0.05) & (along < s_hi + 0.05)
                    mark &= (dist < cfg.wall_band) & (dist > -self.wall_depth)
                    mark &= struct[idx] == 0
                    struct[idx[mark]] = STRUCT_WALL
            active &= ~(in_dir | used_dir)
            active &= struct[cand] == 0
        return planes

    wall_depth = 0.15  # m behind a wall's surface that still counts as the wall

    def _wall_segments(
        self,
        g: _Grid,
        h: NDArray[np.float64],
        members: NDArray[np.int64],
        dirn: NDArray[np.float64],
        d_all: NDArray[np.float64],
        s_dir: NDArray[np.float64],
    ) -> list[tuple[NDArray[np.float64], float, float]]:
        """Wall segments (plane (nx, ny, d), along-plane range) among the voxels of one
        Hough peak. A least-squares line is fitted; its voxels are binned 10 cm x 10 cm on
        the plane (along, up) and each 8-connected blob of cells is a candidate: a wall is
        long (``wall_min_length``) and tall (``wall_min_height``), or long, 30 cm tall and
        the room's boundary (next to nothing observed behind it: the far side of a room is
        often seen only low down). A set of coplanar furniture faces across the room, a
        cabinet front or a fridge side is not."""
        cfg = self.cfg
        if members.size < 20:
            return []
        xy = g.pos[members, :2]
        n = dirn.copy()
        d = float(np.median(xy @ n))
        keep = np.abs(xy @ n - d) < 0.05
        for _ in range(2):  # line fit (PCA), then refit on its inliers
            if keep.sum() < 20:
                return []
            c = xy[keep].mean(axis=0)
            _, v = np.linalg.eigh(np.cov((xy[keep] - c).T))
            n = v[:, 0] if v[:, 0] @ dirn > 0 else -v[:, 0]
            d = float(n @ c)
            keep = np.abs(xy @ n - d) < cfg.wall_band
        if abs(n @ dirn) < math.cos(math.radians(15.0)) or keep.sum() < 20:
            return []
        t = np.array([-n[1], n[0]])
        s = xy[keep] @ t
        hz = h[members[keep]]
        cell = 0.1
        si = np.floor((s - s.min()) / cell).astype(np.int64)
        hi = np.floor((hz - hz.min()) / cell).astype(np.int64)
        occ = np.zeros((si.max() + 1, hi.max() + 1), dtype=bool)
        occ[si, hi] = True
        lab, _ = ndimage.label(occ, structure=np.ones((3, 3), dtype=bool))
        # Blob extents in cells: (along slice, up slice) per blob.
        boxes = [bb for bb in ndimage.find_objects(lab) if bb is not None]
        spans = [(bb[0].start, bb[0].stop, (bb[1].stop - bb[1].start) * cell) for bb in boxes]
        blobs = [(float(s.min() + c0 * cell), float(s.min() + c1 * cell)) for c0, c1, _ in spans]
        big = [
            (c0, c1, hgt)
            for c0, c1, hgt in spans
            if (c1 - c0) * cell >= cfg.wall_min_length and hgt >= 0.3
        ]
        if not big:
            return []
        plane = np.array([n[0], n[1], d])
        # Everything observed, the floor included: behind a wall there is nothing (or the
        # next room); behind a shelf front or a cabinet there is its inside and the floor.
        # Offsets and positions along the peak's direction stand in for the fitted plane's
        # (within a degree or two): 2 cm over 1.5 m, and no pass over every voxel here.
        d_dir = float(np.median(xy[keep] @ dirn))
        idx = np.flatnonzero(np.abs(d_all - d_dir) < 1.6)
        dist_all = d_all[idx] - d_dir
        s_all = s_dir[idx] - float(np.median(xy[keep] @ np.array([-dirn[1], dirn[0]]) - s))
        behind_all = (dist_all < -cfg.wall_band - 0.02) & (dist_all > -1.5)
        band_all = np.abs(dist_all) < cfg.wall_band
        # Per 10 cm cell along the plane (the blobs' cells): cumulative counts, so each
        # blob's ratio is two lookups.
        cells = occ.shape[0]
        ci = np.floor((s_all - s.min()) / cell).astype(np.int64)
        inside = (ci >= 0) & (ci < cells)
        cum_behind = np.r_[0, np.cumsum(np.bincount(ci[inside & behind_all], minlength=cells))]
        cum_band = np.r_[0, np.cumsum(np.bincount(ci[inside & band_all], minlength=cells))]
        for c0, c1, height in big:
            behind = (cum_behind[c1] - cum_behind[c0]) / max(int(cum_band[c1] - cum_band[c0]), 1)
            # Tall: little behind it; low (the far side of a room, seen only low down):
            # next to nothing behind it. One qualifying blob makes the plane a wall: its
            # other blobs (the wall beside a fridge that hides part of it) are wall too.
            limit = cfg.wall_behind_max if height >= cfg.wall_min_height else 0.05
            if behind <= limit:
                return [(plane, lo, hi) for lo, hi in blobs]
        return []

    # -- support patches --------------------------------------------------------------
    def _patches(
        self,
        g: _Grid,
        h: NDArray[np.float64],
        rest: NDArray[np.bool_],
        a: NDArray[np.int64],
        b: NDArray[np.int64],
    ) -> list[dict[str, Any]]:
        """Flat up-facing sheets above the floor with a large footprint."""
        cfg = self.cfg
        up = rest & (g.normal[:, 2] > self.cos_h) & (h > cfg.support_min_height)
        sel = up[a] & up[b]
        # Only nearly level neighbours: a sheet, not a staircase of tops.
        sel &= np.abs(h[a] - h[b]) < 0.02
        _, lab = _components(g.n, a[sel], b[sel])
        lab = np.where(up, lab, -1)
        out: list[dict[str, Any]] = []
        if not up.any():
            return out
        ids, counts = np.unique(lab[up], return_counts=True)
        min_cells = cfg.support_min_area / cfg.voxel_size**2
        for cid in ids[counts >= min_cells * 0.8]:
            members = np.flatnonzero(lab == cid)
            cells = np.unique(_cell_keys(g.ijk[members, :2]))
            if cells.size < min_cells:
                continue
            hm = h[members]
            height = float(np.median(hm))
            out.append(
                {
                    "members": members,
                    "cells": cells,
                    "h": height,
                    "z": float(np.median(g.pos[members, 2])),
                }
            )
        return out

    def _peel(
        self,
        g: _Grid,
        h: NDArray[np.float64],
        rest: NDArray[np.bool_],
        patches: list[dict[str, Any]],
    ) -> NDArray[np.int64]:
        """Patch id per voxel for the voxels peeled off with each patch (-1: not peeled)."""
        cfg = self.cfg
        peeled = np.full(g.n, -1, dtype=np.int64)
        if not patches:
            return peeled
        up = g.normal[:, 2] > self.cos_h
        grow = np.ones((5, 5), dtype=bool)
        for pid, p in enumerate(patches):
            cells = p["cells"]
            ij = vk.unpack(cells)[:, :2]
            # Footprint raster, convex hull filled: what stands on a top hides the top
            # under it, and a hole reaching the edge would spare the rim next to it.
            lo = ij.min(axis=0) - 2
            shape = tuple(ij.max(axis=0) - lo + 3)
            fill = _hull_raster(ij - lo, shape)
            dil1 = ndimage.binary_dilation(fill, structure=np.ones((3, 3), dtype=bool))
            dil2 = ndimage.binary_dilation(fill, structure=grow)
            dh = h - p["h"]
            cand = np.flatnonzero(rest & (np.abs(dh) < cfg.slab_depth + 0.03))
            rc = g.ijk[cand, :2] - lo
            ok = (rc[:, 0] >= 0) & (rc[:, 1] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] < shape[1])
            cand, rc = cand[ok], rc[ok]
            in1 = dil1[rc[:, 0], rc[:, 1]]
            in2 = dil2[rc[:, 0], rc[:, 1]]
            dc = dh[cand]
            band = np.abs(dc) < cfg.support_band
            band |= up[cand] & (np.abs(dc) < cfg.support_band_up)
            take = in1 & band
            # The slab below the top, down to slab_depth, out to 2 cells past its edge: an
            # object at the edge must not stay joined to a bevelled or thick top's rim. Only
            # the slab is there (objects stand above the top); it stays part of the patch, so
            # the legs below still touch it.
            take |= in2 & (dc > -cfg.slab_depth) & (dc < cfg.support_band)
            take &= peeled[cand] < 0
            peeled[cand[take]] = pid
        return peeled

    # -- assembly ---------------------------------------------------------------------
    def _assemble(
        self,
        g: _Grid,
        h: NDArray[np.float64],
        rest: NDArray[np.bool_],
        peeled: NDArray[np.int64],
        patches: list[dict[str, Any]],
        a: NDArray[np.int64],
        b: NDArray[np.int64],
    ) -> tuple[NDArray[np.int64], list[dict[str, Any]]]:
        cfg = self.cfg
        free = rest & (peeled < 0)
        sel = free[a] & free[b]
        # Neighbours whose normals face each other are two surfaces across a narrow gap
        # (two objects a few cm apart), not one surface: a single surface turns by at most
        # ~90 degrees between neighbouring voxels, and a thin sheet's two sides are joined
        # around its edges (or share a voxel, whose averaged normal is then not trusted).
        trusted = g.normal_ok[a] & g.normal_ok[b] & sel
        dot = np.ones(a.size)
        dot[trusted] = np.einsum("ij,ij->i", g.normal[a[trusted]], g.normal[b[trusted]])
        sel &= ~(trusted & (dot < -cfg.facing_cos))
        comp = self._pieces(g, h, free, peeled, a, b, sel, dot, trusted)
        # Renumber components over free voxels only.
        uniq, comp_c = np.unique(comp[free], return_inverse=True)
        n_comp = uniq.size
        cid = np.full(g.n, -1, dtype=np.int64)
        cid[free] = comp_c
        n_pat = len(patches)
        # Node ids: components 0..n_comp-1, patches n_comp..n_comp+n_pat-1.
        node = cid.copy()
        node[peeled >= 0] = n_comp + peeled[peeled >= 0]
        n_nodes = n_comp + n_pat
        zmin_c = _Groups(cid[free], n_comp).min(h[free])
        # Component <-> patch contacts (edges across the peel).
        na, nb = node[a], node[b]
        cross = (na >= 0) & (nb >= 0) & ((na >= n_comp) != (nb >= n_comp))
        ca = np.where(na[cross] < n_comp, na[cross], nb[cross])
        pa = np.where(na[cross] >= n_comp, na[cross], nb[cross]) - n_comp
        pairs, pair_n = np.unique(np.stack([ca, pa], 1), axis=0, return_counts=True)
        if pairs.size == 0:
            pairs = np.zeros((0, 2), dtype=np.int64)
        ph = np.array([p["h"] for p in patches]) if n_pat else np.zeros(0)
        # Patch <-> patch contacts (a lower level touching an upper one through the peel).
        pp = (na >= n_comp) & (nb >= n_comp) & (na != nb)
        pp_pairs = (
            np.unique(np.stack([na[pp], nb[pp]], 1), axis=0)
            if pp.any()
            else np.zeros((0, 2), np.int64)
        )

        c_of, p_of = pairs[:, 0], pairs[:, 1]
        rel_on = zmin_c[c_of] >= ph[p_of] - cfg.on_tolerance if pairs.size else np.zeros(0, bool)

        def assemble(extra: NDArray[np.bool_]) -> tuple[int, NDArray[np.int64]]:
            join = ~rel_on | extra
            ea = np.concatenate([c_of[join], pp_pairs[:, 0]])
            eb = np.concatenate([n_comp + p_of[join], pp_pairs[:, 1]])
            return _components(n_nodes, ea, eb)

        demoted = np.zeros(n_pat, dtype=bool)
        for _ in range(3):
            n_asm, asm = assemble(demoted[p_of] if pairs.size else np.zeros(0, bool))
            vnode = np.flatnonzero(node >= 0)
            va = asm[node[vnode]]
            _, zlo, zhi, big = self._asm_extent(g, h, vnode, va, n_asm)
            grounded = zlo <= cfg.floor_contact
            pat_asm = asm[n_comp + np.arange(n_pat)]
            bad = ~demoted & ~(grounded[pat_asm] | big[pat_asm])
            if not bad.any():
                break
            demoted |= bad
        n_asm, asm = assemble(demoted[p_of] if pairs.size else np.zeros(0, bool))
        vnode = np.flatnonzero(node >= 0)
        va = asm[node[vnode]]
        nvox, zlo, zhi, big = self._asm_extent(g, h, vnode, va, n_asm)
        has_top = np.zeros(n_asm, dtype=bool)
        for pid in np.flatnonzero(~demoted):
            has_top[asm[n_comp + pid]] = True
        furniture = big | has_top
        # Support of each assembly: the (non-demoted) patch its "on" components touch most.
        support_asm = np.full(n_asm, -1, dtype=np.int64)
        support_h = np.full(n_asm, np.nan)
        support_hh = np.full(n_asm, np.nan)
        if pairs.size:
            on_valid = rel_on & ~demoted[p_of]
            best_n = np.zeros(n_asm)
            for (c, p), cnt in zip(pairs[on_valid], pair_n[on_valid], strict=True):
                aid = asm[c]
                if asm[n_comp + p] == aid:
                    continue
                if cnt > best_n[aid]:
                    best_n[aid] = cnt
                    support_asm[aid] = asm[n_comp + p]
                    support_h[aid] = patches[p]["z"]
                    support_hh[aid] = patches[p]["h"]
        # Furniture resting on a top is part of that furniture: the upper level of a shelf
        # stands on its lower board (the sides are cut where they pass the board), and a
        # furniture-sized but low piece is the top's raised lip (a coffee table's border).
        low = zhi - support_hh < cfg.lip_height
        lip = furniture & (support_asm >= 0) & (has_top | low)
        # ... and so is a low piece spanning most of the top (side panels standing proud of
        # a shelf's top board), whatever its size.
        rest_on = np.flatnonzero(~furniture & (support_asm >= 0) & low)
        if rest_on.size:
            span = self._xy_span(g, vnode, va, n_asm)
            lip[rest_on] |= span[rest_on] >= 0.7 * span[support_asm[rest_on]]
        for aid in np.flatnonzero(lip):
            va[va == aid] = support_asm[aid]
            support_asm[support_asm == aid] = support_asm[aid]
        if lip.any():
            nvox = np.bincount(va, minlength=n_asm)
            furniture &= nvox > 0
        # Loose furniture parts: pieces that rest on no top but lie inside a piece of
        # furniture's footprint (grown by attach_margin) and not above it join it - drawer
        # fronts cut apart by their handles' TSDF shadows, a pedestal whose column is hidden
        # under the top. First towards furniture with a top, then towards the rest.
        for targets_top in (True, False):
            targets = np.flatnonzero(furniture & (nvox > 0) & (has_top == targets_top))
            loose = np.flatnonzero(~has_top & (support_asm < 0) & (nvox > 0))
            if targets_top is False:
                loose = loose[~furniture[loose]]
            if not targets.size or not loose.size:
                continue
            vmask = np.isin(va, loose)
            lv, la = vnode[vmask], va[vmask]
            best = np.full(n_asm, -1, dtype=np.int64)
            best_frac = np.zeros(n_asm)
            for f in targets:
                fv = vnode[va == f]
                centre, size, yaw = min_area_rectangle(g.pos[fv, :2])
                c, s = math.cos(yaw), math.sin(yaw)
                d = g.pos[lv, :2] - centre
                u = np.abs(d[:, 0] * c + d[:, 1] * s) <= size[0] / 2 + cfg.attach_margin
                w = np.abs(-d[:, 0] * s + d[:, 1] * c) <= size[1] / 2 + cfg.attach_margin
                inside = u & w & (h[lv] <= zhi[f] + cfg.on_tolerance) & (la != f)
                inside_n = np.bincount(la, weights=inside.astype(np.float64), minlength=n_asm)
                frac = inside_n / np.maximum(nvox, 1)
                better = frac > np.maximum(best_frac, 0.5)
                best[better] = f
                best_frac[better] = frac[better]
            moved = np.flatnonzero(best >= 0)
            if moved.size:
                remap = np.arange(n_asm)
                remap[moved] = best[moved]
                va = remap[va]
                nvox = np.bincount(va, minlength=n_asm)
                support_asm = np.where(support_asm >= 0, remap[np.maximum(support_asm, 0)], -1)
                furniture[moved] = False
        keep = furniture | (nvox >= cfg.min_object_voxels)
        keep &= nvox > 0
        new_id = np.full(n_asm, -1, dtype=np.int64)
        kept = np.flatnonzero(keep)
        # Furniture first, then objects (stable ids within one segmentation).
        kept = np.concatenate([kept[furniture[kept]], kept[~furniture[kept]]])
        new_id[kept] = np.arange(kept.size)
        inst_of_voxel = np.full(g.n, -1, dtype=np.int64)
        inst_of_voxel[vnode] = new_id[va]
        raw = []
        for aid in kept:
            sup = int(support_asm[aid])
            raw.append(
                {
                    "role": ROLE_FURNITURE if furniture[aid] else ROLE_OBJECT,
                    "support": None if sup < 0 or new_id[sup] < 0 else int(new_id[sup]),
                    "support_z": float(support_h[aid]) if sup >= 0 else None,
                }
            )
        return inst_of_voxel, raw

    def _pieces(
        self,
        g: _Grid,
        h: NDArray[np.float64],
        free: NDArray[np.bool_],
        peeled: NDArray[np.int64],
        a: NDArray[np.int64],
        b: NDArray[np.int64],
        sel: NDArray[np.bool_],
        dot: NDArray[np.float64],
        trusted: NDArray[np.bool_],
    ) -> NDArray[np.int64]:
        """Components of the free voxels, split at sharp concave creases and merged back.

        Two things that touch (a short box against a tall one, a ramekin against a table's
        raised lip) meet in a concave crease; so do a mug and its handle, drawer fronts
        and their grooves. Cutting every sharp concave edge (normals turning towards each
        other by more than ``concave_deg``; ``(n_b - n_a) . (p_b - p_a) < 0``) splits all of
        them; then every piece that rests on nothing - touches no top, is not on the floor
        and is not furniture-sized - joins the neighbour it shares most cut edges with.
        What is left apart are pieces that each stand on their own."""
        cfg = self.cfg
        e = np.flatnonzero(sel & trusted & (dot < math.cos(math.radians(cfg.concave_deg))))
        d = g.pos[b[e]] - g.pos[a[e]]
        turn = np.einsum("ij,ij->i", g.normal[b[e]] - g.normal[a[e]], d)
        concave = np.zeros(a.size, dtype=bool)
        concave[e] = turn < -0.1 * np.linalg.norm(d, axis=1)
        concave |= self._steps(g, h, free, a, b, sel)
        keep = sel & ~concave
        _, comp = _components(g.n, a[keep], b[keep])
        comp = np.where(free, comp, -1)
        uniq, comp_c = np.unique(comp[free], return_inverse=True)
        n = uniq.size
        cid = np.full(g.n, -1, dtype=np.int64)
        cid[free] = comp_c
        if n == 0:
            return cid
        # Seeds: touch a top, stand on the floor or are too big to be one object's part.
        seed = np.zeros(n, dtype=bool)
        touch = (cid[a] >= 0) & (peeled[b] >= 0)
        seed[cid[a][touch]] = True
        touch = (cid[b] >= 0) & (peeled[a] >= 0)
        seed[cid[b][touch]] = True
        fv = np.flatnonzero(free)
        grp = _Groups(cid[fv], n)
        zlo, zhi = grp.min(h[fv]), grp.max(h[fv])
        seed |= zlo <= cfg.floor_contact_piece
        seed |= zhi - zlo > cfg.max_object_height
        cut = sel & ~keep & (cid[a] != cid[b])
        ca, cb = cid[a[cut]], cid[b[cut]]
        if ca.size == 0:
            return cid
        # Each seedless piece links to the neighbour it shares most cut edges with.
        pa = np.concatenate([ca, cb])
        pb = np.concatenate([cb, ca])
        pair, cnt = np.unique(np.stack([pa, pb], 1), axis=0, return_counts=True)
        pair, cnt = pair[~seed[pair[:, 0]]], cnt[~seed[pair[:, 0]]]
        if pair.size == 0:
            return cid
        order = np.lexsort((-cnt, pair[:, 0]))
        pair = pair[order]
        first = np.r_[True, pair[1:, 0] != pair[:-1, 0]]
        link = pair[first]
        _, merged = _components(n, link[:, 0], link[:, 1])
        out = np.full(g.n, -1, dtype=np.int64)
        out[free] = merged[cid[free]]
        return out

    def _steps(
        self,
        g: _Grid,
        h: NDArray[np.float64],
        free: NDArray[np.bool_],
        a: NDArray[np.int64],
        b: NDArray[np.int64],
        sel: NDArray[np.bool_],
    ) -> NDArray[np.bool_]:
        """Edges between voxel columns whose tops differ by more than ``step_height``,
        inside object-sized components: two boxes pressed together with flush sides meet
        in no crease, but the short one's columns end well below the tall one's. (A
        bottle's neck or a mug's handle is cut off too and rejoins: it stands on
        nothing.)"""
        cfg = self.cfg
        out = np.zeros(a.size, dtype=bool)
        if cfg.step_height <= 0:
            return out
        _, comp = _components(g.n, a[sel], b[sel])
        fv = np.flatnonzero(free)
        lab, inv = np.unique(comp[fv], return_inverse=True)
        n = lab.size
        grp = _Groups(inv, n)
        lo_z, hi_z = grp.min(h[fv]), grp.max(h[fv])
        ext = grp.xy_extent(g.pos[fv])
        small = (ext <= cfg.max_object_extent) & (hi_z - lo_z <= cfg.max_object_height)
        small &= hi_z - lo_z > cfg.step_height
        if not small.any():
            return out
        vs = fv[small[inv]]
        ci = inv[small[inv]]
        # Column key: (component, i, j); its top = the highest voxel in it.
        col = vk.pack(np.column_stack([ci, g.ijk[vs, 0], g.ijk[vs, 1]]))
        ucol, cinv = np.unique(col, return_inverse=True)
        top = _Groups(cinv, ucol.size).max(h[vs])
        colv = np.full(g.n, -1, dtype=np.int64)
        colv[vs] = cinv
        e = sel & (colv[a] >= 0) & (colv[b] >= 0) & (colv[a] != colv[b])
        e &= comp[a] == comp[b]
        step = np.zeros(a.size)
        step[e] = np.abs(top[colv[a[e]]] - top[colv[b[e]]])
        return e & (step > cfg.step_height)

    def _xy_span(
        self, g: _Grid, vnode: NDArray[np.int64], va: NDArray[np.int64], n_asm: int
    ) -> NDArray[np.float64]:
        """Longest axis-aligned footprint side of each assembly."""
        return _Groups(va, n_asm).xy_extent(g.pos[vnode])

    def _asm_extent(
        self,
        g: _Grid,
        h: NDArray[np.float64],
        vnode: NDArray[np.int64],
        va: NDArray[np.int64],
        n_asm: int,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
        """(voxels, lowest h, highest h, larger than an object) per assembly. "Larger" uses
        the footprint's minimum-area rectangle (a rotated tray's axis-aligned extent is
        40 % more than its side), computed only where the axis-aligned one is too big."""
        cfg = self.cfg
        nvox = np.bincount(va, minlength=n_asm)
        grp = _Groups(va, n_asm)
        zlo, zhi = grp.min(h[vnode]), grp.max(h[vnode])
        ext = grp.xy_extent(g.pos[vnode])
        # A rectangle's long side is at least its axis-aligned extent / sqrt(2): only the
        # ones in between need the hull.
        unsure = (ext > cfg.max_object_extent) & (ext < cfg.max_object_extent * math.sqrt(2))
        if unsure.any():
            order = grp.order
            for k in np.flatnonzero(unsure):
                i = int(np.searchsorted(grp.keys, k))
                stop = grp.starts[i + 1] if i + 1 < grp.starts.size else order.size
                _, size, _ = min_area_rectangle(g.pos[vnode[order[grp.starts[i] : stop]], :2])
                ext[k] = size.max()
        big = (ext > cfg.max_object_extent) | (zhi - zlo > cfg.max_object_height)
        return nvox, zlo, zhi, big

    # -- output -----------------------------------------------------------------------
    def _build(
        self,
        surface: SurfacePoints,
        g: _Grid,
        labels: NDArray[np.int32],
        raw: list[dict[str, Any]],
        plane: NDArray[np.float64] | None,
    ) -> list[Instance]:
        cfg = self.cfg
        pts = surface.points
        order = np.argsort(labels, kind="stable")
        sl = labels[order]
        starts = np.searchsorted(sl, np.arange(len(raw)))
        ends = np.searchsorted(sl, np.arange(len(raw)), side="right")
        out: list[Instance] = []
        for i, r in enumerate(raw):
            idx = np.sort(order[starts[i] : ends[i]]).astype(np.int64)
            p = pts[idx].astype(np.float64)
            lo, hi = p.min(axis=0), p.max(axis=0)
            cx, cy = float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2)
            floor_z = None if plane is None else float(plane[0] * cx + plane[1] * cy + plane[2])
            sup_z = r["support_z"] if r["support"] is not None else floor_z
            if sup_z is not None and r["role"] == ROLE_OBJECT and 0 < lo[2] - sup_z < 0.05:
                lo[2] = sup_z  # the peel took the bottom centimetre or two
            if (
                r["role"] == ROLE_FURNITURE
                and floor_z is not None
                and 0 < lo[2] - floor_z < cfg.floor_contact
            ):
                lo[2] = floor_z
            # Yaw from the hull of the voxel centroids (a few times fewer than the points);
            # the extents along it from every point.
            vox = np.unique(g.inverse[idx])  # its voxels, sorted (so their keys are too)
            _, _, yaw = min_area_rectangle(g.pos[vox, :2])
            cy_, sy_ = math.cos(yaw), math.sin(yaw)
            u = p[:, 0] * cy_ + p[:, 1] * sy_
            v = -p[:, 0] * sy_ + p[:, 1] * cy_
            mu, mv = (u.max() + u.min()) / 2, (v.max() + v.min()) / 2
            centre = np.array([mu * cy_ - mv * sy_, mu * sy_ + mv * cy_])
            size = np.array([u.max() - u.min(), v.max() - v.min()])
            box = Box3D(
                center=np.array([centre[0], centre[1], (lo[2] + hi[2]) / 2]),
                size=np.array([size[0], size[1], hi[2] - lo[2]]),
                yaw=yaw,
                label=r["role"],
                num_voxels=int(vox.size),
            )
            vkeys = g.keys[vox]
            out.append(
                Instance(
                    id=i,
                    role=r["role"],
                    indices=idx,
                    voxel_keys=vkeys,
                    support=r["support"],
                    support_height=float(sup_z) if sup_z is not None else float(lo[2]),
                    aabb_min=lo,
                    aabb_max=hi,
                    box=box,
                )
            )
        return out
