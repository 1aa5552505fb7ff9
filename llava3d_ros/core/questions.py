"""Spatial questions answered exactly from grounded 3D boxes.

``parse_question`` recognises the question forms a robot planner asks (where, is X
<relation> Y, between, how far, which is bigger/closer/higher, how big, how many) and
names the object phrases to ground; ``answer_question`` computes the answer from the
boxes with ``spatial``. Anything else is an open question for the language model.

Answers have a fixed shape so evaluators can score them: yes/no questions start with
"Yes" or "No"; "which" questions name the chosen phrase as "the <phrase>"; distances
and sizes are in metres with two decimals; counts are a number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from llava3d_ros.core.spatial import Box3D, Viewpoint, describe_position, relation

WHERE = "where"
RELATION = "relation"
BETWEEN = "between"
DISTANCE = "distance"
DISTANCE_TO_VIEWER = "distance_to_viewer"
COMPARE = "compare"
SIZE = "size"
COUNT = "count"

# Relation phrasings -> canonical relation names of ``spatial`` (longest first at use).
_RELATION_PHRASES: dict[str, str] = {
    "to the left of": "left_of",
    "left of": "left_of",
    "to the right of": "right_of",
    "right of": "right_of",
    "in front of": "in_front_of",
    "closer than": "in_front_of",
    "nearer than": "in_front_of",
    "behind": "behind",
    "in back of": "behind",
    "farther than": "behind",
    "further than": "behind",
    "farther away than": "behind",
    "above": "above",
    "over": "above",
    "higher than": "above",
    "below": "below",
    "under": "below",
    "underneath": "below",
    "beneath": "below",
    "lower than": "below",
    "on top of": "on_top_of",
    "on": "on_top_of",
    "next to": "next_to",
    "beside": "next_to",
    "near": "next_to",
    "close to": "next_to",
    "bigger than": "bigger",
    "larger than": "bigger",
    "smaller than": "smaller",
}
_RELATION_RE = "|".join(re.escape(p) for p in sorted(_RELATION_PHRASES, key=len, reverse=True))

# "which is bigger" words -> (relation that picks the first option, measure name)
_COMPARATIVES: dict[str, str] = {
    "bigger": "bigger",
    "larger": "bigger",
    "smaller": "smaller",
    "closer": "in_front_of",
    "nearer": "in_front_of",
    "farther": "behind",
    "further": "behind",
    "higher": "above",
    "lower": "below",
}

_ARTICLE = r"(?:the|a|an|this|that|my)\s+"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (WHERE, re.compile(r"^(?:where\s+(?:is|are)|where's|find|locate|show\s+me)\s+(?P<a>.+)$")),
    (
        BETWEEN,
        re.compile(r"^(?:is|are)\s+(?P<a>.+?)\s+between\s+(?P<b>.+?)\s+and\s+(?P<c>.+)$"),
    ),
    (
        RELATION,
        re.compile(rf"^(?:is|are)\s+(?P<a>.+?)\s+(?P<rel>{_RELATION_RE})\s+(?P<b>.+)$"),
    ),
    (
        DISTANCE,
        re.compile(
            r"^(?:how\s+far\s+(?:away\s+)?(?:is|are)\s+(?P<a>.+?)\s+from\s+(?P<b>.+)"
            r"|what(?:'s|\s+is)\s+the\s+distance\s+between\s+(?P<a2>.+?)\s+and\s+(?P<b2>.+))$"
        ),
    ),
    (
        DISTANCE_TO_VIEWER,
        re.compile(r"^how\s+far\s+(?:away\s+)?(?:is|are)\s+(?P<a>.+?)(?:\s+away)?$"),
    ),
    (
        COMPARE,
        re.compile(
            rf"^which\s+(?:one\s+)?is\s+(?P<cmp>{'|'.join(_COMPARATIVES)})\s*[,:]?\s*"
            r"(?P<a>.+?)\s+or\s+(?P<b>.+)$"
        ),
    ),
    (
        SIZE,
        re.compile(
            r"^(?:how\s+(?:big|large|tall|wide|high|long)\s+is\s+(?P<a>.+)"
            r"|what\s+(?:is|are)\s+the\s+(?:size|dimensions)\s+of\s+(?P<a2>.+))$"
        ),
    ),
    (COUNT, re.compile(r"^how\s+many\s+(?P<a>.+?)(?:\s+(?:are|is)\s+there.*)?$")),
]


@dataclass(frozen=True)
class ParsedQuestion:
    kind: str
    phrases: tuple[str, ...]  # object phrases to ground, in question order
    relation: str | None = None  # canonical relation for RELATION / COMPARE
    comparative: str | None = None  # the word asked for in COMPARE ("bigger")


@dataclass
class SpatialAnswer:
    text: str
    value: bool | float | int | str | None
    objects: list[Box3D] = field(default_factory=list)  # boxes the answer refers to
    missing: list[str] = field(default_factory=list)  # phrases that grounded to nothing


def _clean_phrase(text: str) -> str:
    text = text.strip().strip("?.!,;:").strip()
    text = re.sub(rf"^{_ARTICLE}", "", text)
    return " ".join(text.split())


def parse_question(question: str) -> ParsedQuestion | None:
    """The spatial form of ``question``, or None for an open question."""
    q = " ".join(question.strip().lower().split()).rstrip("?.! ")
    for kind, pattern in _PATTERNS:
        m = pattern.match(q)
        if not m:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v}
        a = groups.get("a") or groups.get("a2")
        b = groups.get("b") or groups.get("b2")
        phrases = tuple(_clean_phrase(p) for p in (a, b, groups.get("c")) if p)
        if not phrases or any(not p for p in phrases):
            continue
        if kind == COUNT:
            phrases = (_singular(phrases[0]),)
        if kind == RELATION:
            return ParsedQuestion(kind, phrases, _RELATION_PHRASES[groups["rel"]])
        if kind == COMPARE:
            cmp_word = groups["cmp"]
            return ParsedQuestion(kind, phrases, _COMPARATIVES[cmp_word], cmp_word)
        return ParsedQuestion(kind, phrases)
    return None


def _singular(phrase: str) -> str:
    if phrase.endswith("ies"):
        return phrase[:-3] + "y"
    if phrase.endswith(("ches", "shes", "xes", "sses")):
        return phrase[:-2]
    if phrase.endswith("s") and not phrase.endswith("ss"):
        return phrase[:-1]
    return phrase


def _fmt_point(p: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in p) + ")"


def answer_question(
    parsed: ParsedQuestion,
    boxes: Mapping[str, Sequence[Box3D]],
    viewpoint: Viewpoint | None,
) -> SpatialAnswer:
    """Answer from grounded boxes: ``boxes[phrase]`` lists that phrase's candidates,
    best first (only COUNT looks beyond the first)."""
    missing = [p for p in parsed.phrases if not boxes.get(p)]
    if parsed.kind == COUNT:
        found = list(boxes.get(parsed.phrases[0], ()))
        return SpatialAnswer(f"{len(found)}.", len(found), found)
    if missing:
        names = " or ".join(f"the {p}" for p in missing)
        return SpatialAnswer(f"I could not find {names}.", None, [], missing)
    top = [boxes[p][0] for p in parsed.phrases]
    kind = parsed.kind
    if kind == WHERE:
        box = top[0]
        where = f"The {parsed.phrases[0]} is at {_fmt_point(box.center)} in the map frame"
        if viewpoint is not None:
            labelled = Box3D(box.center, box.size, box.yaw, parsed.phrases[0], box.score)
            where += f"; {describe_position(labelled, viewpoint)}"
        return SpatialAnswer(where + ".", tuple(float(v) for v in box.center), [box])
    if kind == RELATION:
        assert parsed.relation is not None
        result = relation(parsed.relation, top[0], top[1], viewpoint)
        words = parsed.relation.replace("_", " ")
        yes = bool(result.value)
        text = (
            f"{'Yes' if yes else 'No'}, the {parsed.phrases[0]} is {'' if yes else 'not '}"
            f"{words} the {parsed.phrases[1]}."
        )
        return SpatialAnswer(text, yes, top)
    if kind == BETWEEN:
        result = relation("between", top[0], (top[1], top[2]), viewpoint)
        yes = bool(result.value)
        text = (
            f"{'Yes' if yes else 'No'}, the {parsed.phrases[0]} is {'' if yes else 'not '}"
            f"between the {parsed.phrases[1]} and the {parsed.phrases[2]}."
        )
        return SpatialAnswer(text, yes, top)
    if kind == DISTANCE:
        centre, gap = top[0].distance_to(top[1])
        text = (
            f"{centre:.2f} m between their centres ({max(gap, 0.0):.2f} m between the "
            f"{parsed.phrases[0]} and the {parsed.phrases[1]} at the closest)."
        )
        return SpatialAnswer(text, float(centre), top)
    if kind == DISTANCE_TO_VIEWER:
        if viewpoint is None:
            return SpatialAnswer("I do not know where you are (no viewpoint).", None, top)
        d = float(math.dist(viewpoint.position, top[0].center))
        return SpatialAnswer(f"{d:.2f} m away.", d, top)
    if kind == COMPARE:
        assert parsed.relation is not None
        first = bool(relation(parsed.relation, top[0], top[1], viewpoint).value)
        chosen = 0 if first else 1
        text = f"The {parsed.phrases[chosen]} is {parsed.comparative}."
        return SpatialAnswer(text, f"the {parsed.phrases[chosen]}", [top[chosen]])
    if kind == SIZE:
        s = top[0].size
        text = f"About {s[0]:.2f} x {s[1]:.2f} x {s[2]:.2f} m (width x depth x height)."
        return SpatialAnswer(text, float(s[2]), top)
    raise ValueError(f"unknown question kind {kind!r}")
