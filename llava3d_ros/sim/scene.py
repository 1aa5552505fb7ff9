"""Room composition, ground-truth boxes and camera paths for synthetic RGB-D scenes.

A :class:`SceneSpec` is a plain, JSON-serialisable description (room, surfaces, lights,
furniture and objects with poses and instance ids); :func:`compose_room` draws one from
a seed, :func:`build_pyrender_scene` turns it into something :class:`RGBDRenderer` can
render, :func:`object_boxes` gives the ground truth, and :func:`walkthrough_poses` /
:func:`object_views` give camera poses (4x4 ``T_world_camera_optical``: x right, y down,
z forward, world z up). The world frame is the map frame: the room spans
``[-sx/2, sx/2] x [-sy/2, sy/2] x [0, height]``.

Layout: tables, cabinets and shelves stand in a cluster in the middle of the room, tall
pieces (fridge, bookshelf, plant) against the walls, objects on the furniture tops (some
on the floor next to the cluster), and the camera walks a rounded loop between the
cluster and the walls, looking in. This keeps the objects in view for most of a
walk-through while walls, floor and other furniture fill the background.

Instance ids: objects are ``1..N`` in placement order; furniture gets
``FURNITURE_ID_BASE + i`` so it can be told apart in the mask; 0 is the room.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trimesh
from PIL import Image

from llava3d_ros.core.geometry import vec3
from llava3d_ros.sim.assets import (
    AssetSpec,
    asset_vertices,
    catalog,
    get_asset,
    load_texture,
    room_texture_paths,
)

if TYPE_CHECKING:  # render.py imports pyrender (and sets up EGL): only when rendering
    from llava3d_ros.sim.render import RenderScene, RGBDRenderer

__all__ = [
    "FURNITURE_ID_BASE",
    "Light",
    "ObjectBox",
    "Placement",
    "SceneSpec",
    "SurfaceStyle",
    "build_pyrender_scene",
    "compose_room",
    "look_at",
    "object_boxes",
    "object_views",
    "walkthrough_poses",
]

FURNITURE_ID_BASE = 1000

_FLOOR_PALETTE = ((0.55, 0.45, 0.35), (0.65, 0.62, 0.58), (0.35, 0.33, 0.32), (0.7, 0.6, 0.45))
_WALL_PALETTE = (
    (0.92, 0.91, 0.88),
    (0.85, 0.88, 0.9),
    (0.9, 0.85, 0.75),
    (0.75, 0.82, 0.76),
    (0.7, 0.75, 0.85),
    (0.88, 0.8, 0.8),
    (0.6, 0.62, 0.65),
)


# --------------------------------------------------------------------------------------
# Specification.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """An asset at ``(x, y, z)`` (its normalised frame's origin: bottom centre) turned by
    ``yaw`` radians about world z. ``on``: 0 for the floor, else the instance id of the
    furniture it stands on."""

    asset_id: str
    x: float
    y: float
    z: float
    yaw: float
    instance_id: int
    on: int = 0

    def matrix(self) -> np.ndarray:
        """4x4 world <- asset (normalised frame)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        t = np.eye(4)
        t[:2, :2] = [[c, -s], [s, c]]
        t[:3, 3] = (self.x, self.y, self.z)
        return t


@dataclass(frozen=True)
class SurfaceStyle:
    """Colour (linear 0..1) times an optional LIBERO texture (by file stem, e.g.
    ``"gray_floor"``) repeated every ``tile_m`` metres."""

    colour: tuple[float, float, float]
    texture: str | None = None
    tile_m: float = 1.5


@dataclass(frozen=True)
class Light:
    """``kind`` "directional" (``vector`` = direction of travel) or "point" (``vector``
    = position); intensity in pyrender units."""

    kind: str
    vector: tuple[float, float, float]
    colour: tuple[float, float, float]
    intensity: float


@dataclass(frozen=True)
class SceneSpec:
    seed: int
    room_size: tuple[float, float, float]  # sx, sy, height (metres)
    floor: SurfaceStyle
    walls: SurfaceStyle
    ceiling: SurfaceStyle
    furniture: tuple[Placement, ...]
    objects: tuple[Placement, ...]
    ambient: tuple[float, float, float]
    lights: tuple[Light, ...]
    version: int = 1

    def placements(self) -> tuple[Placement, ...]:
        return self.furniture + self.objects

    def placement(self, instance_id: int) -> Placement:
        for p in self.placements():
            if p.instance_id == instance_id:
                return p
        raise KeyError(f"no placement with instance id {instance_id}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSpec:
        def style(s: dict[str, Any]) -> SurfaceStyle:
            return SurfaceStyle(tuple(s["colour"]), s.get("texture"), float(s["tile_m"]))

        return cls(
            seed=int(d["seed"]),
            room_size=tuple(d["room_size"]),
            floor=style(d["floor"]),
            walls=style(d["walls"]),
            ceiling=style(d["ceiling"]),
            furniture=tuple(Placement(**p) for p in d["furniture"]),
            objects=tuple(Placement(**p) for p in d["objects"]),
            ambient=tuple(d["ambient"]),
            lights=tuple(
                Light(li["kind"], tuple(li["vector"]), tuple(li["colour"]), float(li["intensity"]))
                for li in d["lights"]
            ),
            version=int(d.get("version", 1)),
        )


# --------------------------------------------------------------------------------------
# 2-D footprints (oriented rectangles) for non-overlap tests.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rect:
    cx: float
    cy: float
    hx: float
    hy: float
    yaw: float

    def corners(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        local = np.array(
            [[-self.hx, -self.hy], [self.hx, -self.hy], [self.hx, self.hy], [-self.hx, self.hy]]
        )
        return local @ np.array([[c, s], [-s, c]]) + (self.cx, self.cy)

    def axes(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, s], [-s, c]])

    def aabb(self) -> tuple[float, float, float, float]:
        pts = self.corners()
        return pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()


def _rects_overlap(a: _Rect, b: _Rect, gap: float = 0.0) -> bool:
    """Separating-axis test for two oriented rectangles grown by ``gap`` / 2 each."""
    ca, cb = a.corners(), b.corners()
    for axis in np.vstack([a.axes(), b.axes()]):
        pa, pb = ca @ axis, cb @ axis
        if pa.max() + gap <= pb.min() or pb.max() + gap <= pa.min():
            return False
    return True


def _point_rect_distance(p: np.ndarray, r: _Rect) -> float:
    c, s = math.cos(r.yaw), math.sin(r.yaw)
    d = np.asarray(p, float) - (r.cx, r.cy)
    local = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1]])
    q = np.abs(local) - (r.hx, r.hy)
    return float(np.linalg.norm(np.maximum(q, 0.0)) + min(max(q[0], q[1]), 0.0))


