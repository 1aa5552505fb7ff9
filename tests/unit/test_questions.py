"""Spatial question parsing and exact answers from boxes."""

from __future__ import annotations

import numpy as np
import pytest

from llava3d_ros.core.questions import (
    BETWEEN,
    COLOR,
    COMPARE,
    COUNT,
    DISTANCE,
    DISTANCE_TO_VIEWER,
    LIST,
    OBJECT_LAYER_KINDS,
    RELATION,
    SIZE,
    WHAT_RELATION,
    WHERE,
    ParsedQuestion,
    answer_question,
    is_view_question,
    parse_question,
)
from llava3d_ros.core.referring import canonical_phrase, parse_expression
from llava3d_ros.core.spatial import Box3D, Viewpoint


@pytest.mark.parametrize(
    ("question", "kind", "phrases", "rel"),
    [
        ("Where is the ketchup?", WHERE, ("ketchup",), None),
        ("where's the red mug", WHERE, ("red mug",), None),
        ("Find a bowl.", WHERE, ("bowl",), None),
        ("Is the mug to the left of the bowl?", RELATION, ("mug", "bowl"), "left_of"),
        ("is the mug on the table", RELATION, ("mug", "table"), "on_top_of"),
        ("Is the book on top of the shelf?", RELATION, ("book", "shelf"), "on_top_of"),
        ("Are the bottles bigger than the cup?", RELATION, ("bottles", "cup"), "bigger"),
        ("Is the pan in front of the kettle?", RELATION, ("pan", "kettle"), "in_front_of"),
        ("is the mug between the bowl and the pan", BETWEEN, ("mug", "bowl", "pan"), None),
        ("How far is the mug from the bowl?", DISTANCE, ("mug", "bowl"), None),
        ("What is the distance between the mug and the bowl?", DISTANCE, ("mug", "bowl"), None),
        ("How far away is the fridge?", DISTANCE_TO_VIEWER, ("fridge",), None),
        ("Which is bigger, the mug or the bowl?", COMPARE, ("mug", "bowl"), "bigger"),
        ("which one is closer: the pan or the pot", COMPARE, ("pan", "pot"), "in_front_of"),
        ("How tall is the cabinet?", SIZE, ("cabinet",), None),
        ("How many mugs are there?", COUNT, ("mug",), None),
        ("how many boxes", COUNT, ("box",), None),
    ],
)
def test_parse(question: str, kind: str, phrases: tuple[str, ...], rel: str | None) -> None:
    parsed = parse_question(question)
    assert parsed is not None
    assert (parsed.kind, parsed.phrases, parsed.relation) == (kind, phrases, rel)


@pytest.mark.parametrize(
    "question", ["What is the sofa made of?", "Describe the room.", "", "is it", "why?"]
)
def test_open_questions_are_not_spatial(question: str) -> None:
    assert parse_question(question) is None


# A viewer at the origin looking along +x: +y is to its left.
VIEW = Viewpoint(position=np.zeros(3), forward=np.array([1.0, 0.0, 0.0]))
MUG = Box3D(center=[2.0, 0.5, 0.8], size=[0.1, 0.1, 0.12], label="mug")
BOWL = Box3D(center=[2.0, -0.5, 0.78], size=[0.2, 0.2, 0.08], label="bowl")
TABLE = Box3D(center=[2.0, 0.0, 0.37], size=[1.2, 1.6, 0.74], label="table")


def _ask(q: str, boxes: dict[str, list[Box3D]]):  # type: ignore[no-untyped-def]
    parsed = parse_question(q)
    assert parsed is not None
    return answer_question(parsed, boxes, VIEW)


def test_relation_answers_are_exact() -> None:
    boxes = {"mug": [MUG], "bowl": [BOWL], "table": [TABLE]}
    a = _ask("Is the mug left of the bowl?", boxes)
    assert a.value is True and a.text.startswith("Yes")
    b = _ask("Is the bowl left of the mug?", boxes)
    assert b.value is False and b.text.startswith("No")
    assert _ask("Is the mug on the table?", boxes).value is True
    assert _ask("Is the table on the mug?", boxes).value is False


def test_measures() -> None:
    boxes = {"mug": [MUG], "bowl": [BOWL], "table": [TABLE]}
    d = _ask("How far is the mug from the bowl?", boxes)
    assert d.value == pytest.approx(float(np.linalg.norm(MUG.center - BOWL.center)))
    assert "1.00 m" in d.text
    v = _ask("how far away is the mug", boxes)
    assert v.value == pytest.approx(float(np.linalg.norm(MUG.center)))
    c = _ask("Which is bigger, the mug or the table?", boxes)
    assert c.value == "the table" and c.objects == [TABLE]
    s = _ask("How big is the bowl?", boxes)
    assert "0.20 x 0.20 x 0.08" in s.text
    w = _ask("Where is the mug?", boxes)
    assert w.value == pytest.approx((2.0, 0.5, 0.8))
    assert "left" in w.text


def test_missing_objects_and_counts() -> None:
    a = _ask("Is the mug left of the teapot?", {"mug": [MUG], "teapot": []})
    assert a.value is None and a.missing == ["teapot"] and "teapot" in a.text
    assert _ask("How many mugs are there?", {"mug": [MUG, MUG]}).value == 2
    assert _ask("How many mugs are there?", {}).value == 0


