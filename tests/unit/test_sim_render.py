"""Headless RGB-D renderer: metric depth, REP-103 optical camera convention, instances."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import trimesh

from llava3d_ros.sim.render import (
    CameraIntrinsics,
    RenderScene,
    RGBDRenderer,
    colorize_depth,
    colorize_instance,
    default_intrinsics,
    frame_panel,
    mesh_from_trimesh,
)
from llava3d_ros.sim.scene import look_at

W, H = 160, 120


@pytest.fixture(scope="module")
def renderer() -> Iterator[RGBDRenderer]:
    try:
        r = RGBDRenderer(W, H, fx=100.0, fy=110.0)
    except Exception as exc:  # no EGL / GL on this machine
        pytest.skip(f"offscreen OpenGL unavailable: {exc}")
    yield r
    r.close()


def _box(lo: tuple[float, float, float], hi: tuple[float, float, float], rgb=(200, 40, 40)):
    lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
    mesh = trimesh.creation.box(extents=hi_a - lo_a)
    mesh.apply_translation((lo_a + hi_a) / 2)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile([*rgb, 255], (8, 1)))
    return mesh_from_trimesh(mesh, smooth=False)


def _scene(*boxes: tuple) -> RenderScene:
    scene = RenderScene()
    scene.scene.ambient_light = np.array([0.6, 0.6, 0.6])
    for mesh, instance in boxes:
        scene.add_mesh(mesh, np.eye(4), instance)
    return scene


def _unproject(frame) -> tuple[np.ndarray, np.ndarray]:
    """World points of all pixels with depth, and their (v, u) indices."""
    k = frame.intrinsics
    v, u = np.nonzero(frame.depth > 0)
    z = frame.depth[v, u].astype(float)
    cam = np.column_stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z])
    t = frame.T_world_camera
    return cam @ t[:3, :3].T + t[:3, 3], np.column_stack([v, u])


def test_default_intrinsics() -> None:
    k = default_intrinsics()
    assert isinstance(k, CameraIntrinsics)  # the node's type: frames go to the pipeline as-is
    assert (k.width, k.height, k.fx, k.fy, k.cx, k.cy) == (640, 480, 525.0, 525.0, 319.5, 239.5)
    np.testing.assert_allclose(k.as_matrix(), [[525, 0, 319.5], [0, 525, 239.5], [0, 0, 1]])


def test_depth_is_metric_and_unprojects_onto_the_surface(renderer: RGBDRenderer) -> None:
    # A wall at world x = 4 seen from a yawed, pitched camera: every unprojected pixel must
    # land on the plane. A flipped or mis-scaled axis would tilt or bend the point set.
    scene = _scene((_box((4.0, -20, -20), (4.2, 20, 20)), 3))
    pose = look_at((0.3, -0.2, 1.1), (4.0, 0.9, 0.4))
    frame = renderer.render(scene, pose)
    assert frame.rgb.shape == (H, W, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.dtype == np.float32 and frame.instance.dtype == np.int32
    assert (frame.depth > 0).all() and (frame.instance == 3).all()
    points, _ = _unproject(frame)
    np.testing.assert_allclose(points[:, 0], 4.0, atol=2e-3)
    # Depth is the optical z, not the ray length: straight ahead it is the distance.
    head_on = renderer.render(scene, look_at((1.5, 0.0, 0.0), (4.0, 0.0, 0.0)))
    np.testing.assert_allclose(head_on.depth, 2.5, atol=1e-3)


def test_optical_axes_point_right_and_down(renderer: RGBDRenderer) -> None:
    # A small marker at a known world point shows up where the pinhole model puts it.
    pose = look_at((0.0, 0.0, 1.0), (3.0, 0.5, 0.6))
    marker = np.array([3.0, -0.3, 1.4])  # right of and above the line of sight
    scene = _scene((_box(tuple(marker - 0.03), tuple(marker + 0.03)), 5))
    frame = renderer.render(scene, pose)
    v, u = np.nonzero(frame.instance == 5)
    assert len(u) > 4
    cam = np.linalg.inv(pose) @ np.append(marker, 1.0)
    k = frame.intrinsics
    expected_u, expected_v = k.fx * cam[0] / cam[2] + k.cx, k.fy * cam[1] / cam[2] + k.cy
    assert abs(u.mean() - expected_u) < 1.0 and abs(v.mean() - expected_v) < 1.0
    assert expected_u > k.cx and expected_v < k.cy  # right, above: x right, y down


def test_pixel_centres_follow_the_opencv_convention(renderer: RGBDRenderer) -> None:
    # Camera looks along +x, so its x axis is world -y: a plane covering world y <= 0 fills
    # exactly the columns whose centres have camera x > 0, i.e. u > cx = 79.5.
    scene = _scene((_box((3.0, -10.0, -10.0), (3.1, 0.0, 10.0)), 2))
    frame = renderer.render(scene, look_at((0.0, 0.0, 0.0), (1.0, 0.0, 0.0)))
    assert (frame.instance[:, 80:] == 2).all()
    assert (frame.instance[:, :80] == 0).all()
    assert (frame.depth[:, :80] == 0).all()


def test_instances_match_ids_and_depth_discontinuities(renderer: RGBDRenderer) -> None:
    scene = _scene(
        (_box((2.0, -0.3, -0.3), (2.2, 0.3, 0.3), rgb=(220, 30, 30)), 1),
        (_box((3.5, -0.9, -0.6), (3.7, 0.2, 0.5), rgb=(30, 200, 30)), 2),
        (_box((6.0, -20, -20), (6.2, 20, 20), rgb=(200, 200, 200)), 0),
    )
    frame = renderer.render(scene, look_at((0.0, 0.0, 0.0), (1.0, 0.0, 0.0)))
    ids = frame.instance
    assert set(np.unique(ids)) == {0, 1, 2}
    for k, z in ((1, 2.0), (2, 3.5), (0, 6.0)):
        np.testing.assert_allclose(frame.depth[ids == k], z, atol=2e-3)
    # Neighbouring pixels: ids differ exactly where depth jumps.
    for axis in (0, 1):
        id_change = np.diff(ids, axis=axis) != 0
        depth_jump = np.abs(np.diff(frame.depth, axis=axis)) > 0.5
        assert id_change.any()
        np.testing.assert_array_equal(id_change, depth_jump)
    # The colour pass is the same view: the red box is red where its mask is.
    red = frame.rgb[ids == 1].astype(int)
    assert (red[:, 0] > red[:, 1] + 50).mean() > 0.95


def test_nothing_hit_is_zero_depth_and_background(renderer: RGBDRenderer) -> None:
    scene = _scene((_box((2.0, -0.2, -0.2), (2.4, 0.2, 0.2)), 9))
    frame = renderer.render(scene, look_at((0.0, 0.0, 0.0), (1.0, 0.0, 0.0)))
    empty = frame.instance == 0
    assert empty.any() and (frame.depth[empty] == 0).all()
    assert (frame.depth[~empty] > 0).all()


def test_antialiasing_changes_colour_edges_only(renderer: RGBDRenderer) -> None:
    scene = _scene(
        (_box((2.0, -0.3, -0.3), (2.2, 0.3, 0.3)), 1),
        (_box((6.0, -20, -20), (6.2, 20, 20), rgb=(20, 20, 200)), 0),
    )
    pose = look_at((0.0, 0.0, 0.0), (1.0, 0.2, 0.1))
    plain = renderer.render(scene, pose)
    renderer.antialias = True
    try:
        smooth = renderer.render(scene, pose)
    finally:
        renderer.antialias = False
    np.testing.assert_array_equal(plain.instance, smooth.instance)
    np.testing.assert_array_equal(plain.depth, smooth.depth)
    changed = np.any(plain.rgb != smooth.rgb, axis=2)
    assert changed.any() and changed.mean() < 0.1


def test_rejects_bad_inputs(renderer: RGBDRenderer) -> None:
    scene = RenderScene()
    with pytest.raises(ValueError, match="instance id"):
        scene.add_mesh(_box((0, 0, 0), (1, 1, 1)), np.eye(4), -1)
    with pytest.raises(ValueError, match="4x4"):
        renderer.render(scene, np.eye(3))


def test_visualisation_helpers_shapes() -> None:
    depth = np.zeros((4, 5), np.float32)
    depth[1:, 2:] = np.linspace(1, 3, 9, dtype=np.float32).reshape(3, 3)
    inst = np.zeros((4, 5), np.int32)
    inst[1:, 2:] = 1001
    inst[0, 0] = 3
    d = colorize_depth(depth)
    i = colorize_instance(inst)
    assert d.shape == i.shape == (4, 5, 3) and (d[0, 0] == 0).all() and (i[0, 1] == 0).all()
    assert (i[0, 0] != i[1, 2]).any()
    from llava3d_ros.sim.render import RenderedFrame

    frame = RenderedFrame(
        np.zeros((4, 5, 3), np.uint8), depth, inst, default_intrinsics(5, 4), np.eye(4)
    )
    assert frame_panel(frame).shape == (4, 15, 3)