def _footprint(asset: AssetSpec, x: float, y: float, yaw: float) -> _Rect:
    return _Rect(x, y, asset.size[0] / 2, asset.size[1] / 2, yaw)


# --------------------------------------------------------------------------------------
# Composition.
# --------------------------------------------------------------------------------------


def _pick_style(rng: np.random.Generator, kind: str, textures: list[str]) -> SurfaceStyle:
    palette = _FLOOR_PALETTE if kind == "floor" else _WALL_PALETTE
    if textures and rng.random() < 0.75:
        tint = vec3(rng.uniform(0.85, 1.0, 3))
        return SurfaceStyle(tint, str(rng.choice(textures)), float(rng.uniform(1.0, 2.0)))
    base = np.asarray(palette[int(rng.integers(len(palette)))])
    colour = np.clip(base + rng.uniform(-0.05, 0.05, 3), 0, 1)
    return SurfaceStyle(vec3(colour), None, 1.5)


def _place_furniture(
    rng: np.random.Generator, furniture_ids: Sequence[str]
) -> list[tuple[str, float, float, float]]:
    """Cluster furniture around the origin: yaw in 90-degree steps, 0.3-0.8 m apart."""
    placed: list[tuple[str, float, float, float]] = []
    rects: list[_Rect] = []
    for aid in furniture_ids:
        asset = get_asset(aid)
        for attempt in range(400):
            yaw = float(rng.integers(4)) * math.pi / 2
            if not placed:
                x = y = 0.0
            else:
                # Grow the search ring slowly so the cluster stays compact.
                radius = 1.0 + 0.01 * attempt + max(asset.size[:2]) / 2
                ang = rng.uniform(0, 2 * math.pi)
                cx = float(np.mean([r.cx for r in rects]))
                cy = float(np.mean([r.cy for r in rects]))
                x, y = cx + radius * math.cos(ang), cy + radius * math.sin(ang)
            rect = _footprint(asset, x, y, yaw)
            gap = float(rng.uniform(0.3, 0.8))
            if all(not _rects_overlap(rect, r, gap) for r in rects):
                placed.append((aid, x, y, yaw))
                rects.append(rect)
                break
        else:  # pragma: no cover - the ring keeps growing, so this is not reached
            raise RuntimeError(f"could not place furniture {aid}")
    return placed


_LOOP_CLEARANCE = 0.5  # metres between the camera loop and any furniture
_FRONTS = {"+x": 0.0, "+y": math.pi / 2, "-x": math.pi, "-y": -math.pi / 2}


def _yaw_facing(asset: AssetSpec, direction: np.ndarray) -> float:
    """Yaw that turns the asset's front (``AssetSpec.front``) towards ``direction``."""
    return float(math.atan2(direction[1], direction[0]) - _FRONTS[asset.front])


def _depth_against_wall(asset: AssetSpec) -> float:
    """Extent along the front direction: how far the piece sticks out from its wall."""
    return asset.size[0] if asset.front in ("+x", "-x") else asset.size[1]


