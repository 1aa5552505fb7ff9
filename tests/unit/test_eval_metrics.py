"""Evaluation scoring without ROS: IoU as ScanRefer defines it, answer parsing in the
node's answer format, summaries, generated questions answered by a perfect memory,
referring expressions that single out their target, and the queries file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llava3d_ros.core.questions import answer_question, parse_question
from llava3d_ros.core.spatial import Box3D, Viewpoint, relation
from llava3d_ros.eval import metrics as M
from llava3d_ros.sim.expressions import (
    SceneObject,
    assign_unique_names,
    object_by_id,
    plural,
    referring_expressions,
    spatial_questions,
)

# ----------------------------------------------------------------------------- IoU


def test_scanrefer_iou_is_the_axis_aligned_box_overlap() -> None:
    gt_min, gt_max = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    same = M.box_from_pose((0.5, 0.5, 0.5), (1, 1, 1))
    assert M.iou_scanrefer(same, gt_min, gt_max) == pytest.approx(1.0)
    # Shifted by 0.25 m in x: overlap 0.75, union 1.25.
    shifted = M.box_from_pose((0.75, 0.5, 0.5), (1, 1, 1))
    assert M.iou_scanrefer(shifted, gt_min, gt_max) == pytest.approx(0.6)
    # Half as tall, inside: IoU = 0.5 exactly (the 0.5 threshold is inclusive).
    half = M.box_from_pose((0.5, 0.5, 0.25), (1, 1, 0.5))
    scores = M.score_grounding(half, Box3D.from_min_max(gt_min, gt_max), gt_min, gt_max)
    assert scores["iou"] == pytest.approx(0.5)
    assert scores["hit_at_0_25"] and scores["hit_at_0_5"]
    # Disjoint: 0.
    far = M.box_from_pose((3.0, 0.5, 0.5), (1, 1, 1))
    assert M.iou_scanrefer(far, gt_min, gt_max) == 0.0


def test_rotated_prediction_is_compared_by_its_axis_aligned_hull() -> None:
    q45 = (0.0, 0.0, math.sin(math.pi / 8), math.cos(math.pi / 8))  # yaw 45 degrees
    pred = M.box_from_pose((0.5, 0.5, 0.5), (1, 1, 1), q45)
    assert pred.yaw == pytest.approx(math.pi / 4)
    gt = Box3D.from_min_max((0, 0, 0), (1, 1, 1))
    s = M.score_grounding(pred, gt, (0, 0, 0), (1, 1, 1))
    # Hull of a unit square turned 45 deg: sqrt(2) x sqrt(2) -> IoU 1 / 2.
    assert s["iou"] == pytest.approx(0.5)
    # Exact rotated IoU: octagon 2 (sqrt 2 - 1) over 2 - octagon.
    octagon = 2 * (math.sqrt(2) - 1)
    assert s["iou_oriented"] == pytest.approx(octagon / (2 - octagon))


def test_no_prediction_is_a_miss_with_zero_iou() -> None:
    gt = Box3D.from_min_max((0, 0, 0), (1, 1, 1))
    s = M.score_grounding(None, gt, (0, 0, 0), (1, 1, 1))
    assert s == {"iou": 0.0, "iou_oriented": 0.0, "hit_at_0_25": False, "hit_at_0_5": False}


@pytest.mark.parametrize("yaw", [0.0, 0.3, -2.0, math.pi - 0.01])
def test_yaw_from_quaternion(yaw: float) -> None:
    q = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    assert M.yaw_from_quaternion(q) == pytest.approx(yaw)
    assert M.yaw_from_quaternion((0, 0, 0, 0)) == 0.0


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("expected", "answer", "ok", "correct"),
    [
        ("Yes", "Yes, the mug is left of the bowl.", True, True),
        ("No", "Yes, the mug is left of the bowl.", True, False),
        ("No", "No, the mug is not left of the bowl.", True, True),
        ("Yes", "Yes, the mug is left of the bowl.", False, False),  # error code set
        ("Yes", "", True, False),
        ("the yellow mug", "The yellow mug is bigger.", True, True),
        ("the mug", "The mug rack is bigger.", True, False),  # not a prefix match
        ("the bowl", "The yellow mug is bigger.", True, False),
        ("1.23 m", "1.30 m between their centres (0.90 m between ...).", True, True),
        ("1.23 m", "1.50 m between their centres (1.10 m at the closest).", True, False),
        ("3.00 m", "3.40 m away.", True, True),  # 15 % of 3 m = 0.45 m tolerance
        ("0.40 m", "0.60 m away.", True, False),  # 0.15 m absolute tolerance
        ("2", "2.", True, True),
        ("2", "3.", True, False),
        ("0", "0.", True, True),
        ("the table", "I could not find the table.", True, False),
    ],
)
def test_score_answer(expected: str, answer: str, ok: bool, correct: bool) -> None:
    assert M.score_answer(expected, answer, ok) is correct


def test_answer_kinds() -> None:
    assert [M.answer_kind(a) for a in ("Yes", "no.", "1.2 m", "3", "the mug", "blue")] == [
        "yes_no",
        "yes_no",
        "distance",
        "count",
        "choice",
        "text",
    ]


def test_summary_recomputes_hits_from_iou() -> None:
    ground = [
        {"iou": 0.6, "latency_ms": 10.0},
        {"iou": 0.3, "latency_ms": 20.0},
        {"iou": 0.25, "latency_ms": 30.0},
        {"iou": 0.0, "latency_ms": 40.0},
    ]
    qa = [{"correct": True, "latency_ms": 5.0}, {"correct": False, "latency_ms": 7.0}]
    m = M.summarize(ground, qa, {"frames_received": 1}, {"voxels": 2})
    overall = {k: v for k, v in m["grounding"].items() if k != "by_kind"}
    assert overall == {"n": 4, "acc_at_0_25": 0.75, "acc_at_0_5": 0.25, "median_iou": 0.275}
    assert {k: m["spatial_qa"][k] for k in ("n", "accuracy")} == {"n": 2, "accuracy": 0.5}
    assert m["latency_ms"]["ground_p50"] == 25.0
    assert m["latency_ms"]["ground_p95"] == pytest.approx(np.percentile([10, 20, 30, 40], 95))
    assert m["latency_ms"]["ask_p50"] == 6.0
    empty = M.summarize([], [], {}, {})
    assert empty["grounding"]["acc_at_0_25"] is None and empty["spatial_qa"]["accuracy"] is None
    assert empty["latency_ms"]["ground_p50"] is None


# ----------------------------------------------------------------------------- scenes


def _obj(
    oid: str, cat: str, names: tuple[str, ...], center, size, role="object", colour="white", on=None
) -> SceneObject:  # type: ignore[no-untyped-def]
    c, s = np.asarray(center, float), np.asarray(size, float)
    return SceneObject(
        id=oid,
        instance_id=int(oid.rsplit("_", 1)[1]),
        asset_id=oid,
        category=cat,
        role=role,
        names=names,
        attributes={"colour": colour},
        center=tuple(c),
        size=tuple(s),
        yaw=0.0,
        aabb_min=tuple(c - s / 2),
        aabb_max=tuple(c + s / 2),
        on=on,
        visible_frames=50,
        max_pixels=5000,
    )


@pytest.fixture
def room() -> tuple[list[SceneObject], Viewpoint]:
    """A table with two mugs (yellow left, white right), a bowl and a book; the viewer
    stands at x = -3 looking along +x, so +y is left."""
    objs = [
        _obj(
            "table_1000",
            "table",
            ("table", "work table"),
            (0, 0, 0.375),
            (1.2, 1.6, 0.75),
            "furniture",
            "brown",
        ),
        _obj(
            "cabinet_1001",
            "cabinet",
            ("cabinet",),
            (0, 3.0, 0.4),
            (0.6, 0.5, 0.8),
            "furniture",
            "brown",
        ),
        _obj(
            "mug_1",
            "mug",
            ("mug", "coffee mug", "yellow mug"),
            (0.0, 0.6, 0.8),
            (0.1, 0.1, 0.1),
            colour="yellow",
            on="table_1000",
        ),
        _obj(
            "mug_2",
            "mug",
            ("mug", "coffee mug", "white mug"),
            (0.0, -0.6, 0.8),
            (0.1, 0.1, 0.1),
            colour="white",
            on="table_1000",
        ),
        _obj(
            "bowl_3",
            "bowl",
            ("bowl", "ceramic bowl", "white bowl"),
            (0.2, 0.0, 0.79),
            (0.16, 0.16, 0.08),
            on="table_1000",
        ),
        _obj(
            "book_4",
            "book",
            ("book", "black book"),
            (0.0, 3.0, 0.95),
            (0.2, 0.28, 0.3),
            colour="black",
            on="cabinet_1001",
        ),
    ]
    assign_unique_names(objs)
    return objs, Viewpoint(np.array([-3.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]))


def test_unique_names_skip_shared_ones(room) -> None:  # type: ignore[no-untyped-def]
    objs, _ = room
    names = {o.id: o.name for o in objs}
    assert names["mug_1"] == "yellow mug" and names["mug_2"] == "white mug"
    assert names["bowl_3"] == "bowl" and names["table_1000"] == "table"
    assert object_by_id(objs, "mug_2").id == "mug_2" and object_by_id(objs, 3).id == "bowl_3"
    with pytest.raises(KeyError):
        object_by_id(objs, "sofa_9")


def test_referring_expressions_single_out_their_target(room) -> None:  # type: ignore[no-untyped-def]
    objs, vp = room
    exprs = referring_expressions(objs, vp)
    queries = {e["query"]: e for e in exprs}
    # "the mug" alone is ambiguous with two mugs: never generated.
    assert "the mug" not in queries
    assert queries["the yellow mug"]["target"] == "mug_1"
    assert all(not e["target"].startswith(("table", "cabinet")) for e in exprs)
    spatial = [e for e in exprs if e["kind"] == "spatial"]
    assert spatial
    by_id = {o.id: o for o in objs}
    for e in spatial:
        target, anchor = by_id[e["target"]], by_id[e["anchor"]]
        assert relation(e["relation"], target.box(), anchor.box(), vp).value is True
        # Every other object with the same category name fails the relation.
        for other in objs:
            if other is not target and target.names[0] in other.names:
                assert relation(e["relation"], other.box(), anchor.box(), vp).value is False
    mug_spatial = {e["query"] for e in spatial if e["target"] == "mug_1"}
    assert "the mug left of the bowl" in mug_spatial


def test_generated_questions_are_answered_correctly_by_a_perfect_memory(room) -> None:  # type: ignore[no-untyped-def]
    """The node's own answering code on exact ground-truth boxes scores 100 %; flipping
    any expected answer (a planted wrong answer) scores as wrong."""
    objs, vp = room
    qs = spatial_questions(
        objs, vp, seed=3, n_questions=40, absent_categories=[("soccer_ball", "soccer ball")]
    )
    kinds = {q["kind"] for q in qs}
    assert {"relation", "compare", "distance", "distance_to_viewer", "count"} <= kinds
    assert {q["answer"] for q in qs if q["kind"] == "relation"} == {"Yes", "No"}
    assert any(q["answer"] == "0" for q in qs)  # the absent category
    by_name: dict[str, list[Box3D]] = {}
    for o in objs:
        for n in o.names:
            by_name.setdefault(n, []).append(o.box())
    for q in qs:
        parsed = parse_question(q["question"])
        assert parsed is not None, q
        boxes = {p: by_name.get(p, []) for p in parsed.phrases}
        answer = answer_question(parsed, boxes, vp)
        assert M.score_answer(q["answer"], answer.text), (q, answer.text)
        wrong = {"Yes": "No", "No": "Yes"}.get(q["answer"])
        if wrong is not None:
            assert not M.score_answer(wrong, answer.text)


def test_questions_are_deterministic_per_seed(room) -> None:  # type: ignore[no-untyped-def]
    objs, vp = room
    assert spatial_questions(objs, vp, seed=1) == spatial_questions(objs, vp, seed=1)


def test_plural() -> None:
    assert [plural(w) for w in ("mug", "dish", "box", "ramekin", "tray", "soccer ball")] == [
        "mugs",
        "dishes",
        "boxes",
        "ramekins",
        "trays",
        "soccer balls",
    ]
    for word in ("mug", "bowl", "book", "plate", "basket"):
        assert parse_question(f"How many {plural(word)} are there?").phrases == (word,)


# ----------------------------------------------------------------------------- queries


def test_queries_file_parsing(tmp_path, room) -> None:  # type: ignore[no-untyped-def]
    from llava3d_ros.eval.evaluate import load_queries

    objs, _ = room
    scene = {"objects": [o.to_dict() for o in objs], "expressions": [], "questions": []}
    path = tmp_path / "q.yaml"
    path.write_text(
        "- {query: the yellow mug, target: mug_1}\n"
        "- {query: the bowl, target: 3}\n"
        "- question: Is the bowl on the table?\n  answer: Yes\n"  # YAML reads True
        "- question: How many mugs are there?\n  answer: 2\n"
        "- question: How far is the bowl from the book?\n  answer: 3.0\n"
    )
    ground, ask = load_queries(path, scene)
    assert [g["target"] for g in ground] == ["mug_1", "bowl_3"]
    assert [q["answer"] for q in ask] == ["Yes", "2", "3.00 m"]
    path.write_text("- {query: the sofa, target: sofa_9}\n")
    with pytest.raises(KeyError):
        load_queries(path, scene)
    path.write_text("- {text: hello}\n")
    with pytest.raises(ValueError):
        load_queries(path, scene)


def test_demo_curation_covers_every_kind(room) -> None:  # type: ignore[no-untyped-def]
    from llava3d_ros.eval.demo import curate

    objs, vp = room
    scene = {
        "expressions": referring_expressions(objs, vp),
        "questions": spatial_questions(objs, vp, seed=0, n_questions=30),
    }
    picks = curate(scene)
    ground = [p for p in picks if "query" in p]
    asks = [p for p in picks if "question" in p]
    assert 4 <= len(ground) <= 6 and 4 <= len(asks) <= 6
    assert {"Yes", "No"} <= {a["answer"] for a in asks}
    assert any(" on the " in g["query"] or " of the " in g["query"] for g in ground)


def test_only_answers_without_error_are_scored_except_a_count_of_nothing() -> None:
    assert M.answered("NONE", "Yes") and M.answered("NONE", "2")
    assert M.answered("NO_MATCH", "0")  # "How many bowls?" -> NO_MATCH, "0."
    assert not M.answered("NO_MATCH", "Yes") and not M.answered("MODEL_UNAVAILABLE", "0")


def test_dds_defaults_fill_only_what_the_user_left_unset(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from llava3d_ros.eval.evaluate import prepare_ros_environment

    for key in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        monkeypatch.delenv(key, raising=False)
    env: dict[str, str] = {}
    changed = prepare_ros_environment(env)
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith("fastdds_localhost.xml")
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == env["FASTRTPS_DEFAULT_PROFILES_FILE"]
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 201 <= int(env["ROS_DOMAIN_ID"]) <= 232 and set(changed) == set(env)
    mine = {
        "ROS_DOMAIN_ID": "7",
        "FASTDDS_DEFAULT_PROFILES_FILE": "/x.xml",
        "FASTRTPS_DEFAULT_PROFILES_FILE": "/x.xml",
        "RMW_IMPLEMENTATION": "rmw_x",
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
    }
    env = dict(mine)
    assert prepare_ros_environment(env) == {} and env == mine
