"""Instance segmentation and persistent ids (llava3d_ros.core.objects), no rclpy.

Scenes are planted as surface point clouds: the faces a fused TSDF would hold (no
hidden faces: nothing under an object, no bottoms), sampled every 1 cm with outward
normals, on a 4 x 4 m floor between two walls.
"""

from __future__ import annotations

import numpy as np
import pytest

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.objects.segmentation import (
    ROLE_FURNITURE,
    ROLE_OBJECT,
    Instance,
    Segmentation,
    SegmentationConfig,
    min_area_rectangle,
    segment_surface,
)
from llava3d_ros.core.objects.tracking import InstanceTracker, TrackingConfig
from llava3d_ros.core.objects.tsdf import SurfacePoints
from llava3d_ros.core.spatial import Box3D

SP = 0.01  # sampling step of the planted surfaces (m)

Cloud = tuple[np.ndarray, np.ndarray]


def _grid(a0: float, a1: float, b0: float, b1: float, step: float) -> tuple[np.ndarray, ...]:
    a = np.arange(a0 + step / 2, a1, step)
    b = np.arange(b0 + step / 2, b1, step)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    return aa.ravel(), bb.ravel()


def face(
    axis: int,
    value: float,
    lo: tuple[float, float],
    hi: tuple[float, float],
    sign: float,
    step: float = SP,
) -> Cloud:
    """A rectangle perpendicular to ``axis`` at ``value``; normal ``sign`` along the axis."""
    u, v = _grid(lo[0], hi[0], lo[1], hi[1], step)
    pts = np.zeros((u.size, 3))
    others = [k for k in range(3) if k != axis]
    pts[:, axis] = value
    pts[:, others[0]], pts[:, others[1]] = u, v
    n = np.zeros_like(pts)
    n[:, axis] = sign
    return pts, n


def box(
    lo: tuple[float, float, float], hi: tuple[float, float, float], skip: tuple[str, ...] = ("-z",)
) -> Cloud:
    """The faces of an axis-aligned box (``skip`` names hidden faces, e.g. "-z", "+x")."""
    out = []
    for axis, name in enumerate("xyz"):
        o = [k for k in range(3) if k != axis]
        for sign, value in ((-1.0, lo[axis]), (1.0, hi[axis])):
            if f"{'+' if sign > 0 else '-'}{name}" in skip:
                continue
            out.append(face(axis, value, (lo[o[0]], lo[o[1]]), (hi[o[0]], hi[o[1]]), sign))
    return cat(*out)


def cat(*clouds: Cloud) -> Cloud:
    return np.concatenate([c[0] for c in clouds]), np.concatenate([c[1] for c in clouds])


def without(
    cloud: Cloud,
    *footprints: tuple[tuple[float, float], tuple[float, float]],
    top: float | None = None,
) -> Cloud:
    """Drop the points of ``cloud`` under the footprints (at height ``top`` if given)."""
    p, n = cloud
    keep = np.ones(len(p), dtype=bool)
    for lo, hi in footprints:
        inside = (p[:, 0] > lo[0]) & (p[:, 0] < hi[0]) & (p[:, 1] > lo[1]) & (p[:, 1] < hi[1])
        if top is not None:
            inside &= np.abs(p[:, 2] - top) < 1e-6
        keep &= ~inside
    return p[keep], n[keep]


def room(*footprints: tuple[tuple[float, float], tuple[float, float]]) -> Cloud:
    """4 x 4 m floor at z = 0 (minus what stands on it) and two 2 m walls."""
    floor = without(face(2, 0.0, (-2.0, -2.0), (2.0, 2.0), 1.0, 0.02), *footprints)
    wall_x = face(0, -2.0, (-2.0, 0.0), (2.0, 2.0), 1.0, 0.02)
    wall_y = face(1, -2.0, (-2.0, 0.0), (2.0, 2.0), 1.0, 0.02)
    return cat(floor, wall_x, wall_y)