def _choose_assets(
    rng: np.random.Generator, pool: Sequence[str], n: int, forced: Sequence[str] | None
) -> list[str]:
    if forced is not None:
        return list(forced)
    if not pool:
        return []
    replace = n > len(pool)
    return [str(a) for a in rng.choice(sorted(pool), size=n, replace=replace)]


def _place_object(
    rng: np.random.Generator,
    asset: AssetSpec,
    instance_id: int,
    furniture: Sequence[Placement],
    support_ids: Sequence[int],
    object_rects: dict[int, list[_Rect]],
    furniture_rects: Sequence[_Rect],
    cluster_half: tuple[float, float],
    floor_probability: float,
    min_gap: float,
) -> Placement | None:
    """One object on a furniture top (or the floor); None when 60 draws found no spot."""
    for _attempt in range(60):
        on = (
            0
            if (rng.random() < floor_probability or not support_ids)
            else int(rng.choice(support_ids))
        )
        yaw = float(rng.uniform(-math.pi, math.pi))
        if on:
            base = next(p for p in furniture if p.instance_id == on)
            top = get_asset(base.asset_id)
            assert top.support_region is not None and top.support_height is not None
            x0, x1, y0, y1 = top.support_region
            lx, ly = rng.uniform(x0, x1), rng.uniform(y0, y1)
            c, s = math.cos(base.yaw), math.sin(base.yaw)
            x, y = base.x + c * lx - s * ly, base.y + s * lx + c * ly
            z = top.support_height + 0.001  # 1 mm lift: no z-fighting with the top
            rect = _footprint(asset, x, y, yaw)
            # The whole footprint must stay on the top (1 cm inside its edges).
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            region = _Rect(
                base.x + c * mx - s * my,
                base.y + s * mx + c * my,
                (x1 - x0) / 2 + 0.03,
                (y1 - y0) / 2 + 0.03,
                base.yaw,
            )
            if any(_point_rect_distance(pt, region) > 1e-9 for pt in rect.corners()):
                continue
        else:
            # Floor: beside the cluster, inside the camera loop.
            hx, hy = cluster_half
            x = float(rng.uniform(-hx - 0.6, hx + 0.6))
            y = float(rng.uniform(-hy - 0.6, hy + 0.6))
            z = 0.0
            rect = _footprint(asset, x, y, yaw)
            if any(_rects_overlap(rect, fr, 0.1) for fr in furniture_rects):
                continue
        if any(_rects_overlap(rect, r, min_gap) for r in object_rects.get(on, [])):
            continue
        object_rects.setdefault(on, []).append(rect)
        return Placement(asset.asset_id, float(x), float(y), float(z), yaw, instance_id, on)
    return None


