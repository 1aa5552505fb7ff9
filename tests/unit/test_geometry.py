"""Camera intrinsics, depth decoding, (un)projection and SE(3) helpers (no ROS needed)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from llava3d_ros.core import geometry as g
from llava3d_ros.core.geometry import (
    CameraIntrinsics,
    DistortionIgnoredWarning,
    UnsupportedEncodingError,
    depth_to_meters,
    interpolate_transform,
    invert_transform,
    make_transform,
    project,
    quaternion_from_rotation_matrix,
    quaternion_normalize,
    quaternion_slerp,
    quaternion_to_rotation_matrix,
    rotation_angle_between,
    transform_points,
    transform_to_translation_quaternion,
    translation_between,
    unproject,
    validate_transform,
)

# A RealSense D435 colour CameraInfo at 640x480 (plumb_bob, zero coefficients as published).
D435_K = [615.3, 0.0, 318.2, 0.0, 615.5, 241.9, 0.0, 0.0, 1.0]


def random_quaternions(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def same_rotation(q0: np.ndarray, q1: np.ndarray, atol: float = 1e-9) -> bool:
    return bool(abs(abs(float(np.dot(q0, q1))) - 1.0) < atol)


# ------------------------------------------------------------------------ intrinsics


def test_from_camera_info_reads_row_major_k() -> None:
    intr = CameraIntrinsics.from_camera_info(D435_K, 640, 480, "plumb_bob", [0.0] * 5)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (615.3, 615.5, 318.2, 241.9)
    assert (intr.width, intr.height) == (640, 480)
    assert intr.shape == (480, 640)
    np.testing.assert_array_equal(intr.as_matrix(), np.array(D435_K).reshape(3, 3))
    assert intr.as_matrix().dtype == np.float64
    # numpy input (CameraInfo.k arrives as array('d') / ndarray) and numpy ints work too
    intr2 = CameraIntrinsics.from_camera_info(np.array(D435_K), np.int64(640), np.int32(480))
    assert intr2 == intr
    assert isinstance(intr2.width, int)


def test_intrinsics_are_frozen() -> None:
    intr = CameraIntrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
    with pytest.raises(dataclasses.FrozenInstanceError):
        intr.fx = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fx": 0.0}, "focal"),
        ({"fy": -3.0}, "focal"),
        ({"cx": float("nan")}, "finite"),
        ({"fx": float("inf")}, "finite"),
        ({"width": 0}, "positive"),
        ({"height": -480}, "positive"),
        ({"width": 640.5}, "integer"),
        ({"height": True}, "integer"),
    ],
)
def test_intrinsics_validation(kwargs: dict, match: str) -> None:
    args = {"fx": 500.0, "fy": 500.0, "cx": 320.0, "cy": 240.0, "width": 640, "height": 480}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CameraIntrinsics(**args)


@pytest.mark.parametrize(
    ("k", "match"),
    [
        ([0.0] * 9, "uncalibrated"),
        (D435_K[:8], "9 elements"),
        ([615.3, 1.0, 318.2, 0.0, 615.5, 241.9, 0.0, 0.0, 1.0], "skew"),
        ([615.3, 0.0, 318.2, 0.0, 615.5, 241.9, 0.0, 0.0, 2.0], "pinhole"),
        ([615.3, 0.0, float("nan"), 0.0, 615.5, 241.9, 0.0, 0.0, 1.0], "finite"),
        ([-615.3, 0.0, 318.2, 0.0, 615.5, 241.9, 0.0, 0.0, 1.0], "focal"),
    ],
)
def test_from_camera_info_rejects_bad_k(k: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CameraIntrinsics.from_camera_info(k, 640, 480)


def test_distortion_is_ignored_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(g, "_distortion_warned", False)
    d = [0.1, -0.25, 0.001, 0.0, 0.08]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = CameraIntrinsics.from_camera_info(D435_K, 640, 480, "plumb_bob", [0.0] * 5)
        assert caught == []  # zero coefficients: nothing to say
        b = CameraIntrinsics.from_camera_info(D435_K, 640, 480, "plumb_bob", d)
        c = CameraIntrinsics.from_camera_info(D435_K, 640, 480, "plumb_bob", d)
    assert [w.category for w in caught] == [DistortionIgnoredWarning]  # once, not per message
    assert "plumb_bob" in str(caught[0].message)
    assert a == b == c  # the coefficients do not change the pinhole model


def test_scaled_preserves_pixel_centres() -> None:
    intr = CameraIntrinsics.from_camera_info(D435_K, 640, 480)
    half = intr.scaled(320, 240)
    assert (half.width, half.height) == (320, 240)
    assert half.fx == pytest.approx(615.3 / 2) and half.fy == pytest.approx(615.5 / 2)
    assert half.cx == pytest.approx((318.2 + 0.5) / 2 - 0.5)
    assert half.cy == pytest.approx((241.9 + 0.5) / 2 - 0.5)
    # A 3D point lands where a resize (pixel-centre convention) moves its pixel.
    pts = np.array([[0.3, -0.2, 1.5], [-1.0, 0.7, 4.0], [0.0, 0.0, 2.0]])
    uv = project(pts, intr)
    s = np.array([320 / 640, 240 / 480])
    np.testing.assert_allclose(project(pts, half), (uv + 0.5) * s - 0.5, atol=1e-9)
    # Round trip and non-uniform scaling (e.g. a 336x336 network input).
    back = half.scaled(640, 480)
    for f in ("fx", "fy", "cx", "cy"):
        assert getattr(back, f) == pytest.approx(getattr(intr, f))
    sq = intr.scaled(336, 336)
    assert sq.fx == pytest.approx(615.3 * 336 / 640) and sq.fy == pytest.approx(615.5 * 336 / 480)
    with pytest.raises(ValueError):
        intr.scaled(0, 240)


# ------------------------------------------------------------------------ depth decoding


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
def test_depth_16bit_is_millimetres(encoding: str) -> None:
    raw = np.array([[0, 1000, 1500], [65535, 1, 0]], dtype=np.uint16)
    out = depth_to_meters(raw, encoding)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    expected = np.array([[np.nan, 1.0, 1.5], [65.535, 0.001, np.nan]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)
    assert raw[0, 1] == 1000  # input untouched


def test_depth_32fc1_is_metres_with_invalid_values() -> None:
    raw = np.array([[np.nan, np.inf, -np.inf], [-1.0, 0.0, 2.5], [1e-3, 7.25, -0.0]], np.float32)
    out = depth_to_meters(raw, "32FC1")
    expected = np.array(
        [[np.nan, np.nan, np.nan], [np.nan, np.nan, 2.5], [1e-3, 7.25, np.nan]], np.float32
    )
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32
    assert not np.shares_memory(out, raw)
    # float64 input (e.g. from a simulator) is accepted and converted
    assert depth_to_meters(raw.astype(np.float64), "32FC1").dtype == np.float32


def test_depth_range_cutoffs_and_channel_axis() -> None:
    raw = np.array([[300, 800], [4000, 9000]], dtype=np.uint16)[..., None]  # (H, W, 1)
    out = depth_to_meters(raw, "16UC1", max_depth=5.0, min_depth=0.5)
    np.testing.assert_allclose(out, [[np.nan, 0.8], [4.0, np.nan]], rtol=1e-6, equal_nan=True)
    f = np.array([[0.2, 5.0, 5.0001]], np.float32)
    np.testing.assert_array_equal(
        np.isnan(depth_to_meters(f, "32FC1", max_depth=5.0)), [[False, False, True]]
    )


@pytest.mark.parametrize("encoding", ["8UC1", "rgb8", "32FC3", "16uc1 ", "", "16SC1"])
def test_unknown_depth_encoding(encoding: str) -> None:
    with pytest.raises(UnsupportedEncodingError) as info:
        depth_to_meters(np.zeros((2, 2), np.uint16), encoding)
    assert isinstance(info.value, ValueError)
    for name in ("16UC1", "mono16", "32FC1"):
        assert name in str(info.value)


def test_depth_dtype_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="integers"):
        depth_to_meters(np.ones((2, 2), np.float32), "16UC1")
    with pytest.raises(ValueError, match="floats"):
        depth_to_meters(np.ones((2, 2), np.uint16), "32FC1")
    with pytest.raises(ValueError, match="shape"):
        depth_to_meters(np.ones((2, 2, 3), np.float32), "32FC1")


# ------------------------------------------------------------------------ (un)projection


def test_unproject_optical_frame_convention() -> None:
    intr = CameraIntrinsics(500.0, 400.0, 2.0, 1.0, 5, 3)
    depth = np.full((3, 5), 2.0, np.float32)
    depth[0, 0] = np.nan
    pts = unproject(depth, intr)
    assert pts.shape == (3, 5, 3) and pts.dtype == np.float32
    np.testing.assert_allclose(pts[1, 2], [0.0, 0.0, 2.0])  # principal point: on the axis
    np.testing.assert_allclose(pts[1, 4], [2.0 * 2 / 500.0, 0.0, 2.0])  # right of cx: +x
    np.testing.assert_allclose(pts[2, 2], [0.0, 2.0 / 400.0, 2.0], rtol=1e-6)  # below cy: +y
    assert np.isnan(pts[0, 0]).all()
    with pytest.raises(ValueError, match="scaled"):
        unproject(np.ones((4, 5), np.float32), intr)


def test_project_inverts_unproject() -> None:
    intr = CameraIntrinsics.from_camera_info(D435_K, 64, 48)
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.3, 8.0, (48, 64)).astype(np.float32)
    uv = project(unproject(depth, intr), intr)
    vv, uu = np.mgrid[0:48, 0:64]
    np.testing.assert_allclose(uv[..., 0], uu, atol=1e-3)
    np.testing.assert_allclose(uv[..., 1], vv, atol=1e-3)
    behind = project(np.array([[0.1, 0.2, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), intr)
    assert np.isnan(behind[:2]).all() and np.isfinite(behind[2]).all()


# ------------------------------------------------------------------------ quaternions / SE(3)


def test_quaternion_matrix_round_trip_against_scipy() -> None:
    qs = random_quaternions(200)
    # Rotations of exactly / nearly 180 degrees (w ~ 0) are where naive formulas break.
    qs = np.vstack([qs, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.6, 0.8, 0, 1e-9]]])
    mats = quaternion_to_rotation_matrix(qs)
    np.testing.assert_allclose(mats, Rotation.from_quat(qs).as_matrix(), atol=1e-12)
    back = quaternion_from_rotation_matrix(mats)
    assert (back[:, 3] >= 0).all()
    np.testing.assert_allclose(
        np.abs(np.sum(back * quaternion_normalize(qs), axis=1)), 1.0, atol=1e-12
    )
    single = quaternion_from_rotation_matrix(mats[0])
    assert single.shape == (4,)


def test_quaternion_normalize_validation() -> None:
    np.testing.assert_allclose(quaternion_normalize([0, 0, 0, 2.0]), [0, 0, 0, 1.0])
    with pytest.raises(ValueError, match="zero length"):
        quaternion_normalize([0, 0, 0, 0])
    with pytest.raises(ValueError, match="finite"):
        quaternion_normalize([0, np.nan, 0, 1])
    with pytest.raises(ValueError, match="shape"):
        quaternion_normalize([0, 0, 1])


def test_make_transform_rotates_and_translates() -> None:
    # 90 degrees about z: x -> y, then translate.
    q = [0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)]
    t = make_transform([1.0, 2.0, 3.0], q)
    assert t.dtype == np.float64 and t.shape == (4, 4)
    np.testing.assert_allclose(
        transform_points(t, [[1.0, 0.0, 0.0]]), [[1.0, 3.0, 3.0]], atol=1e-12
    )
    np.testing.assert_allclose(t[3], [0, 0, 0, 1])
    # Unnormalised ROS quaternions are accepted (normalised), bad ones rejected.
    np.testing.assert_allclose(
        make_transform([0, 0, 0], [0, 0, 2.0, 2.0]), make_transform([0, 0, 0], q), atol=1e-12
    )
    with pytest.raises(ValueError):
        make_transform([0, 0, np.inf], q)
    with pytest.raises(ValueError):
        make_transform([0, 0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError):
        make_transform([0, 0], q)


def test_translation_quaternion_round_trip() -> None:
    rng = np.random.default_rng(2)
    for q in random_quaternions(50, seed=3):
        tr = rng.uniform(-100, 100, 3)
        t = make_transform(tr, q)
        tr2, q2 = transform_to_translation_quaternion(t)
        np.testing.assert_allclose(tr2, tr, atol=1e-12)
        assert q2[3] >= 0 and same_rotation(q2, q)
        np.testing.assert_allclose(make_transform(tr2, q2), t, atol=1e-12)


def test_invert_and_transform_points() -> None:
    rng = np.random.default_rng(4)
    pts = rng.uniform(-5, 5, (100, 3))
    for q in random_quaternions(20, seed=5):
        t = make_transform(rng.uniform(-10, 10, 3), q)
        inv = invert_transform(t)
        np.testing.assert_allclose(inv @ t, np.eye(4), atol=1e-12)
        np.testing.assert_allclose(inv, np.linalg.inv(t), atol=1e-12)
        np.testing.assert_allclose(transform_points(inv, transform_points(t, pts)), pts, atol=1e-12)
        ref = Rotation.from_quat(q).apply(pts) + t[:3, 3]
        np.testing.assert_allclose(transform_points(t, pts), ref, atol=1e-12)
    # dtype is preserved for float32 clouds; leading dims are kept
    p32 = pts.astype(np.float32).reshape(10, 10, 3)
    out = transform_points(t, p32)
    assert out.dtype == np.float32 and out.shape == (10, 10, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        transform_points(t, pts[:, :2])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.__setitem__((0, 3), np.nan), "non-finite"),
        (lambda m: m.__setitem__((3, 0), 0.5), "bottom row"),
        (lambda m: m.__setitem__((0, 0), 2.0), "rotation"),
        (lambda m: m.__setitem__((2, 2), -1.0), "rotation"),  # a reflection, det = -1
    ],
)
def test_invalid_transforms_rejected(mutate, match: str) -> None:
    m = np.eye(4)
    mutate(m)
    for fn in (
        invert_transform,
        lambda x: transform_points(x, np.zeros((1, 3))),
        transform_to_translation_quaternion,
        lambda x: rotation_angle_between(np.eye(4), x),
    ):
        with pytest.raises(ValueError, match=match):
            fn(m)
    with pytest.raises(ValueError, match="4x4"):
        validate_transform(np.eye(3))


def test_slerp_endpoints_and_midpoint() -> None:
    q0 = np.array([0.0, 0.0, 0.0, 1.0])
    q1 = np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])  # 90 deg about z
    np.testing.assert_allclose(quaternion_slerp(q0, q1, 0.0), q0, atol=1e-12)
    np.testing.assert_allclose(quaternion_slerp(q0, q1, 1.0), q1, atol=1e-12)
    mid = quaternion_slerp(q0, q1, 0.5)
    np.testing.assert_allclose(
        mid, [0, 0, math.sin(math.pi / 8), math.cos(math.pi / 8)], atol=1e-12
    )
    # Shortest path: -q1 is the same rotation, the result must be the same rotation.
    assert same_rotation(quaternion_slerp(q0, -q1, 0.5), mid)
    # Agrees with scipy's Slerp on random pairs at random fractions.
    from scipy.spatial.transform import Slerp

    rng = np.random.default_rng(6)
    qs = random_quaternions(40, seed=7)
    for a, b in zip(qs[::2], qs[1::2], strict=True):
        alpha = float(rng.uniform())
        ref = Slerp([0.0, 1.0], Rotation.from_quat([a, b]))([alpha]).as_quat()[0]
        assert same_rotation(quaternion_slerp(a, b, alpha), ref, atol=1e-9)
    # Identical inputs (sin(theta) = 0) do not divide by zero.
    np.testing.assert_allclose(quaternion_slerp(q1, q1, 0.3), q1, atol=1e-12)
    with pytest.raises(ValueError):
        quaternion_slerp(q0, q1, float("nan"))


def test_interpolate_transform() -> None:
    q = [0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)]
    t0 = make_transform([0.0, 0.0, 0.0], [0, 0, 0, 1])
    t1 = make_transform([2.0, -4.0, 1.0], q)
    np.testing.assert_allclose(interpolate_transform(t0, t1, 0.0), t0, atol=1e-12)
    np.testing.assert_allclose(interpolate_transform(t0, t1, 1.0), t1, atol=1e-12)
    mid = interpolate_transform(t0, t1, 0.25)
    np.testing.assert_allclose(mid[:3, 3], [0.5, -1.0, 0.25], atol=1e-12)
    assert rotation_angle_between(t0, mid) == pytest.approx(math.pi / 8, abs=1e-12)
    assert rotation_angle_between(mid, t1) == pytest.approx(3 * math.pi / 8, abs=1e-12)


def test_keyframe_distances() -> None:
    t0 = make_transform([1.0, 1.0, 1.0], [0, 0, 0, 1])
    assert translation_between(t0, t0) == 0.0
    assert rotation_angle_between(t0, t0) == 0.0
    axis = np.array([1.0, 2.0, -2.0]) / 3.0
    for angle in (1e-7, 0.01, 0.5, 2.0, math.pi - 1e-6, math.pi):
        q = np.append(axis * math.sin(angle / 2), math.cos(angle / 2))
        t1 = make_transform([4.0, 5.0, 1.0], q)
        assert translation_between(t0, t1) == pytest.approx(5.0)
        assert rotation_angle_between(t0, t1) == pytest.approx(angle, rel=1e-7, abs=1e-9)
        assert rotation_angle_between(t1, t0) == pytest.approx(angle, rel=1e-7, abs=1e-9)
    # The relative angle does not depend on a common rotation applied to both poses.
    base = make_transform([0, 0, 0], random_quaternions(1, seed=8)[0])
    t2 = make_transform([0, 0, 0], np.append(axis * math.sin(0.15), math.cos(0.15)))
    assert rotation_angle_between(base, base @ t2) == pytest.approx(0.3, rel=1e-9)
