"""Answers that need the object list, not one box per phrase: "what is on the table",
"list the objects", "what colour is the mug" (Chat-3D / Chat-Scene's object-centric
dialogue, answered exactly from instances)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llava3d_ros.core.objects.instances import ObjectInstance, ObjectSnapshot
from llava3d_ros.core.questions import COLOR, LIST, WHAT_RELATION, ParsedQuestion, SpatialAnswer
from llava3d_ros.core.spatial import RELATION_PHRASES, Box3D, Viewpoint, relation

__all__ = ["answer_object_question", "describe_instance"]


def describe_instance(inst: ObjectInstance, with_colour: bool = True) -> str:
    """ "a red mug" (article, colour when known and not already in the name)."""
    name = inst.label
    if with_colour and inst.colour and inst.colour not in name.split():
        name = f"{inst.colour} {name}"
    article = "an" if name[:1] in "aeiou" else "a"
    return f"{article} {name}"


def _join(items: Sequence[str]) -> str:
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def answer_object_question(
    parsed: ParsedQuestion,
    snapshot: ObjectSnapshot,
    ground: Callable[[str], list[int]],
    viewpoint: Viewpoint | None,
    oriented: bool = False,
) -> SpatialAnswer:
    """Answer a WHAT_RELATION, LIST or COLOR question. ``ground(phrase)`` returns the
    snapshot rows matching a phrase, best first (empty: not found)."""
    instances = snapshot.instances
    boxes: list[Box3D] = [i.box if oriented else i.aabb for i in instances]
    if parsed.kind == LIST:
        things = [i for i in instances if i.role == "object" and i.has_feature]
        furniture = [i for i in instances if i.role == "furniture" and i.has_feature]
        if not things and not furniture:
            return SpatialAnswer("I have not found any objects yet.", 0, [])
        parts = []
        if things:
            parts.append(f"{len(things)} objects: " + _join([describe_instance(i) for i in things]))
        if furniture:
            names = _join([describe_instance(i, with_colour=False) for i in furniture])
            parts.append(f"furniture: {names}")
        chosen = things + furniture
        return SpatialAnswer(
            "I see " + "; ".join(parts) + ".", len(things), [_box(i, oriented) for i in chosen]
        )
    if parsed.kind == COLOR:
        phrase = parsed.phrases[0]
        rows = ground(phrase)
        if not rows:
            return SpatialAnswer(f"I could not find the {phrase}.", None, [], [phrase])
        inst = instances[rows[0]]
        return SpatialAnswer(f"The {phrase} is {inst.colour}.", inst.colour, [_box(inst, oriented)])
    if parsed.kind == WHAT_RELATION:
        assert parsed.relation is not None
        anchors: list[int] = []
        for phrase in parsed.phrases:
            rows = ground(phrase)
            if not rows:
                return SpatialAnswer(f"I could not find the {phrase}.", None, [], [phrase])
            anchors.append(rows[0])
        found = []
        for k, inst in enumerate(instances):
            if k in anchors or inst.role != "object" or not inst.has_feature:
                continue
            if _holds(parsed.relation, k, anchors, snapshot, boxes, viewpoint):
                found.append(k)
        words = RELATION_PHRASES.get(parsed.relation, parsed.relation.replace("_", " "))
        where = f"{words} the {' and the '.join(parsed.phrases)}"
        if not found:
            return SpatialAnswer(f"Nothing is {where}.", 0, [])
        # Nearest first: what a person lists first.
        ref = np.mean([boxes[a].center for a in anchors], axis=0)
        found.sort(key=lambda k: float(np.linalg.norm(boxes[k].center - ref)))
        names = _join([describe_instance(instances[k]) for k in found])
        return SpatialAnswer(
            f"{where[0].upper()}{where[1:]}: {names}.",
            len(found),
            [_box(instances[k], oriented) for k in found],
        )
    raise ValueError(f"question kind {parsed.kind!r} is not an object-layer question")


def _holds(
    name: str,
    k: int,
    anchors: list[int],
    snapshot: ObjectSnapshot,
    boxes: list[Box3D],
    viewpoint: Viewpoint | None,
) -> bool:
    inst = snapshot.instances[k]
    if name == "on_top_of" and inst.support_id == snapshot.instances[anchors[0]].id:
        return True
    try:
        ref: Box3D | tuple[Box3D, ...] = (
            boxes[anchors[0]] if len(anchors) == 1 else tuple(boxes[a] for a in anchors)
        )
        return bool(relation(name, boxes[k], ref, viewpoint).value)
    except ValueError:  # a viewer-relative relation without a viewpoint
        return False


def _box(inst: ObjectInstance, oriented: bool) -> Box3D:
    src = inst.box if oriented else inst.aabb
    return Box3D(src.center, src.size, src.yaw, inst.label, inst.label_score, len(inst.points))