def compose_room(
    seed: int,
    n_objects: int = 6,
    n_furniture: int | None = None,
    *,
    object_assets: Sequence[str] | None = None,
    furniture_assets: Sequence[str] | None = None,
    floor_probability: float = 0.15,
    allow_recoloured: bool = False,
    min_gap: float = 0.02,
) -> SceneSpec:
    """A random room, fully determined by ``seed``.

    ``n_furniture`` pieces (default 1-3; the first always has a top that takes objects):
    tables, cabinets and shelves stand in a cluster in the middle (yaw in 90-degree
    steps, 0.3-0.8 m apart), tall pieces without a usable top (fridge, bookshelf, plant)
    against a wall, facing the room. ``n_objects`` scanned objects stand on the furniture
    tops (or, with ``floor_probability``, on the floor beside the cluster) at random
    non-overlapping poses (``min_gap`` between footprints); an object that fits nowhere is
    swapped for another unless the list was forced. The room leaves a band around the
    cluster for :func:`walkthrough_poses`; floor and walls get a LIBERO texture or a plain
    colour, and ambient/key/ceiling lights vary in direction, intensity and warmth.
    ``object_assets`` / ``furniture_assets`` force the asset lists (e.g. one object for
    per-object training views). LIBERO-PRO recolours are excluded unless
    ``allow_recoloured``.
    """
    rng = np.random.default_rng(seed)
    specs = catalog()
    object_pool = [
        a.asset_id
        for a in specs.values()
        if a.role == "object" and (allow_recoloured or not a.recoloured)
    ]
    supports = [a.asset_id for a in specs.values() if a.role == "furniture" and a.support_height]
    others = [a.asset_id for a in specs.values() if a.role == "furniture" and not a.support_height]
    if furniture_assets is None:
        if not supports:
            raise RuntimeError("no furniture with a top surface is installed")
        count = int(rng.integers(1, 4)) if n_furniture is None else int(n_furniture)
        chosen = [str(rng.choice(sorted(supports)))]
        rest = sorted(set(supports + others) - set(chosen))
        chosen += [str(a) for a in rng.choice(rest, size=min(count - 1, len(rest)), replace=False)]
    else:
        chosen = list(furniture_assets)
    for aid in chosen:
        if get_asset(aid).role != "furniture":
            raise ValueError(f"{aid} is not furniture")
    # Pieces with a top form a cluster in the middle; tall pieces without one (fridge,
    # bookshelf, plant) stand against the walls, facing the room.
    cluster_ids = [a for a in chosen if get_asset(a).support_height is not None]
    wall_ids = [a for a in chosen if get_asset(a).support_height is None]
    placed = _place_furniture(rng, cluster_ids)

    # Centre the cluster on the origin, then size the room around it.
    if placed:
        boxes = np.array([_footprint(get_asset(a), x, y, yaw).aabb() for a, x, y, yaw in placed])
    else:
        boxes = np.array([[-0.5, 0.5, -0.5, 0.5]])
    cx = (boxes[:, 0].min() + boxes[:, 1].max()) / 2
    cy = (boxes[:, 2].min() + boxes[:, 3].max()) / 2
    half_x = (boxes[:, 1].max() - boxes[:, 0].min()) / 2
    half_y = (boxes[:, 3].max() - boxes[:, 2].min()) / 2
    # Room: cluster + a band on every side for the camera loop (wider around big
    # clusters: the loop's corners swing out, see walkthrough_poses).
    room_half = [
        half_x + float(rng.uniform(1.4, 2.0)) + 0.2 * half_x,
        half_y + float(rng.uniform(1.4, 2.0)) + 0.2 * half_y,
    ]
    height = float(rng.uniform(2.5, 3.0))

    furniture: list[Placement] = []
    for aid, x, y, yaw in placed:
        furniture.append(
            Placement(
                aid,
                float(x - cx),
                float(y - cy),
                0.0,
                float(yaw),
                FURNITURE_ID_BASE + len(furniture),
            )
        )

    # Wall pieces: pick a wall each, widen the room so that the camera loop still fits
    # between the piece and the cluster, then slide the piece along its wall.
    sides = [int(rng.integers(4)) for _ in wall_ids]  # 0: +x, 1: +y, 2: -x, 3: -y
    for aid, side in zip(wall_ids, sides, strict=True):
        axis = side % 2
        depth = _depth_against_wall(get_asset(aid))
        cluster = (half_x, half_y)[axis]
        needed = (cluster + _LOOP_CLEARANCE) / 0.84 + 0.3 + _LOOP_CLEARANCE + depth + 0.05
        room_half[axis] = max(room_half[axis], needed)
    wall_rects: list[_Rect] = []
    for aid, side in zip(wall_ids, sides, strict=True):
        asset = get_asset(aid)
        axis = side % 2
        sign = 1.0 if side < 2 else -1.0
        normal = np.zeros(2)
        normal[axis] = sign  # outward wall normal
        yaw = _yaw_facing(asset, -normal)
        for _attempt in range(100):
            rect = _footprint(asset, 0.0, 0.0, yaw)
            lo_x, hi_x, lo_y, hi_y = rect.aabb()
            half_along = ((hi_y - lo_y) if axis == 0 else (hi_x - lo_x)) / 2
            half_across = ((hi_x - lo_x) if axis == 0 else (hi_y - lo_y)) / 2
            span = room_half[1 - axis] - half_along - 0.1
            along = float(rng.uniform(-span, span)) if span > 0 else 0.0
            across = sign * (room_half[axis] - half_across - 0.02)
            x, y = (across, along) if axis == 0 else (along, across)
            rect = _footprint(asset, x, y, yaw)
            if all(not _rects_overlap(rect, r, 0.2) for r in wall_rects):
                wall_rects.append(rect)
                furniture.append(
                    Placement(
                        aid, float(x), float(y), 0.0, float(yaw), FURNITURE_ID_BASE + len(furniture)
                    )
                )
                break
        else:
            raise RuntimeError(f"seed {seed}: no free wall spot for {aid}")
    sx, sy = 2 * room_half[0], 2 * room_half[1]
    furniture_rects = [_footprint(get_asset(p.asset_id), p.x, p.y, p.yaw) for p in furniture]

    # Objects.
    queue = _choose_assets(rng, object_pool, n_objects, object_assets)
    spare = [a for a in sorted(object_pool) if a not in queue]
    rng.shuffle(spare)
    object_rects: dict[int, list[_Rect]] = {}  # per support (0 = floor)
    objects: list[Placement] = []
    support_ids = [p.instance_id for p in furniture if get_asset(p.asset_id).support_height]
    for aid in queue:
        if get_asset(aid).role != "object":
            raise ValueError(f"{aid} is not an object")
        placement = None
        candidates = [aid] if object_assets is not None else [aid, *spare[:10]]
        for cand in candidates:
            placement = _place_object(
                rng,
                get_asset(cand),
                len(objects) + 1,
                furniture,
                support_ids,
                object_rects,
                furniture_rects,
                (half_x, half_y),
                floor_probability,
                min_gap,
            )
            if placement is not None:
                if cand in spare:
                    spare.remove(cand)  # a swapped-in asset (the first did not fit anywhere)
                break
        if placement is None:
            raise RuntimeError(f"seed {seed}: no free spot for object {aid}")
        objects.append(placement)

    # Lighting: ambient, a key light from above, 1-2 ceiling point lights.
    warmth = float(rng.uniform(-1, 1))
    temp = (
        (1.0, 1.0 - 0.05 * abs(warmth), 1.0 - 0.12 * max(warmth, 0))
        if warmth > 0
        else (1.0 - 0.08 * abs(warmth), 1.0 - 0.03 * abs(warmth), 1.0)
    )
    amb = float(rng.uniform(0.2, 0.4))
    az, el = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(45), math.radians(80))
    direction = (-math.cos(el) * math.cos(az), -math.cos(el) * math.sin(az), -math.sin(el))
    # Ranges picked by eye: white tops stay below clipping, dark wood stays readable.
    lights = [Light("directional", direction, temp, float(rng.uniform(1.2, 2.5)))]
    for _ in range(int(rng.integers(1, 3))):
        pos = (
            float(rng.uniform(-sx / 3, sx / 3)),
            float(rng.uniform(-sy / 3, sy / 3)),
            height - 0.2,
        )
        lights.append(Light("point", pos, temp, float(rng.uniform(3.0, 10.0))))

    textures = room_texture_paths()
    floor = _pick_style(rng, "floor", [p.stem for p in textures["floor"]])
    walls = _pick_style(rng, "wall", [p.stem for p in textures["wall"]])
    return SceneSpec(
        seed=int(seed),
        room_size=(float(sx), float(sy), height),
        floor=floor,
        walls=walls,
        ceiling=SurfaceStyle((0.95, 0.95, 0.95)),
        furniture=tuple(furniture),
        objects=tuple(objects),
        ambient=vec3(amb * v for v in temp),
        lights=tuple(lights),
    )


