"""A tiny room ray-cast with open3d (no OpenGL): a floor, a table (top + four legs) and
boxes standing on it, seen from a ring of cameras. Depth is exact; colour is a flat
colour per object. For tests of the geometry and object layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import open3d as o3d  # type: ignore[import-untyped]

from llava3d_ros.core.geometry import CameraIntrinsics


@dataclass(frozen=True)
class Part:
    name: str
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    rgb: tuple[int, int, int]


TABLE_TOP_Z = 0.75


def table_scene(boxes: Sequence[Part] = ()) -> list[Part]:
    """Floor 4 x 4 m at z = 0, a 1.2 x 0.8 m table (top 0.72-0.75 m, four legs) and
    ``boxes`` (default: a red 10 cm cube and a blue 8 x 8 x 20 cm box on the table)."""
    parts = [
        Part("floor", (-2.0, -2.0, -0.02), (2.0, 2.0, 0.0), (150, 140, 130)),
        Part("table", (-0.6, -0.4, 0.72), (0.6, 0.4, TABLE_TOP_Z), (120, 80, 40)),
    ]
    for i, (x, y) in enumerate(((-0.55, -0.35), (0.55, -0.35), (-0.55, 0.35), (0.55, 0.35))):
        parts.append(
            Part(f"leg{i}", (x - 0.03, y - 0.03, 0.0), (x + 0.03, y + 0.03, 0.72), (120, 80, 40))
        )
    if not boxes:
        top = TABLE_TOP_Z
        boxes = (
            Part("red_box", (-0.3, -0.1, top), (-0.2, 0.0, top + 0.1), (200, 30, 30)),
            Part("blue_box", (0.2, 0.0, top), (0.28, 0.08, top + 0.2), (30, 40, 200)),
        )
    return parts + list(boxes)


def look_at(eye: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """T_map_optical of a camera at ``eye`` looking at ``target`` (z up, no roll)."""
    e, t = np.asarray(eye, float), np.asarray(target, float)
    z = (t - e) / np.linalg.norm(t - e)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.column_stack([x, y, z])
    m[:3, 3] = e
    return m


def ring_poses(n: int, radius: float = 1.6, height: float = 1.4) -> list[np.ndarray]:
    return [
        look_at((radius * np.cos(a), radius * np.sin(a), height), (0.0, 0.0, TABLE_TOP_Z))
        for a in np.linspace(0, 2 * np.pi, n, endpoint=False)
    ]


class Raycaster:
    def __init__(self, parts: Sequence[Part], width: int = 320, height: int = 240) -> None:
        self.parts = list(parts)
        self.intrinsics = CameraIntrinsics(
            fx=262.5, fy=262.5, cx=(width - 1) / 2, cy=(height - 1) / 2, width=width, height=height
        )
        self.scene = o3d.t.geometry.RaycastingScene()
        self.ids = []
        for p in parts:
            lo, hi = np.asarray(p.lo), np.asarray(p.hi)
            mesh = o3d.geometry.TriangleMesh.create_box(*(hi - lo)).translate(lo)
            self.ids.append(self.scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh)))

    def render(self, t_map_optical: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8, depth float32 metres (0 = none), part index per pixel (-1 = none))."""
        k = self.intrinsics
        h, w = k.height, k.width
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        dirs = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u, float)], -1)
        rot, origin = t_map_optical[:3, :3], t_map_optical[:3, 3]
        world = dirs.reshape(-1, 3) @ rot.T
        rays = np.concatenate([np.broadcast_to(origin, world.shape), world], 1).astype(np.float32)
        ans = self.scene.cast_rays(o3d.core.Tensor(rays))
        t = ans["t_hit"].numpy().reshape(h, w)  # along the ray; ray z component is 1
        geom = ans["geometry_ids"].numpy().reshape(h, w).astype(np.int64)
        hit = np.isfinite(t)
        depth = np.where(hit, t, 0.0).astype(np.float32)
        index = np.full((h, w), -1, np.int64)
        lut = {int(g): i for i, g in enumerate(self.ids)}
        for g, i in lut.items():
            index[(geom == g) & hit] = i
        colours = np.array([p.rgb for p in self.parts] + [(0, 0, 0)], np.uint8)
        rgb = colours[np.where(index >= 0, index, len(self.parts))]
        return rgb, depth, index