def table(top: float = 0.75, objects: tuple = ()) -> tuple[Cloud, list]:
    """A 1.0 x 0.6 m table (4 cm slab, 5 cm legs) with its top hidden under ``objects``
    (footprints); returns the cloud and the legs' footprints (hidden floor)."""
    x0, x1, y0, y1 = -0.5, 0.5, -0.3, 0.3
    slab = box((x0, y0, top - 0.04), (x1, y1, top), skip=("-z", "+z"))
    surface = without(face(2, top, (x0, y0), (x1, y1), 1.0), *objects)
    legs, feet = [], []
    for lx in (x0 + 0.02, x1 - 0.07):
        for ly in (y0 + 0.02, y1 - 0.07):
            legs.append(box((lx, ly, 0.0), (lx + 0.05, ly + 0.05, top - 0.04), skip=("-z", "+z")))
            feet.append(((lx, ly), (lx + 0.05, ly + 0.05)))
    return cat(slab, surface, *legs), feet


def surface_of(*clouds: Cloud, noise: float = 0.0, seed: int = 0) -> SurfacePoints:
    p, n = cat(*clouds)
    if noise:
        rng = np.random.default_rng(seed)
        p = p + rng.normal(0.0, noise, p.shape)
        n = n + rng.normal(0.0, 0.1, n.shape)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
    return SurfacePoints.from_arrays(p, n)


def iou(inst: Instance, lo: tuple[float, ...], hi: tuple[float, ...]) -> float:
    return inst.aabb().iou(Box3D.from_min_max(lo, hi))


def only(seg: Segmentation, role: str) -> list[Instance]:
    return [i for i in seg.instances if i.role == role]


def match(seg: Segmentation, lo: tuple[float, ...], hi: tuple[float, ...]) -> Instance:
    """The instance whose box overlaps the true box most."""
    return max(seg.instances, key=lambda i: iou(i, lo, hi))


# Two objects on the table: a 10 x 10 x 15 cm box and an 8 x 8 x 20 cm one.
A = ((-0.25, -0.05, 0.75), (-0.15, 0.05, 0.90))
B = ((0.10, 0.00, 0.75), (0.18, 0.08, 0.95))


def fp(b: tuple) -> tuple[tuple[float, float], tuple[float, float]]:
    return (b[0][0], b[0][1]), (b[1][0], b[1][1])


def table_scene(noise: float = 0.0) -> SurfacePoints:
    tab, feet = table(objects=(fp(A), fp(B)))
    return surface_of(room(*feet), tab, box(*A), box(*B), noise=noise)


# ----------------------------------------------------------------------------- segmentation


def test_two_objects_on_a_table() -> None:
    seg = segment_surface(table_scene())
    furniture, objects = only(seg, ROLE_FURNITURE), only(seg, ROLE_OBJECT)
    assert len(furniture) == 1 and len(objects) == 2
    assert seg.floor_height is not None and abs(seg.floor_height) < 0.01
    assert len(seg.wall_planes) == 2
    t = furniture[0]
    assert iou(t, (-0.5, -0.3, 0.0), (0.5, 0.3, 0.75)) > 0.8
    for lo, hi in (A, B):
        o = match(seg, lo, hi)
        assert o.role == ROLE_OBJECT and o.support == t.id
        assert iou(o, lo, hi) > 0.6
        assert abs(o.support_height - 0.75) < 0.02
        assert o.aabb_min[2] == pytest.approx(0.75, abs=0.02)  # bottom restored to the top
        # Yaw box of an axis-aligned box: its sides (either order of x/y).
        assert sorted(o.box.size[:2]) == pytest.approx(sorted(np.subtract(hi, lo)[:2]), abs=0.02)
    # Labels: every object point is labelled with its instance, walls/floor are -1.
    assert (seg.labels >= 0).sum() == sum(i.num_points for i in seg.instances)
    assert seg.structure[seg.labels >= 0].max() == 0
    assert set(np.unique(seg.structure[seg.labels < 0])) <= {1, 2, 4}  # floor, wall, noise
    # An instance's voxel keys are the keys of its points.
    surf = table_scene()
    for inst in seg.instances:
        keys = np.unique(vk.centred_keys(surf.points[inst.indices], 0.02))
        assert np.array_equal(keys, inst.voxel_keys)