# --------------------------------------------------------------------------------------
# Ground truth.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectBox:
    """Ground-truth 3D box in the world (map) frame: ``center`` and ``size`` (x, y, z
    extents in the box frame) in metres, box frame = world turned by ``yaw`` about z
    (vision_msgs/BoundingBox3D: center pose + size)."""

    instance_id: int
    asset_id: str
    category: str
    names: tuple[str, ...]
    attributes: dict[str, str] = field(default_factory=dict)
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw: float = 0.0
    role: str = "object"

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which of the (N, 3) world points lie inside the box grown by ``margin``."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        d = np.asarray(points, float) - self.center
        local = np.column_stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]])
        return np.all(np.abs(local) <= np.asarray(self.size) / 2 + margin, axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (for bag metadata and metrics files)."""
        return asdict(self)

    def corners(self) -> np.ndarray:
        """(8, 3) world corners."""
        half = np.asarray(self.size) / 2
        local = (
            np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
        )
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        return local @ rot.T + self.center


def object_boxes(spec: SceneSpec, include_furniture: bool = False) -> dict[int, ObjectBox]:
    """Tight ground-truth boxes by instance id, from the placed mesh vertices."""
    out: dict[int, ObjectBox] = {}
    placements = spec.placements() if include_furniture else spec.objects
    for p in placements:
        asset = get_asset(p.asset_id)
        t = p.matrix()
        world = asset_vertices(p.asset_id) @ t[:3, :3].T + t[:3, 3]
        # Back into the yaw-aligned frame for a tight box there.
        c, s = math.cos(p.yaw), math.sin(p.yaw)
        local = np.column_stack(
            [c * world[:, 0] + s * world[:, 1], -s * world[:, 0] + c * world[:, 1], world[:, 2]]
        )
        lo, hi = local.min(axis=0), local.max(axis=0)
        mid = (lo + hi) / 2
        center = (c * mid[0] - s * mid[1], s * mid[0] + c * mid[1], mid[2])
        out[p.instance_id] = ObjectBox(
            instance_id=p.instance_id,
            asset_id=p.asset_id,
            category=asset.category,
            names=asset.names,
            attributes=dict(asset.attributes),
            center=vec3(center),
            size=vec3(hi - lo),
            yaw=float(p.yaw),
            role=asset.role,
        )
    return out


# --------------------------------------------------------------------------------------
# Rendering scene.
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _room_texture(stem: str) -> Any:
    """A LIBERO floor/wall texture by file stem (decoded once), or None if absent."""
    paths = {p.stem: p for ps in room_texture_paths().values() for p in ps}
    return load_texture(paths[stem]) if stem in paths else None


def _surface_mesh(
    corners: np.ndarray, style: SurfaceStyle, u_axis: np.ndarray, v_axis: np.ndarray
) -> Any:
    """A quad (4 corners, counter-clockwise seen from the room) with tiled UVs."""
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    texture = None if style.texture is None else _room_texture(style.texture)
    if texture is None:
        colour = (np.asarray(style.colour) * 255).astype(np.uint8)
        mesh = trimesh.Trimesh(corners, faces, process=False)
        mesh.visual = trimesh.visual.ColorVisuals(
            mesh, vertex_colors=np.tile([*colour, 255], (4, 1))
        )
        return mesh
    arr = np.asarray(texture, dtype=np.float32) * np.asarray(style.colour)
    uv = np.column_stack([corners @ u_axis, corners @ v_axis]) / style.tile_m
    material = trimesh.visual.material.SimpleMaterial(
        image=Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    )
    return trimesh.Trimesh(
        corners,
        faces,
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
        process=False,
    )


def build_pyrender_scene(spec: SceneSpec, renderer: RGBDRenderer) -> RenderScene:
    """A :class:`~llava3d_ros.sim.render.RenderScene` for ``spec`` built from
    ``renderer``'s cached asset meshes (render it with that renderer only)."""
    import pyrender

    from llava3d_ros.sim.render import RenderScene, mesh_from_trimesh

    sx, sy, h = spec.room_size
    x0, x1, y0, y1 = -sx / 2, sx / 2, -sy / 2, sy / 2
    scene = RenderScene(
        scene=pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 1.0], ambient_light=list(spec.ambient))
    )
    ex, ey, ez = np.eye(3)
    surfaces = [
        (np.array([[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]]), spec.floor, ex, ey),
        (np.array([[x0, y0, h], [x0, y1, h], [x1, y1, h], [x1, y0, h]]), spec.ceiling, ex, ey),
        (np.array([[x0, y0, 0], [x0, y0, h], [x1, y0, h], [x1, y0, 0]]), spec.walls, ex, ez),
        (np.array([[x1, y1, 0], [x1, y1, h], [x0, y1, h], [x0, y1, 0]]), spec.walls, -ex, ez),
        (np.array([[x0, y1, 0], [x0, y1, h], [x0, y0, h], [x0, y0, 0]]), spec.walls, -ey, ez),
        (np.array([[x1, y0, 0], [x1, y0, h], [x1, y1, h], [x1, y1, 0]]), spec.walls, ey, ez),
    ]
    for corners, style, u, v in surfaces:
        mesh = mesh_from_trimesh(_surface_mesh(corners, style, u, v), roughness=0.9, smooth=False)
        scene.add_mesh(mesh, np.eye(4), 0)
    for p in spec.placements():
        scene.add_mesh(renderer.asset_mesh(p.asset_id), p.matrix(), p.instance_id)
    for light in spec.lights:
        if light.kind == "directional":
            pose = look_at(np.zeros(3), np.asarray(light.vector)) @ np.diag([1.0, -1.0, -1.0, 1.0])
            scene.scene.add(
                pyrender.DirectionalLight(color=light.colour, intensity=light.intensity), pose=pose
            )
        else:
            pose = np.eye(4)
            pose[:3, 3] = light.vector
            scene.scene.add(
                pyrender.PointLight(color=light.colour, intensity=light.intensity), pose=pose
            )
    return scene


