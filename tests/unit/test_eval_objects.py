"""Evaluation scores added with the object layer, without ROS: grounding split by
expression kind, spatial QA split by question type with its coin-flip floor, and the
node's object instances against the scene's boxes (recall, precision, average precision
and label accuracy, computed here by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llava3d_ros.eval import metrics as M
from llava3d_ros.eval.evaluate import fill_kinds, objects_include


def _pred(center, size, score=0.5, role="object", label="thing", yaw=0.0):  # type: ignore[no-untyped-def]
    return {
        "center": list(center),
        "size": list(size),
        "yaw": yaw,
        "role": role,
        "label": label,
        "label_score": score,
    }


def _gt(lo, hi, role="object", names=("thing",), visible=True):  # type: ignore[no-untyped-def]
    return {
        "aabb_min": list(lo),
        "aabb_max": list(hi),
        "role": role,
        "names": list(names),
        "visible": visible,
    }


# Two ground-truth objects: A the unit cube, B the unit cube 3 m along x.
GT_A = _gt((0, 0, 0), (1, 1, 1), names=("mug", "cup"))
GT_B = _gt((3, 0, 0), (4, 1, 1), names=("bowl",))
# Three predictions: P1 on A (IoU 1), P2 a duplicate of A shifted 0.25 m in x (overlap
# 0.75 / union 1.25 = IoU 0.6), P3 the lower 0.4 m of B (IoU 0.4).
P1 = _pred((0.5, 0.5, 0.5), (1, 1, 1), score=0.9, label="Cup")
P2 = _pred((0.75, 0.5, 0.5), (1, 1, 1), score=0.8, label="mug")
P3 = _pred((3.5, 0.5, 0.2), (1, 1, 0.4), score=0.6, label="plate")


# ----------------------------------------------------------------------------- by kind / type


def test_grounding_by_kind_has_every_kind() -> None:
    records = [
        {"iou": 0.6, "kind": "name"},
        {"iou": 0.1, "kind": "name"},
        {"iou": 0.3, "kind": "spatial"},
        {"iou": 0.9, "kind": ""},  # unknown kind: in the total only
    ]
    by = M.grounding_by_kind(records)
    assert list(by) == ["name", "attribute", "spatial"]
    assert by["name"] == {"n": 2, "acc_at_0_25": 0.5, "acc_at_0_5": 0.5, "median_iou": 0.35}
    assert by["attribute"] == {"n": 0, "acc_at_0_25": None, "acc_at_0_5": None, "median_iou": None}
    assert by["spatial"]["n"] == 1 and by["spatial"]["acc_at_0_25"] == 1.0
    assert by["spatial"]["acc_at_0_5"] == 0.0


def test_qa_by_type_and_chance_floor() -> None:
    records = [
        {"expected": "Yes", "correct": True},
        {"expected": "No", "correct": False},
        {"expected": "the mug", "correct": True},
        {"expected": "1.20 m", "correct": False},
        {"expected": "3", "correct": True},
        {"expected": "a red mug", "correct": False},
    ]
    assert [M.qa_type(r["expected"]) for r in records] == [
        "yes_no",
        "yes_no",
        "either_or",
        "distance",
        "count",
        "other",
    ]
    by = M.qa_by_type(records)
    assert list(by) == ["yes_no", "either_or", "distance", "count", "other"]
    assert by["yes_no"] == {"n": 2, "accuracy": 0.5}
    assert by["either_or"] == {"n": 1, "accuracy": 1.0}
    assert by["distance"] == {"n": 1, "accuracy": 0.0}
    assert by["count"] == {"n": 1, "accuracy": 1.0}
    assert by["other"] == {"n": 1, "accuracy": 0.0}
    # Coin flip: 0.5 on the three two-way questions, 0 on the other three.
    assert M.chance_floor([r["expected"] for r in records]) == 0.25
    assert M.chance_floor(["Yes", "No"]) == 0.5
    assert M.chance_floor([]) is None
    assert M.qa_by_type([])["count"] == {"n": 0, "accuracy": None}


def test_summary_always_has_the_breakdowns() -> None:
    m = M.summarize([], [], {}, {})
    assert set(m["grounding"]["by_kind"]) == {"name", "attribute", "spatial"}
    assert set(m["spatial_qa"]["by_type"]) == {"yes_no", "either_or", "distance", "count", "other"}
    assert m["spatial_qa"]["chance_floor"] is None
    # No object list: every object key present, the scores None.
    assert set(m["objects"]) >= set(M.objects_summary([], [GT_A]))
    assert m["objects"]["object_ap_at_0_25"] is None and m["objects"]["n_pred_objects"] is None


# ----------------------------------------------------------------------------- instances


def test_iou_matrix_is_scanrefer_iou_of_the_yaw_box() -> None:
    ious = M.iou_matrix([P1, P2, P3], [GT_A, GT_B])
    assert ious == pytest.approx(np.array([[1.0, 0.0], [0.6, 0.0], [0.0, 0.4]]))
    # A 2 x 1 box turned 90 degrees is the 1 x 2 axis-aligned box.
    turned = _pred((0.5, 1.0, 0.5), (2, 1, 1), yaw=math.pi / 2)
    assert M.iou_matrix([turned], [_gt((0, 0, 0), (1, 2, 1))])[0, 0] == pytest.approx(1.0)


def test_recall_and_precision_by_hand() -> None:
    ious = M.iou_matrix([P1, P2, P3], [GT_A, GT_B])
    assert M.recall_at(ious, 0.25) == 1.0  # A by P1, B by P3 (0.4)
    assert M.recall_at(ious, 0.5) == 0.5  # B's best is 0.4
    # Precision counts the duplicate P2 as right: its best match reaches 0.6.
    assert M.precision_at(ious, 0.25) == 1.0
    assert M.precision_at(ious, 0.5) == pytest.approx(2 / 3, abs=1e-4)
    assert M.recall_at(ious[:0], 0.25) == 0.0  # no predictions
    assert M.precision_at(ious[:0], 0.25) is None
    assert M.recall_at(ious[:, :0], 0.25) is None  # no ground truth


def test_average_precision_by_hand() -> None:
    ious = M.iou_matrix([P1, P2, P3], [GT_A, GT_B])
    scores = [0.9, 0.8, 0.6]
    # @0.25, by score: P1 TP (A), P2 FP (A taken: a duplicate), P3 TP (B).
    # recall 0.5 0.5 1.0, precision 1 1/2 2/3; envelope 1 2/3 2/3:
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert M.average_precision(scores, ious, 0.25) == pytest.approx(5 / 6, abs=1e-4)
    # @0.5: P3 (0.4) misses too: recall tops out at 0.5 with precision 1 -> AP 0.5.
    assert M.average_precision(scores, ious, 0.5) == pytest.approx(0.5)
    # The duplicate ranked first takes A; P1 then is the false positive:
    # TP, FP, TP -> the same 5/6 (ranks, not which box, decide).
    assert M.average_precision([0.8, 0.9, 0.6], ious, 0.25) == pytest.approx(5 / 6, abs=1e-4)
    # P3 ranked first: TP(B), TP(A), FP -> recall 0.5, 1 at precision 1 -> AP 1.
    assert M.average_precision([0.8, 0.7, 0.9], ious, 0.25) == pytest.approx(1.0)
    assert M.average_precision([], ious[:0], 0.25) == 0.0
    assert M.average_precision([0.5], ious[:1, :0], 0.25) is None


def test_label_accuracy_by_hand() -> None:
    preds = [P1, P2, P3]
    ious = M.iou_matrix(preds, [GT_A, GT_B])
    # A's best instance P1 says "Cup" (a name of A, case ignored); B's best P3 (IoU 0.4)
    # says "plate", not "bowl".
    assert M.label_accuracy(preds, [GT_A, GT_B], ious) == 0.5
    assert M.label_accuracy(preds, [GT_A, GT_B], ious, k=0.5) == 1.0  # only A matched
    far = [_pred((9, 9, 9), (1, 1, 1))]
    assert M.label_accuracy(far, [GT_A], M.iou_matrix(far, [GT_A])) is None


def test_objects_summary_by_hand() -> None:
    table = _gt((5, 5, 0), (7, 6, 0.8), role="furniture", names=("table",))
    hidden = _gt((8, 8, 0), (9, 9, 1), visible=False)  # never in view: not scored
    p4 = _pred((8.5, 8.5, 0.5), (1, 1, 1), score=0.95)  # on the hidden object
    p_table = _pred((6, 5.5, 0.4), (2, 1, 0.8), role="furniture", label="table")
    preds = [P1, P2, P3, p4, p_table]
    o = M.objects_summary(
        preds, [GT_A, GT_B, table, hidden], update_time_s=0.1234567, update_count=7
    )
    assert o["n_gt_objects"] == 2 and o["n_gt_furniture"] == 1
    assert o["n_pred_objects"] == 4 and o["n_pred_furniture"] == 1
    assert o["object_recall_at_0_25"] == 1.0 and o["object_recall_at_0_5"] == 0.5
    assert o["furniture_recall_at_0_25"] == 1.0 and o["furniture_recall_at_0_5"] == 1.0
    # P4 matches nothing visible: 3 of 4 object instances are right.
    assert o["object_precision_at_0_25"] == 0.75
    # @0.25 by score: P4 FP, P1 TP, P2 FP, P3 TP: recall 0 .5 .5 1, precision 0 .5 1/3 .5;
    # envelope .5 everywhere -> AP = .5 * .5 + .5 * .5 = 0.5. @0.5: P3 misses -> 0.25.
    assert o["object_ap_at_0_25"] == pytest.approx(0.5)
    assert o["object_ap_at_0_5"] == pytest.approx(0.25)
    assert o["label_accuracy"] == 0.5
    assert o["update_time_s"] == 0.1235 and o["update_count"] == 7
    # Object layer off (no list): the same keys, the scores None.
    off = M.objects_summary(None, [GT_A, GT_B, table])
    assert set(off) == set(o)
    assert off["n_gt_objects"] == 2 and off["n_pred_objects"] is None
    assert all(off[k] is None for k in off if k.startswith(("object_", "furniture_", "label")))
    # An empty list is a list: nothing found.
    empty = M.objects_summary([], [GT_A])
    assert empty["n_pred_objects"] == 0 and empty["object_recall_at_0_25"] == 0.0
    assert empty["object_ap_at_0_25"] == 0.0 and empty["object_precision_at_0_25"] is None


# ----------------------------------------------------------------------------- evaluator


def test_object_list_includes_a_keyframe_within_a_conversion_error() -> None:
    kf = 1_700_000_012_300_000_000
    assert objects_include(kf, kf)
    assert objects_include(kf - 256, kf)  # the same float stamp, converted another way
    assert not objects_include(kf - 100_000_000, kf)  # one frame (10 Hz) older
    assert objects_include(0, 0)  # nothing integrated yet


def test_queries_without_a_kind_take_the_scene_expressions_kind() -> None:
    scene = {
        "expressions": [
            {"query": "the mug", "target": "mug_1", "kind": "name"},
            {"query": "the mug left of the bowl", "target": "mug_1", "kind": "spatial"},
        ]
    }
    ground = [
        {"query": "the mug", "target": "bowl_2"},
        {"query": "the thing"},
        {"query": "the mug left of the bowl", "kind": "attribute"},
    ]
    fill_kinds(ground, scene)
    assert [g["kind"] for g in ground] == ["name", "", "attribute"]


# ----------------------------------------------------------------------------- outputs


def test_report_summary_and_demo_table_show_the_new_numbers(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from llava3d_ros.eval.demo import print_tables
    from llava3d_ros.eval.evaluate import print_summary
    from llava3d_ros.eval.report import write_report

    def obj(i: str, role: str, lo: tuple, hi: tuple) -> dict:  # type: ignore[type-arg]
        c = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
        s = [b - a for a, b in zip(lo, hi, strict=True)]
        return {
            "id": i,
            "name": i,
            "role": role,
            "center": c,
            "size": s,
            "yaw": 0.0,
            "aabb_min": list(lo),
            "aabb_max": list(hi),
            "visible": True,
            "names": [i.split("_")[0]],
        }

    scene = {
        "spec": {"room_size": [4.0, 4.0, 2.5]},
        "generator": {"seed": 0},
        "bag": {"message_counts": {"/camera/color/image_raw": 3}, "duration_s": 0.3},
        "objects": [
            obj("mug_1", "object", (0, 0, 0.8), (0.1, 0.1, 0.9)),
            obj("table_2", "furniture", (-0.5, -0.5, 0), (0.5, 0.5, 0.8)),
        ],
    }
    instances = [
        {
            "id": 3,
            "role": "object",
            "label": "mug",
            "label_score": 0.7,
            "color": "red",
            "center": [0.05, 0.05, 0.85],
            "size": [0.1, 0.1, 0.1],
            "yaw": 0.3,
            "support_id": 4,
            "num_points": 40,
        },
        {
            "id": 4,
            "role": "furniture",
            "label": "table",
            "label_score": 0.9,
            "color": "brown",
            "center": [0, 0, 0.4],
            "size": [1, 1, 0.8],
            "yaw": 0.0,
            "support_id": 0,
            "num_points": 900,
        },
    ]
    box = {
        "center": [0.05, 0.05, 0.85],
        "size": [0.1, 0.1, 0.1],
        "yaw": 0.0,
        "score": 0.8,
        "label": "the mug",
        "num_voxels": 3,
        "instance_id": 3,
    }
    ground = [
        {
            "query": "the mug",
            "target": "mug_1",
            "kind": "name",
            "error": "NONE",
            "boxes": [box],
            "instance_id": 3,
            "instance_label": "mug",
            "iou": 1.0,
            "iou_oriented": 1.0,
            "hit_at_0_25": True,
            "hit_at_0_5": True,
            "latency_ms": 40.0,
        }
    ]
    qa = [
        {
            "question": "Is the mug on the table?",
            "expected": "Yes",
            "answer": "Yes.",
            "error": "NONE",
            "correct": True,
            "latency_ms": 60.0,
        }
    ]
    objects_m = M.objects_summary(instances, scene["objects"], 0.05, 2)
    metrics = M.summarize(
        ground,
        qa,
        {
            "frames_received": 3,
            "frames_published": 3,
            "keyframes": 3,
            "keyframes_per_s": 10.0,
            "dropped": 0,
        },
        {"voxels": 10, "peak_rss_mb": 100.0},
        None,
        objects_m,
    )
    assert metrics["objects"]["object_recall_at_0_25"] == 1.0
    png, md = write_report(tmp_path, scene, metrics, ground, qa, None, instances)
    assert png.stat().st_size > 10_000
    text = md.read_text()
    for needle in (
        "Grounding by expression kind",
        "| name | 1 | 1.000",
        "by question type",
        "| yes_no | 1 | 1.000 | 0.5 |",
        "Object instances",
        "| #3 | object | mug",
        "#3 mug",
    ):
        assert needle in text, needle
    print_summary(metrics)
    print_tables(ground, qa)
    out = capsys.readouterr().out
    assert "by kind   Acc@0.25: name 1.00 (n=1)" in out
    assert "yes_no 1.00 (n=1); chance floor 0.50" in out
    assert "recall@0.25=1.000" in out and "AP@0.25=1.000" in out
    assert "#3 mug" in out


def test_the_object_wait_is_skipped_only_when_the_node_publishes_no_objects() -> None:
    from llava3d_ros.eval.evaluate import _objects_expected

    assert _objects_expected({"use_sim_time": True})  # the node's defaults: on, every 1 s
    assert not _objects_expected({"objects": {"enabled": False}})
    assert not _objects_expected({"objects_period_s": 0.0})
    assert _objects_expected({"objects": {"enabled": True, "update_period_s": 2.0}})