def test_two_touching_objects_of_different_heights() -> None:
    short = ((0.0, 0.0, 0.75), (0.1, 0.1, 0.85))
    tall = ((0.1, 0.0, 0.75), (0.2, 0.1, 1.0))
    # The faces pressed together are hidden; the tall one's face above the short one shows.
    p_short = box(*short, skip=("-z", "+x"))
    p_tall = cat(box(*tall, skip=("-z", "-x")), face(0, 0.1, (0.0, 0.85), (0.1, 1.0), -1.0))
    tab, feet = table(objects=(((0.0, 0.0), (0.2, 0.1)),))
    seg = segment_surface(surface_of(room(*feet), tab, p_short, p_tall))
    objects = only(seg, ROLE_OBJECT)
    assert len(objects) == 2
    assert iou(match(seg, *short), *short) > 0.5
    assert iou(match(seg, *tall), *tall) > 0.5
    assert match(seg, *short).id != match(seg, *tall).id


def test_object_on_the_floor() -> None:
    obj = ((1.0, 1.0, 0.0), (1.2, 1.15, 0.2))
    tab, feet = table()
    seg = segment_surface(surface_of(room(*feet, fp(obj)), tab, box(*obj)))
    o = match(seg, *obj)
    assert o.role == ROLE_OBJECT and o.support is None
    assert iou(o, *obj) > 0.7
    assert abs(o.support_height - 0.0) < 0.01
    assert len(only(seg, ROLE_OBJECT)) == 1 and len(only(seg, ROLE_FURNITURE)) == 1


def test_shelf_with_objects_on_two_levels() -> None:
    x0, x1, y0, y1 = -0.4, 0.4, 0.5, 0.85
    low = ((-0.2, 0.6, 0.40), (-0.1, 0.7, 0.55))
    high = ((0.1, 0.6, 0.80), (0.2, 0.72, 0.92))
    sides = [box((x, y0, 0.0), (x + 0.02, y1, 0.82), skip=("-z",)) for x in (x0, x1 - 0.02)]
    boards = []
    for top, obj in ((0.40, low), (0.80, high)):
        boards.append(box((x0 + 0.02, y0, top - 0.02), (x1 - 0.02, y1, top), skip=("-z", "+z")))
        boards.append(without(face(2, top, (x0 + 0.02, y0), (x1 - 0.02, y1), 1.0), fp(obj)))
    back = face(1, y1, (x0, 0.0), (x1, 0.82), 1.0)  # its outside (a wall would hide it)
    feet = [((x0, y0), (x0 + 0.02, y1)), ((x1 - 0.02, y0), (x1, y1))]
    seg = segment_surface(surface_of(room(*feet), *sides, *boards, back, box(*low), box(*high)))
    furniture = only(seg, ROLE_FURNITURE)
    assert len(furniture) == 1
    shelf = furniture[0]
    assert iou(shelf, (x0, y0, 0.0), (x1, y1, 0.82)) > 0.8
    objects = only(seg, ROLE_OBJECT)
    assert len(objects) == 2
    for lo, hi in (low, high):
        o = match(seg, lo, hi)
        assert o.role == ROLE_OBJECT and o.support == shelf.id
        assert iou(o, lo, hi) > 0.5
        assert abs(o.support_height - lo[2]) < 0.02


def test_noisy_points_and_outliers() -> None:
    clean = table_scene()
    noisy = table_scene(noise=0.003)
    rng = np.random.default_rng(1)
    out_p = rng.uniform((-1.9, -1.9, 0.05), (1.9, 1.9, 1.9), (300, 3))
    out_n = rng.normal(size=(300, 3))
    out_n /= np.linalg.norm(out_n, axis=1, keepdims=True)
    surf = SurfacePoints.from_arrays(
        np.concatenate([noisy.points, out_p]), np.concatenate([noisy.normals, out_n])
    )
    seg = segment_surface(surf)
    assert len(only(seg, ROLE_FURNITURE)) == 1
    assert len(only(seg, ROLE_OBJECT)) == 2
    for lo, hi in (A, B):
        assert iou(match(seg, lo, hi), lo, hi) > 0.5
    # Isolated outliers are noise, not instances.
    assert (seg.labels[len(clean) :] < 0).mean() > 0.95