# --------------------------------------------------------------------------------------
# Cameras.
# --------------------------------------------------------------------------------------


def look_at(eye: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> np.ndarray:
    """4x4 ``T_world_camera_optical`` at ``eye`` looking at ``target``, no roll (image
    rows stay level with world z up)."""
    eye = np.asarray(eye, float)
    forward = np.asarray(target, float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    if np.linalg.norm(right) < 1e-6:  # looking straight up/down: any level right axis
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    t = np.eye(4)
    t[:3, 0], t[:3, 1], t[:3, 2], t[:3, 3] = right, down, forward, eye
    return t


def _furniture_rects(spec: SceneSpec) -> list[tuple[_Rect, float]]:
    return [
        (_footprint(get_asset(p.asset_id), p.x, p.y, p.yaw), get_asset(p.asset_id).size[2])
        for p in spec.furniture
    ]


def _camera_clear(
    spec: SceneSpec, eye: np.ndarray, clearance: float, wall_margin: float = 0.3
) -> bool:
    sx, sy, h = spec.room_size
    if abs(eye[0]) > sx / 2 - wall_margin or abs(eye[1]) > sy / 2 - wall_margin:
        return False
    if not 0.1 < eye[2] < h - 0.1:
        return False
    for rect, top in _furniture_rects(spec):
        if eye[2] < top + clearance and _point_rect_distance(eye[:2], rect) < clearance:
            return False
    return True


def _aim_at_objects(eyes: np.ndarray, targets: np.ndarray, window: int = 7) -> np.ndarray:
    """Unit view directions that centre the angular extent of ``targets`` seen from each
    eye (so as many objects as possible fit the view), smoothed over ``window`` frames."""
    d = targets[None, :, :] - eyes[:, None, :]  # (frames, targets, 3)
    mean_dir = d.mean(axis=1)
    ref = np.arctan2(mean_dir[:, 1], mean_dir[:, 0])[:, None]
    # Azimuths relative to the mean direction: no wrap-around inside the span.
    az = np.angle(np.exp(1j * (np.arctan2(d[..., 1], d[..., 0]) - ref)))
    el = np.arctan2(d[..., 2], np.linalg.norm(d[..., :2], axis=2))
    aim_az = ref[:, 0] + (az.min(axis=1) + az.max(axis=1)) / 2
    aim_el = (el.min(axis=1) + el.max(axis=1)) / 2
    forward = np.column_stack(
        [np.cos(aim_el) * np.cos(aim_az), np.cos(aim_el) * np.sin(aim_az), np.sin(aim_el)]
    )
    if len(forward) > window:
        kernel = np.ones(window) / window
        padded = np.concatenate(
            [forward[: window // 2][::-1], forward, forward[-(window // 2) :][::-1]]
        )
        forward = np.column_stack(
            [np.convolve(padded[:, i], kernel, mode="valid") for i in range(3)]
        )
    return forward / np.linalg.norm(forward, axis=1, keepdims=True)


def _superellipse_walk(a: float, b: float, phase: float, laps: np.ndarray) -> np.ndarray:
    """Points on |x/a|^4 + |y/b|^4 = 1 at constant speed: ``laps`` (fractions of the
    perimeter, any sign) measured from the point at angle ``phase``. The angular
    parametrisation alone races through the axis crossings, so it is re-sampled by arc
    length."""
    theta = np.linspace(0.0, 2 * math.pi, 4097) + phase
    c, s = np.cos(theta), np.sin(theta)
    dense = np.column_stack([a * np.sign(c) * np.abs(c) ** 0.5, b * np.sign(s) * np.abs(s) ** 0.5])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    target = np.mod(laps, 1.0) * arc[-1]
    return np.column_stack(
        [np.interp(target, arc, dense[:, 0]), np.interp(target, arc, dense[:, 1])]
    )


def walkthrough_poses(
    spec: SceneSpec,
    n_frames: int,
    seed: int = 0,
    *,
    height_range: tuple[float, float] = (1.2, 1.6),
    clearance: float = _LOOP_CLEARANCE,
    loops: float = 1.0,
) -> np.ndarray:
    """A smooth walk-through: ``loops`` laps of a rounded loop (superellipse) between the
    central furniture and the walls at constant speed, height drifting within
    ``height_range``, looking at the objects (the middle of their angular extent, with a
    slow sway of a few degrees; no roll). Returns (n_frames, 4, 4)
    ``T_world_camera_optical``; every camera keeps ``clearance`` from furniture."""
    rng = np.random.default_rng(seed)
    sx, sy, _ = spec.room_size
    # The loop goes around the central furniture; pieces standing against a wall are
    # left outside it (the clearance check below keeps the loop off them too).
    boxes = np.array([r.aabb() for r, _ in _furniture_rects(spec)]).reshape(-1, 4)
    central = (
        (boxes[:, 0] > -sx / 2 + 0.1)
        & (boxes[:, 1] < sx / 2 - 0.1)
        & (boxes[:, 2] > -sy / 2 + 0.1)
        & (boxes[:, 3] < sy / 2 - 0.1)
    )
    boxes = boxes[central] if central.any() else np.zeros((1, 4))
    inner_x = max(abs(boxes[:, 0].min()), abs(boxes[:, 1].max())) + clearance
    inner_y = max(abs(boxes[:, 2].min()), abs(boxes[:, 3].max())) + clearance
    outer_x, outer_y = sx / 2 - 0.35, sy / 2 - 0.35
    if spec.objects:
        boxes_gt = object_boxes(spec)
        targets = np.array([boxes_gt[o.instance_id].center for o in spec.objects])
    else:
        targets = np.array([[0.0, 0.0, 0.7]])
    for attempt in range(50):
        # Superellipse |x/a|^4 + |y/b|^4 = 1: its diagonal point is (0.84 a, 0.84 b), so
        # a >= inner_x / 0.84, b >= inner_y / 0.84 keeps the whole cluster box inside.
        # Mid-band loops first; then anything, for rooms where wall pieces narrow the band.
        frac = rng.uniform(0.3, 0.9) if attempt < 10 else rng.uniform(0.0, 1.0)
        lo_a, lo_b = inner_x / 0.84, inner_y / 0.84
        a = lo_a + frac * (outer_x - lo_a) if outer_x > lo_a else outer_x
        b = lo_b + frac * (outer_y - lo_b) if outer_y > lo_b else outer_y
        phase = rng.uniform(0, 2 * math.pi)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        h_mid = rng.uniform(*height_range)
        h_amp = min(h_mid - height_range[0], height_range[1] - h_mid)
        h_freq, h_phase = rng.integers(1, 3), rng.uniform(0, 2 * math.pi)
        sway_amp, sway_phase = rng.uniform(1.0, 4.0), rng.uniform(0, 2 * math.pi)
        t = np.arange(n_frames) / max(n_frames, 1)
        xy = _superellipse_walk(a, b, phase, direction * loops * t)
        z = h_mid + h_amp * np.sin(2 * math.pi * h_freq * t + h_phase)
        eyes = np.column_stack([xy, z])
        if not all(_camera_clear(spec, e, clearance) for e in eyes):
            continue
        forward = _aim_at_objects(eyes, targets)
        # A slow, small sway (a few degrees) so the view is not locked to the objects.
        sway = np.radians(sway_amp) * np.sin(2 * math.pi * 3 * t + sway_phase)
        c, s = np.cos(sway), np.sin(sway)
        forward = np.column_stack(
            [
                c * forward[:, 0] - s * forward[:, 1],
                s * forward[:, 0] + c * forward[:, 1],
                forward[:, 2],
            ]
        )
        return np.stack([look_at(e, e + f) for e, f in zip(eyes, forward, strict=True)])
    raise RuntimeError("no collision-free walk-through loop fits this room")


def object_views(
    target: SceneSpec | str,
    n_views: int,
    seed: int = 0,
    *,
    instance_id: int | None = None,
    elevation_deg: tuple[float, float] = (10.0, 60.0),
    fill: tuple[float, float] = (0.25, 0.7),
    half_fov_deg: float = 24.0,
    clearance: float = 0.3,
) -> np.ndarray:
    """Viewpoints around one object: random azimuth, elevation in ``elevation_deg`` and a
    distance at which the object spans ``fill`` of the image's smaller half field of
    view (``half_fov_deg``; 24 deg is the default 640x480 camera's vertical one), looking
    at the object's centre with a small offset. ``target`` is an asset id (the object
    alone in its normalised frame) or a scene with ``instance_id``; in a scene, views
    inside furniture or outside the room are redrawn. Returns (n_views, 4, 4)
    ``T_world_camera_optical``."""
    rng = np.random.default_rng(seed)
    if isinstance(target, str):
        size = np.asarray(get_asset(target).size)
        center = np.array([0.0, 0.0, size[2] / 2])
        spec = None
    else:
        if instance_id is None:
            raise ValueError("instance_id is required with a SceneSpec")
        box = object_boxes(target, include_furniture=True)[instance_id]
        size, center, spec = np.asarray(box.size), np.asarray(box.center), target
    radius = float(np.linalg.norm(size) / 2)
    poses: list[np.ndarray] = []
    for _ in range(200 * n_views):
        if len(poses) == n_views:
            break
        az = rng.uniform(0, 2 * math.pi)
        el = math.radians(rng.uniform(*elevation_deg))
        f = rng.uniform(*fill)
        dist = max(radius / math.tan(f * math.radians(half_fov_deg)), radius + 0.15)
        eye = center + dist * np.array(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
        )
        if spec is not None and not _camera_clear(spec, eye, clearance):
            continue
        aim = center + rng.uniform(-0.15, 0.15, 3) * size
        poses.append(look_at(eye, aim))
    if len(poses) < n_views:
        raise RuntimeError(f"only {len(poses)} of {n_views} views are free of furniture")
    return np.stack(poses)


def _main(argv: Sequence[str] | None = None) -> int:
    """Render example rooms: ``python -m llava3d_ros.sim.scene --out DIR --seeds 0 1``."""
    from llava3d_ros.sim.render import RGBDRenderer, frame_panel  # EGL set-up: only here

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/llava3d_renders"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--frames", type=int, default=3, help="walk-through frames per room")
    parser.add_argument("--antialias", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    renderer = RGBDRenderer(640, 480, antialias=args.antialias)
    for seed in args.seeds:
        spec = compose_room(seed, n_objects=args.objects)
        scene = build_pyrender_scene(spec, renderer)
        poses = walkthrough_poses(spec, 8 * args.frames, seed)
        rows, times = [], []
        for pose in poses[::8]:
            start = time.perf_counter()
            frame = renderer.render(scene, pose)
            times.append(time.perf_counter() - start)
            rows.append(frame_panel(frame))
        path = args.out / f"room_seed{seed}.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        objects = ", ".join(f"{o.instance_id}:{o.asset_id}" for o in spec.objects)
        furniture = ", ".join(p.asset_id for p in spec.furniture)
        print(
            f"{path}: furniture [{furniture}] objects [{objects}] "
            f"first frame {times[0] * 1e3:.0f} ms, then {np.median(times[1:]) * 1e3:.0f} ms"
        )
    renderer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
