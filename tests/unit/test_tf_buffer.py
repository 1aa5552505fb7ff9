"""The fallback TF buffer: chains, interpolation, no extrapolation, reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llava3d_ros.core.geometry import make_transform
from llava3d_ros.ros.tf_buffer import TransformBuffer, TransformUnavailableError

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
