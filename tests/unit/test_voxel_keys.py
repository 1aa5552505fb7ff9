"""The one voxel key: round trips on numpy and torch, key order = coordinate order,
neighbour deltas, the range check the memory and grounding rely on."""

from __future__ import annotations

import numpy as np
import torch

from llava3d_ros.core import voxel_keys as vk


def _coords(n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(0)
    c = rng.integers(-50, 50, size=(n, 3))
    extremes = [[vk.COORD_MIN, vk.COORD_MAX, 0], [vk.COORD_MAX, vk.COORD_MIN, -1]]
    return np.concatenate([c, np.array(extremes)])


def test_round_trip_numpy_and_torch_agree() -> None:
    c = _coords()
    keys = vk.pack(c)
    assert keys.dtype == np.int64 and (keys >= 0).all()
    assert np.array_equal(vk.unpack(keys), c)
    tkeys = vk.pack(torch.from_numpy(c).int())  # any integer dtype
    assert tkeys.dtype == torch.int64
    assert np.array_equal(tkeys.numpy(), keys)
    assert np.array_equal(vk.unpack(tkeys).numpy(), c)


def test_keys_sort_like_coordinates() -> None:
    c = _coords()
    order = np.lexsort((c[:, 2], c[:, 1], c[:, 0]))
    assert np.array_equal(np.argsort(vk.pack(c), kind="stable"), order)


def test_neighbour_key_is_key_plus_delta_inside_the_range() -> None:
    c = _coords()[:-2]
    offsets = np.array([[1, 0, 0], [-1, 1, -1], [0, 0, -3], [2, -2, 2]])
    for off in offsets:
        assert np.array_equal(vk.pack(c + off), vk.pack(c) + vk.key_delta(off))


def test_range_check_with_margin() -> None:
    c = np.array([[0, 0, 0], [vk.COORD_MAX, 0, 0], [0, vk.COORD_MIN, 0], [0, 0, vk.COORD_MAX + 1]])
    assert vk.in_range(c).tolist() == [True, True, True, False]
    assert vk.in_range(c, margin=1).tolist() == [True, False, False, False]
    assert vk.in_range(torch.from_numpy(c)).tolist() == [True, True, True, False]


def test_centred_keys_round_half_up_and_clip() -> None:
    # 0.01 and 0.03 are half-voxel ties at 2 cm: both round up (rint would send 0.01 to 0
    # and 0.03 to 2, splitting a cloud sampled at half-voxel offsets).
    pts = np.array([[0.01, 0.0, 0.0], [0.03, 0.0, 0.0], [-0.01, 0.0, 0.0], [1e9, 0.0, 0.0]])
    ijk = vk.unpack(vk.centred_keys(pts, 0.02))
    assert ijk[:, 0].tolist() == [1, 2, 0, vk.COORD_MAX]