@pytest.mark.parametrize(
    ("question", "kind", "phrases", "rel"),
    [
        ("How many mugs are there on the table?", COUNT, ("mug", "table"), "on_top_of"),
        ("how many mugs are on the table", COUNT, ("mug", "table"), "on_top_of"),
        ("how many cans of soup are next to the bowl", COUNT, ("can of soup", "bowl"), "next_to"),
        (
            "how many mugs are between the bowl and the pan",
            COUNT,
            ("mug", "bowl", "pan"),
            "between",
        ),
        ("how many mugs are there in the room", COUNT, ("mug",), None),
        ("What is on the table?", WHAT_RELATION, ("table",), "on_top_of"),
        ("what's on top of the shelf", WHAT_RELATION, ("shelf",), "on_top_of"),
        ("What is next to the bowl?", WHAT_RELATION, ("bowl",), "next_to"),
        ("which objects are left of the ramekin", WHAT_RELATION, ("ramekin",), "left_of"),
        ("what is between the mug and the bowl", WHAT_RELATION, ("mug", "bowl"), "between"),
        ("List the objects.", LIST, (), None),
        ("what objects are there?", LIST, (), None),
        ("What do you see?", LIST, (), None),
        ("What color is the mug?", COLOR, ("mug",), None),
        ("What colour is the sofa?", COLOR, ("sofa",), None),
        ("what's the colour of a ramekin", COLOR, ("ramekin",), None),
        ("Is the mug sitting on the table?", RELATION, ("mug", "table"), "on_top_of"),
        ("Is the book on the left of the shelf?", RELATION, ("book", "shelf"), "left_of"),
        ("is the mug in between the bowl and the pan", BETWEEN, ("mug", "bowl", "pan"), None),
        ("Is the onion on the lemon?", RELATION, ("onion", "lemon"), "on_top_of"),
        ("Where is the mug located?", WHERE, ("mug",), None),
    ],
)
def test_parse_new_forms(
    question: str, kind: str, phrases: tuple[str, ...], rel: str | None
) -> None:
    parsed = parse_question(question)
    assert parsed is not None
    assert (parsed.kind, parsed.phrases, parsed.relation) == (kind, phrases, rel)


@pytest.mark.parametrize(
    "question",
    [
        "how many apples are in the bowl",  # no geometric "inside": for the language model
        "Is the mug in the basket?",
        "what is in the basket",
        "how many mugs are not on the table",
        "what is the mug",
    ],
)
def test_relations_without_a_geometric_test_stay_open(question: str) -> None:
    assert parse_question(question) is None


@pytest.mark.parametrize("phrase", ["ramekin", "the ramekin", "a ramekin", "The ramekin?"])
def test_question_and_goal_phrases_are_the_same_text(phrase: str) -> None:
    goal = parse_expression(f"find {phrase}").target.text
    for q in (f"Where is {phrase}", f"How far away is {phrase}", f"What color is {phrase}"):
        parsed = parse_question(q)
        assert parsed is not None and parsed.phrases == (goal,) == (canonical_phrase(phrase),)


def test_count_with_a_relation_counts_only_where_it_holds() -> None:
    other = Box3D(center=[2.0, 3.0, 0.05], size=[0.1, 0.1, 0.12], label="mug")  # on the floor
    boxes = {"mug": [MUG, other], "table": [TABLE]}
    a = _ask("How many mugs are on the table?", boxes)
    assert a.value == 1 and a.objects == [MUG]
    assert _ask("How many mugs are there?", boxes).value == 2
    missing = _ask("How many mugs are on the table?", {"mug": [MUG], "table": []})
    assert missing.value is None and missing.missing == ["table"]
    assert _ask("How many mugs are on the table?", {"mug": [], "table": [TABLE]}).value == 0


@pytest.mark.parametrize("kind", sorted(OBJECT_LAYER_KINDS))
def test_object_layer_kinds_are_refused_not_crashed(kind: str) -> None:
    with pytest.raises(ValueError, match="object layer"):
        answer_question(ParsedQuestion(kind, ("table",)), {"table": [TABLE]}, VIEW)


@pytest.mark.parametrize(
    "question",
    [
        "What is in front of me?",
        "Is the chair in front of me?",
        "What do you see?",
        "Can you see a red mug?",
        "What am I looking at?",
        "Is there a cup in view?",
        "Describe what the camera sees.",
        "Is the mug visible?",
        "What colour is the mug in this image?",
        "What is on the table right now?",
    ],
)
def test_questions_about_the_current_view_are_recognised(question: str) -> None:
    assert is_view_question(question)


@pytest.mark.parametrize(
    "question",
    [
        "What is on the table?",
        "What colour is the mug?",
        "Is the cup left of the laptop?",
        "What is in front of the table?",
        "How far is the chair from me?",
        "How many chairs are there?",
        "Where is the viewing bench?",
    ],
)
def test_scene_questions_are_not_view_questions(question: str) -> None:
    assert not is_view_question(question)
