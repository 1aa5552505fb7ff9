"""Boxes, exact IoU and viewer-relative spatial relations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llava3d_ros.core.spatial import (
    RELATIONS,
    Box3D,
    Viewpoint,
    convex_polygon_intersection,
    describe_position,
    polygon_area,
    relation,
    relation_names,
)


def aabb(lo: list[float], hi: list[float], label: str = "") -> Box3D:
    return Box3D.from_min_max(lo, hi, label=label)


def scanrefer_iou(a: Box3D, b: Box3D) -> float:
    """The axis-aligned formula ScanRefer evaluates with (min/max corner overlap)."""
    amin, amax = a.center - a.size / 2, a.center + a.size / 2
    bmin, bmax = b.center - b.size / 2, b.center + b.size / 2
    inter = np.prod(np.maximum(np.minimum(amax, bmax) - np.maximum(amin, bmin), 0.0))
    return float(inter / (np.prod(a.size) + np.prod(b.size) - inter))


# --------------------------------------------------------------------------- boxes


def test_corners_volume_contains() -> None:
    b = Box3D([1.0, 2.0, 0.5], [2.0, 1.0, 1.0], yaw=math.pi / 2)
    assert b.volume == pytest.approx(2.0)
    c = b.corners()
    assert c.shape == (8, 3)
    # yaw 90 deg: the 2 m side runs along y.
    np.testing.assert_allclose(c.min(0), [0.5, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(c.max(0), [1.5, 3.0, 1.0], atol=1e-12)
    assert polygon_area(b.footprint()) == pytest.approx(2.0)  # CCW
    inside = b.contains([[1.0, 2.9, 0.5], [1.4, 2.0, 0.9], [1.6, 2.0, 0.5], [1.0, 2.0, 1.1]])
    assert inside.tolist() == [True, True, False, False]
    np.testing.assert_allclose(b.quaternion_xyzw, [0, 0, math.sqrt(0.5), math.sqrt(0.5)])


def test_box_validation() -> None:
    with pytest.raises(ValueError):
        Box3D([0, 0], [1, 1, 1])
    with pytest.raises(ValueError):
        Box3D([0, 0, 0], [1, -1, 1])
    with pytest.raises(ValueError):
        Box3D([0, 0, float("nan")], [1, 1, 1])


def test_iou_identical_disjoint_half() -> None:
    a = aabb([0, 0, 0], [1, 1, 1])
    assert a.iou(a) == pytest.approx(1.0)
    assert a.iou(aabb([2, 0, 0], [3, 1, 1])) == 0.0
    assert a.iou(aabb([1, 0, 0], [2, 1, 1])) == 0.0  # touching faces
    assert a.iou(aabb([0, 0, 1.5], [1, 1, 2])) == 0.0  # footprints equal, z apart
    # Half of each overlaps: inter 0.5, union 1.5.
    assert a.iou(aabb([0.5, 0, 0], [1.5, 1, 1])) == pytest.approx(1.0 / 3.0)
    # Contained: small / big.
    assert a.iou(aabb([0.25, 0.25, 0.25], [0.75, 0.75, 0.75])) == pytest.approx(0.125)


def test_iou_rotated_45_square_hand_computed() -> None:
    # Unit square vs itself turned 45 deg: the overlap is a regular octagon of inradius
    # 1/2, area 8 r^2 tan(pi/8) = 2 (sqrt 2 - 1); IoU = A / (2 - A) = 1 / sqrt 2.
    a = Box3D([0, 0, 0], [1, 1, 1])
    b = Box3D([0, 0, 0], [1, 1, 1], yaw=math.pi / 4)
    area = 2.0 * (math.sqrt(2.0) - 1.0)
    assert a.intersection_volume(b) == pytest.approx(area, abs=1e-12)
    assert a.iou(b) == pytest.approx(1.0 / math.sqrt(2.0), abs=1e-12)
    # Half the height overlapping: inter A/2, union 2 - A/2.
    c = Box3D([0, 0, 0.5], [1, 1, 1], yaw=math.pi / 4)
    assert a.iou(c) == pytest.approx((area / 2) / (2 - area / 2), abs=1e-12)
    # Diamond corner into a square: the 45-deg square at x = 0.5 + sqrt(2)/2 - 0.1 pokes a
    # right triangle of legs 0.1 * sqrt 2 (area 0.01) into the unit square.
    d = Box3D([0.5 + math.sqrt(0.5) - 0.1, 0, 0], [1, 1, 1], yaw=math.pi / 4)
    assert a.intersection_volume(d) == pytest.approx(0.01, abs=1e-12)


def test_axis_aligned_matches_scanrefer_formula() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        lo1, lo2 = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
        a = aabb(lo1, lo1 + rng.uniform(0.1, 1.5, 3))
        b = aabb(lo2, lo2 + rng.uniform(0.1, 1.5, 3))
        assert a.iou(b) == pytest.approx(scanrefer_iou(a, b), abs=1e-12)
        # The general polygon path agrees with the rectangle path.
        a_turned = Box3D(a.center, a.size[[1, 0, 2]], yaw=math.pi / 2)
        assert a_turned.iou(b) == pytest.approx(scanrefer_iou(a, b), abs=1e-9)


def test_rotated_iou_against_monte_carlo_and_invariance() -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1.5, 1.5, (400_000, 3))
    for _ in range(5):
        a = Box3D(rng.uniform(-0.3, 0.3, 3), rng.uniform(0.5, 1.5, 3), rng.uniform(-3, 3))
        b = Box3D(rng.uniform(-0.3, 0.3, 3), rng.uniform(0.5, 1.5, 3), rng.uniform(-3, 3))
        ia, ib = a.contains(pts), b.contains(pts)
        mc = (ia & ib).sum() / max((ia | ib).sum(), 1)
        assert a.iou(b) == pytest.approx(mc, abs=0.01)
        assert a.iou(b) == pytest.approx(b.iou(a), abs=1e-12)
        # Turning both boxes about the origin by the same angle keeps the IoU.
        t = 0.7
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

        def turn(x: Box3D, rot: np.ndarray = rot, t: float = t) -> Box3D:
            return Box3D([*(rot @ x.center[:2]), x.center[2]], x.size, x.yaw + t)

        assert turn(a).iou(turn(b)) == pytest.approx(a.iou(b), abs=1e-9)


def test_polygon_clip_edge_cases() -> None:
    sq = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    assert len(convex_polygon_intersection(sq, sq + 5)) == 0
    assert polygon_area(convex_polygon_intersection(sq, sq)) == pytest.approx(1.0)
    assert polygon_area(convex_polygon_intersection(sq, sq * 0.5 + 0.25)) == pytest.approx(0.25)
    assert Box3D([0, 0, 0], [0, 0, 0]).iou(Box3D([0, 0, 0], [0, 0, 0])) == 0.0


def test_distance_to() -> None:
    a = aabb([0, 0, 0], [1, 1, 1])
    center, gap = a.distance_to(aabb([2, 0, 0], [3, 1, 1]))
    assert center == pytest.approx(2.0) and gap == pytest.approx(1.0)
    # Diagonal in xy and z: gap = |(1, 1, 1)|.
    _, gap = a.distance_to(aabb([2, 2, 2], [3, 3, 3]))
    assert gap == pytest.approx(math.sqrt(3.0))
    assert a.distance_to(aabb([0.5, 0.5, 0.5], [2, 2, 2]))[1] == 0.0
    # A 45-deg unit square whose left vertex is 0.3 m right of the unit square.
    r = math.sqrt(0.5)
    b = Box3D([1.0 + 0.3 + r, 0.5, 0.5], [1, 1, 1], yaw=math.pi / 4)
    assert a.distance_to(b)[1] == pytest.approx(0.3, abs=1e-12)


# --------------------------------------------------------------------------- relations


@pytest.fixture
def scene() -> dict[str, Box3D]:
    return {
        "table": aabb([1.0, -0.5, 0.0], [2.0, 0.5, 0.75], "table"),
        "mug": aabb([1.4, 0.1, 0.75], [1.5, 0.2, 0.87], "mug"),
        "bowl": aabb([1.6, -0.15, 0.76], [1.8, 0.05, 0.84], "bowl"),
        "chair": aabb([2.5, -0.25, 0.0], [3.0, 0.25, 0.9], "chair"),
        "lamp": aabb([1.4, -0.1, 1.8], [1.6, 0.1, 2.0], "lamp"),
    }


VP = Viewpoint(position=[0.0, 0.0, 1.5], forward=[1.0, 0.0, -0.3])  # looks +x, pitched down
VP_FLIP = Viewpoint(position=[4.0, 0.0, 1.5], forward=[-1.0, 0.0, 0.0])  # other side


def test_viewpoint_axes() -> None:
    np.testing.assert_allclose(VP.forward, [1, 0, 0])
    np.testing.assert_allclose(VP.left, [0, 1, 0])
    np.testing.assert_allclose(VP.to_local([[2.0, 1.0, 0.5]]), [[2.0, 1.0, -1.0]])
    with pytest.raises(ValueError):
        Viewpoint([0, 0, 0], [0, 0, -1])


def test_viewpoint_from_transforms() -> None:
    # Optical frame looking along map +x: optical x = map -y, y = map -z, z = map +x.
    t = np.eye(4)
    t[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    t[:3, 3] = [1, 2, 3]
    vp = Viewpoint.from_camera_transform(t)
    np.testing.assert_allclose(vp.forward, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(vp.left, [0, 1, 0], atol=1e-12)
    # Looking straight down with image-up along map +y: forward = +y.
    down = np.eye(4)
    down[:3, :3] = np.array([[1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=float)
    np.testing.assert_allclose(Viewpoint.from_camera_transform(down).forward, [0, 1, 0], atol=1e-12)
    base = np.eye(4)
    base[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # base_link yawed +90 deg
    np.testing.assert_allclose(Viewpoint.from_transform(base).forward, [0, 1, 0], atol=1e-12)


def test_left_right_swap_with_flipped_viewpoint(scene: dict[str, Box3D]) -> None:
    mug, bowl = scene["mug"], scene["bowl"]
    r = relation("left of", mug, bowl, VP)
    assert r.value is True and r.margin > 0 and r.score > 0.5
    assert relation("right_of", mug, bowl, VP).value is False
    assert relation("left_of", mug, bowl, VP_FLIP).value is False
    assert relation("right of", mug, bowl, VP_FLIP).value is True
    # Antisymmetric: a left of b <=> b right of a, with the same margin.
    r2 = relation("right_of", bowl, mug, VP)
    assert r2.value is True and r2.margin == pytest.approx(r.margin)


def test_left_of_uses_the_viewers_bearing() -> None:
    # Near box slightly left, far box further left laterally but at a smaller bearing:
    # in the image the near box appears left of the far one.
    near = Box3D([1.0, 0.3, 0.0], [0.1, 0.1, 0.1])  # bearing atan(0.3) = 16.7 deg
    far = Box3D([5.0, 1.0, 0.0], [0.1, 0.1, 0.1])  # bearing atan(0.2) = 11.3 deg
    vp = Viewpoint([0, 0, 0], [1, 0, 0])
    assert relation("left_of", near, far, vp).value is True


def test_front_behind_flip(scene: dict[str, Box3D]) -> None:
    table, chair = scene["table"], scene["chair"]
    r = relation("in front of", table, chair, VP)
    assert r.value is True and r.score == 1.0  # depth intervals are disjoint
    assert relation("behind", chair, table, VP).value is True
    assert relation("in_front_of", table, chair, VP_FLIP).value is False
    assert relation("behind", table, chair, VP_FLIP).value is True


def test_viewer_relations_need_a_viewpoint(scene: dict[str, Box3D]) -> None:
    with pytest.raises(ValueError, match="viewpoint"):
        relation("left_of", scene["mug"], scene["bowl"])


def test_vertical_relations(scene: dict[str, Box3D]) -> None:
    mug, table, lamp, chair = scene["mug"], scene["table"], scene["lamp"], scene["chair"]
    assert relation("above", lamp, table).value is True
    assert relation("above", lamp, table).score == 1.0
    assert relation("below", table, lamp).value is True
    on = relation("on", mug, table)
    assert on.value is True and on.details["footprint_overlap"] == pytest.approx(1.0)
    assert relation("on_top_of", table, mug).value is False  # not the other way round
    assert relation("on_top_of", lamp, table).value is False  # above but not touching
    assert relation("on_top_of", mug, chair).value is False  # footprints do not overlap
    # Slight interpenetration (voxel quantisation) still counts as resting on.
    sunk = aabb([1.4, 0.1, 0.72], [1.5, 0.2, 0.85])
    assert relation("on_top_of", sunk, table).value is True


def test_next_to_between_distance_size(scene: dict[str, Box3D]) -> None:
    mug, bowl, chair, table = scene["mug"], scene["bowl"], scene["chair"], scene["table"]
    assert relation("next to", mug, bowl).value is True
    assert relation("near", chair, table).value is True  # 0.5 m apart, ~1 m objects
    assert relation("beside", mug, chair).value is False
    # The table lies between the viewer-side box and the chair.
    left = aabb([-0.5, -0.25, 0.0], [0.0, 0.25, 0.9])
    assert relation("between", table, (left, chair)).value is True
    assert relation("between", chair, (left, table)).value is False
    d = relation("distance", mug, bowl)
    assert d.value == pytest.approx(float(np.linalg.norm(mug.center - bowl.center)))
    assert d.details["surface_gap"] == pytest.approx(math.hypot(0.1, 0.05))
    assert 0 <= d.details["surface_gap"] <= d.value
    assert relation("bigger", table, mug).value is True
    assert relation("larger", table, mug).score == 1.0
    assert relation("smaller", mug, bowl).value is True
    with pytest.raises(ValueError, match="unknown relation"):
        relation("inside", mug, table)
    with pytest.raises(ValueError, match="two reference"):
        relation("between", mug, table)


def test_relation_results_are_consistent(scene: dict[str, Box3D]) -> None:
    # For every predicate: value <=> margin > 0 <=> score > 0.5, and score in [0, 1].
    boxes = list(scene.values())
    for name in relation_names():
        for a in boxes:
            for b in boxes:
                if a is b:
                    continue
                other = (b, boxes[0] if b is not boxes[0] else boxes[1])
                r = relation(name, a, other if name == "between" else b, VP)
                assert 0.0 <= r.score <= 1.0
                if isinstance(r.value, bool):
                    assert r.value == (r.margin > 0) == (r.score > 0.5), (name, r)
                    assert 0.0 <= r.confidence <= 1.0
    assert set(RELATIONS) >= {
        "left_of",
        "right_of",
        "in_front_of",
        "behind",
        "above",
        "below",
        "on_top_of",
        "next_to",
        "between",
        "distance",
        "bigger",
        "smaller",
    }


def test_describe_position(scene: dict[str, Box3D]) -> None:
    text = describe_position(scene["mug"], VP, landmarks=list(scene.values()))
    assert text.startswith("the mug is 1.5 m away, straight ahead")
    assert "on the table" in text
    flipped = describe_position(scene["bowl"], Viewpoint([1.7, 2.0, 1.5], [1, 0, 0]))
    assert "to your right" in flipped
