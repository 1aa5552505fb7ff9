"""Spatial question parsing and exact answers from boxes."""

from __future__ import annotations

import numpy as np
import pytest

from llava3d_ros.core.questions import (
    BETWEEN,
    COMPARE,
    COUNT,
    DISTANCE,
    DISTANCE_TO_VIEWER,
    RELATION,
    SIZE,
    WHERE,
    answer_question,
    parse_question,
)
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
    "question", ["What colour is the sofa?", "Describe the room.", "", "is it", "why?"]
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
