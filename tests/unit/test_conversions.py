"""Image conversions on real sensor_msgs/Image messages (no ROS graph needed)."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from llava3d_ros.ros.conversions import (
    ImageConversionError,
    depth_image_to_array,
    fill_image,
    image_to_rgb,
    ns_to_stamp,
    stamp_to_ns,
)

RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.zeros(RGB.shape[:2], np.uint8)])),
    ],
)
def test_colour_encodings_give_rgb(encoding: str, pixels: np.ndarray) -> None:
    msg = fill_image(Image(), pixels, encoding)
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def test_mono8_is_replicated() -> None:
    gray = RGB[..., 0]
    out = image_to_rgb(fill_image(Image(), gray, "mono8"))
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out[..., 2], gray)


def test_row_padding_is_skipped() -> None:
    msg = Image(height=5, width=7, encoding="rgb8", step=7 * 3 + 11)
    rows = np.zeros((5, 7 * 3 + 11), np.uint8)
    rows[:, : 7 * 3] = RGB.reshape(5, -1)
    msg.data = rows.tobytes()
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def test_depth_16uc1_and_32fc1_and_big_endian() -> None:
    mm = RNG.integers(0, 5000, (4, 6), dtype=np.uint16)
    np.testing.assert_array_equal(depth_image_to_array(fill_image(Image(), mm, "16UC1")), mm)
    m = RNG.random((4, 6), dtype=np.float32)
    m[0, 0] = np.nan
    np.testing.assert_array_equal(depth_image_to_array(fill_image(Image(), m, "32FC1")), m)
    be = Image(height=4, width=6, encoding="16UC1", is_bigendian=1, step=12)
    be.data = mm.astype(">u2").tobytes()
    np.testing.assert_array_equal(depth_image_to_array(be), mm)


def test_unknown_encoding_and_truncated_data_have_reasons() -> None:
    msg = fill_image(Image(), RGB, "rgb8")
    msg.encoding = "yuv422"
    with pytest.raises(ImageConversionError, match="yuv422") as err:
        image_to_rgb(msg)
    assert err.value.reason == "unknown_encoding"
    msg = fill_image(Image(), RGB, "rgb8")
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ImageConversionError, match="needs") as err:
        image_to_rgb(msg)
    assert err.value.reason == "bad_image_size"
    with pytest.raises(ImageConversionError) as err:
        depth_image_to_array(fill_image(Image(), RGB, "rgb8"))
    assert err.value.reason == "unknown_encoding"
    with pytest.raises(ImageConversionError):
        image_to_rgb(Image(height=0, width=0, encoding="rgb8", step=0))


def test_stamp_round_trip() -> None:
    ns = 1_700_000_123_456_789_012
    assert stamp_to_ns(ns_to_stamp(ns, Time())) == ns