def test_nothing_to_segment() -> None:
    empty = SurfacePoints.from_arrays(np.zeros((0, 3)), np.zeros((0, 3)))
    seg = segment_surface(empty)
    assert seg.instances == [] and seg.labels.shape == (0,)
    # A floor alone: structure, no instances.
    seg = segment_surface(surface_of(room()))
    assert seg.instances == [] and (seg.labels < 0).all()


def test_min_area_rectangle_of_a_rotated_rectangle() -> None:
    yaw = 0.4
    u, v = _grid(-0.3, 0.3, -0.1, 0.1, 0.01)
    c, s = np.cos(yaw), np.sin(yaw)
    xy = np.column_stack([u * c - v * s + 1.0, u * s + v * c - 2.0])
    centre, size, got = min_area_rectangle(xy)
    assert centre == pytest.approx([1.0, -2.0], abs=0.01)
    assert size == pytest.approx([0.59, 0.19], abs=0.01)
    assert got == pytest.approx(yaw, abs=0.02)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        SegmentationConfig(voxel_size=0.0)
    with pytest.raises(ValueError):
        SegmentationConfig(min_object_voxels=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TrackingConfig(min_overlap=2.0)


# ----------------------------------------------------------------------------- tracking


def _inst(i: int, keys: np.ndarray, role: str = ROLE_OBJECT) -> Instance:
    return Instance(
        id=i,
        role=role,
        indices=np.arange(keys.size),
        voxel_keys=np.sort(keys),
        support=None,
        support_height=0.0,
        aabb_min=np.zeros(3),
        aabb_max=np.ones(3),
        box=Box3D.from_min_max(np.zeros(3), np.ones(3)),
    )


def _seg(*key_sets: np.ndarray, stamp: float = 0.0) -> Segmentation:
    insts = [_inst(i, k) for i, k in enumerate(key_sets)]
    n = sum(k.size for k in key_sets)
    return Segmentation(
        labels=np.zeros(n, np.int32),
        structure=np.zeros(n, np.int8),
        instances=insts,
        floor_height=0.0,
        floor_plane=None,
        wall_planes=[],
        stamp_s=stamp,
        voxel_size=0.02,
        timings_ms={},
    )


def _keys(x0: int, x1: int) -> np.ndarray:
    """Voxel keys of a 1-voxel-thick slab x in [x0, x1), y, z in [0, 5)."""
    g = np.stack(np.meshgrid(np.arange(x0, x1), np.arange(5), np.arange(5), indexing="ij"), -1)
    return vk.pack(g.reshape(-1, 3))


def test_ids_are_stable_as_views_accumulate() -> None:
    # Real segmentations: object A first half seen, then whole; the table grows too.
    half_a = box(*A, skip=("-z", "+y"))
    half_a = (half_a[0][half_a[0][:, 1] < 0.0], half_a[1][half_a[0][:, 1] < 0.0])
    tab, feet = table(objects=(fp(A), fp(B)))
    tab_part = (tab[0][tab[0][:, 0] < 0.3], tab[1][tab[0][:, 0] < 0.3])
    first = segment_surface(surface_of(room(*feet), tab_part, half_a, box(*B)))
    second = segment_surface(table_scene())
    tracker = InstanceTracker()
    u1 = tracker.update(first, stamp_s=1.0)
    u2 = tracker.update(second, stamp_s=2.0)
    assert [e.kind for e in u1.events].count("new") == len(first.instances)
    assert not [e for e in u2.events if e.kind in ("new", "removed", "split", "merged")]
    for lo, hi in (A, B):
        assert u1.id_of(match(first, lo, hi).id) == u2.id_of(match(second, lo, hi).id)
    tid = u2.id_of(match(second, *A).id)
    track = tracker.tracks[tid]
    assert (track.first_seen_s, track.last_seen_s, track.observations) == (1.0, 2.0, 2)
    # Supports are persistent ids too.
    table_id = u2.id_of(only(second, ROLE_FURNITURE)[0].id)
    assert track.support == table_id


def test_merge_keeps_the_bigger_id_and_reports_the_other() -> None:
    big, small = _keys(0, 10), _keys(10, 14)
    tracker = InstanceTracker()
    u1 = tracker.update(_seg(big, small, stamp=1.0))
    id_big, id_small = u1.id_of(0), u1.id_of(1)
    u2 = tracker.update(_seg(np.concatenate([big, small]), stamp=2.0))
    assert u2.id_of(0) == id_big
    merged = [e for e in u2.events if e.kind == "merged"]
    assert len(merged) == 1 and merged[0].track_id == id_big and merged[0].others == (id_small,)
    assert set(tracker.tracks) == {id_big}
    assert not [e for e in u2.events if e.kind in ("new", "removed")]


def test_split_keeps_the_id_on_the_bigger_part() -> None:
    big, small = _keys(0, 10), _keys(10, 14)
    tracker = InstanceTracker()
    u1 = tracker.update(_seg(np.concatenate([big, small]), stamp=1.0))
    parent = u1.id_of(0)
    u2 = tracker.update(_seg(small, big, stamp=2.0))  # order must not matter
    assert u2.id_of(1) == parent
    child = u2.id_of(0)
    assert child != parent
    split = [e for e in u2.events if e.kind == "split"]
    assert len(split) == 1 and split[0].track_id == parent and split[0].others == (child,)
    assert tracker.tracks[child].first_seen_s == 1.0  # it was seen, as part of the parent
    assert not [e for e in u2.events if e.kind == "new"]


def test_missing_tracks_survive_a_flicker_then_are_removed() -> None:
    a, b = _keys(0, 6), _keys(20, 26)
    tracker = InstanceTracker(TrackingConfig(max_missed=1))
    u1 = tracker.update(_seg(a, b, stamp=1.0))
    id_b = u1.id_of(1)
    u2 = tracker.update(_seg(a, stamp=2.0))  # b missed once: kept
    assert id_b in tracker.tracks and not u2.events
    u3 = tracker.update(_seg(a, b, stamp=3.0))  # back: same id
    assert u3.id_of(1) == id_b and tracker.tracks[id_b].observations == 2
    tracker.update(_seg(a, stamp=4.0))
    u5 = tracker.update(_seg(a, stamp=5.0))  # missed twice: removed
    assert [(e.kind, e.track_id) for e in u5.events] == [("removed", id_b)]
    assert id_b not in tracker.tracks
    u6 = tracker.update(_seg(a, b, stamp=6.0))
    assert u6.id_of(1) not in (u1.id_of(0), id_b)  # a new id for a new instance
    assert [e.kind for e in u6.events] == ["new"]


def test_shifted_instance_keeps_its_id() -> None:
    # A re-fused surface moves voxels by one cell here and there: still the same instance.
    tracker = InstanceTracker()
    u1 = tracker.update(_seg(_keys(0, 10)))
    u2 = tracker.update(_seg(_keys(1, 11)))
    assert u2.id_of(0) == u1.id_of(0) and not u2.events


def test_restored_tracks_keep_their_ids() -> None:
    a, b = _keys(0, 6), _keys(20, 26)
    first = InstanceTracker()
    u1 = first.update(_seg(a, b, stamp=1.0))
    second = InstanceTracker()
    second.restore(first.next_id, list(first.tracks.values()))
    u2 = second.update(_seg(a, b, stamp=2.0))
    assert list(u2.ids) == list(u1.ids) and not u2.events
    with pytest.raises(ValueError):
        second.restore(1, list(first.tracks.values()))  # ids not below next_id
