"""The fallback TF buffer: chains, interpolation, no extrapolation, reasons; bad
transforms (non-unit quaternions, non-finite values) refused where TF is fed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from llava3d_ros.core.geometry import make_transform
from llava3d_ros.ros.tf_buffer import (
    TransformBuffer,
    TransformUnavailableError,
    transform_from_parts,
)

S = 1_000_000_000


def _yaw(deg: float) -> list[float]:
    h = math.radians(deg) / 2
    return [0.0, 0.0, math.sin(h), math.cos(h)]


def _buffer() -> TransformBuffer:
    buf = TransformBuffer(cache_time_s=10.0)
    # map -> odom static-ish offset, odom -> base_link moving along x and turning,
    # base_link -> camera static (REP-103 optical frame rotated).
    buf.set_transform("map", "odom", 0, make_transform([1.0, 0, 0], _yaw(0)), static=True)
    buf.set_transform("odom", "base_link", 10 * S, make_transform([0, 0, 0], _yaw(0)))
    buf.set_transform("odom", "base_link", 12 * S, make_transform([2.0, 0, 0], _yaw(90)))
    buf.set_transform(
        "base_link", "camera", 0, make_transform([0, 0, 1.0], [-0.5, 0.5, -0.5, 0.5]), static=True
    )
    return buf


def test_chain_with_interpolation() -> None:
    buf = _buffer()
    t = buf.lookup("map", "base_link", 11 * S)
    np.testing.assert_allclose(t[:3, 3], [2.0, 0, 0], atol=1e-9)
    yaw = math.degrees(math.atan2(t[1, 0], t[0, 0]))
    assert yaw == pytest.approx(45.0, abs=1e-6)
    cam = buf.lookup("map", "camera", 12 * S)
    # Optical z (forward) must point along base_link's x, which is now map +y.
    np.testing.assert_allclose(cam[:3, 2], [0, 1, 0], atol=1e-9)
    np.testing.assert_allclose(cam[:3, 3], [3.0, 0, 1.0], atol=1e-9)


def test_inverse_lookup_and_sibling_frames() -> None:
    buf = _buffer()
    a = buf.lookup("map", "camera", 11 * S)
    b = buf.lookup("camera", "map", 11 * S)
    np.testing.assert_allclose(a @ b, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(buf.lookup("camera", "camera", 11 * S), np.eye(4))


def test_no_extrapolation_reasons() -> None:
    buf = _buffer()
    with pytest.raises(TransformUnavailableError) as err:
        buf.lookup("map", "base_link", 13 * S)
    assert err.value.reason == "future"
    with pytest.raises(TransformUnavailableError) as err:
        buf.lookup("map", "base_link", 9 * S)
    assert err.value.reason == "expired"
    with pytest.raises(TransformUnavailableError) as err:
        buf.lookup("map", "nowhere", 11 * S)
    assert err.value.reason == "unknown_frame"
    buf.set_transform("world2", "island", 0, np.eye(4), static=True)
    with pytest.raises(TransformUnavailableError) as err:
        buf.lookup("map", "island", 0)
    assert err.value.reason == "disconnected"


def test_latest_and_cache_trim() -> None:
    buf = TransformBuffer(cache_time_s=1.0)
    for i in range(50):
        buf.set_transform("odom", "base", i * S // 10, make_transform([i, 0, 0], _yaw(0)))
    assert buf.lookup("odom", "base", 0)[0, 3] == 49
    with pytest.raises(TransformUnavailableError) as err:
        buf.lookup("odom", "base", 3 * S)
    assert err.value.reason == "expired"
    assert buf.lookup("odom", "base", 4 * S)[0, 3] == pytest.approx(40.0)


def test_rejects_bad_frames() -> None:
    with pytest.raises(ValueError):
        TransformBuffer().set_transform("a", "a", 0, np.eye(4))


# --------------------------------------------------------------------------- bad TF


@pytest.mark.parametrize(
    "quat",
    [
        [0.0, 0.0, 0.0, 2.0],  # |q| = 2
        [0.0, 0.0, 0.0, 0.0],  # |q| = 0
        [0.0, 0.0, 0.0, 0.98],  # just outside the 1 % tolerance
        [0.0, 0.0, math.nan, 1.0],
        [0.0, 0.0, math.inf, 1.0],
    ],
)
def test_non_unit_or_non_finite_quaternions_are_refused(quat: list[float]) -> None:
    """Before: any quaternion was normalised, so a broken publisher's |q| = 2 (or 1e6)
    rotation was accepted as some rotation."""
    with pytest.raises(ValueError):
        transform_from_parts([0.0, 0.0, 0.0], quat)


def test_nearly_unit_quaternions_are_normalised() -> None:
    t = transform_from_parts([1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.009])
    np.testing.assert_allclose(t, make_transform([1.0, 2.0, 3.0], [0, 0, 0, 1.0]), atol=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        transform_from_parts([math.nan, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])


def test_buffer_refuses_non_rigid_matrices() -> None:
    buf = TransformBuffer()
    for bad in (np.diag([2.0, 2.0, 2.0, 1.0]), np.full((4, 4), np.nan), np.diag([1, 1, -1, 1.0])):
        with pytest.raises(ValueError):
            buf.set_transform("map", "cam", S, bad)
    assert buf.frames() == set()


class _FakeNode:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def create_subscription(self, *_a: object, **_kw: object) -> object:
        return object()

    def get_logger(self) -> Any:
        node = self

        class _Logger:
            def warning(self, message: str, **_kw: object) -> None:
                node.warnings.append(message)

        return _Logger()


def _tf_msg(child: str, quat: list[float], stamp_s: int = 1) -> Any:
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = "map", child
    t.header.stamp.sec = stamp_s
    r = t.transform.rotation
    r.x, r.y, r.z, r.w = quat
    return TFMessage(transforms=[t])


def test_tf_source_refuses_bad_quaternions_where_tf_is_fed() -> None:
    from llava3d_ros.ros.tf_source import TfSource

    node = _FakeNode()
    tf = TfSource(node, prefer_tf2=False)  # type: ignore[arg-type]
    tf._on_tf(_tf_msg("good", [0.0, 0.0, 0.0, 1.0]))
    tf._on_tf(_tf_msg("scaled", [0.0, 0.0, 0.0, 2.0]))
    tf._on_tf(_tf_msg("nan", [0.0, 0.0, math.nan, 1.0]))
    np.testing.assert_allclose(tf.lookup("map", "good", S), np.eye(4))
    for child in ("scaled", "nan"):
        with pytest.raises(TransformUnavailableError) as err:
            tf.lookup("map", child, S)
        assert err.value.reason == "unknown_frame"
    assert tf.rejected == 2 and len(node.warnings) == 2
    assert "'map' <- 'scaled'" in node.warnings[0]
