"""Spatial questions answered exactly from grounded 3D boxes.

``parse_question`` recognises the question forms a robot planner asks (where, is X
<relation> Y, between, how far, which is bigger/closer/higher, how big, how many, how
many X are on Y) and names the object phrases to ground; ``answer_question`` computes the
answer from the boxes with ``spatial``. Anything else is an open question for the
language model.

Every phrase is canonicalised with :func:`llava3d_ros.core.referring.canonical_phrase`
(lower case, no leading article or determiner, no punctuation), the same text a
grounding goal's target gets, so "the ramekin" in a goal and "ramekin" in a question
embed identically. Relation phrasings come from the one table in
:data:`llava3d_ros.core.referring.RELATION_PHRASES` (its boolean geometric entries).

Three kinds are parsed but not answered here, because they need per-object instances
(colour, the set of objects) rather than grounded boxes (:data:`OBJECT_LAYER_KINDS`):
``WHAT_RELATION`` ("what is on the table": objects in a relation to an anchor),
``LIST`` ("what objects are there", "what do you see") and ``COLOR`` ("what color is the
mug"). ``answer_question`` raises ``ValueError`` for them: callers must route them to
the object layer (or the language model) before calling it.

Answers have a fixed shape so evaluators can score them: yes/no questions start with
"Yes" or "No"; "which" questions name the chosen phrase as "the <phrase>"; distances
and sizes are in metres with two decimals; counts are a number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from llava3d_ros.core.referring import (
    GEOMETRIC_RELATIONS,
    RELATION_PHRASES,
    canonical_phrase,
    normalise_tokens,
    parse_expression,
    singular,
)
from llava3d_ros.core.spatial import Box3D, Viewpoint, describe_position, relation

WHERE = "where"
RELATION = "relation"
BETWEEN = "between"
DISTANCE = "distance"
DISTANCE_TO_VIEWER = "distance_to_viewer"
COMPARE = "compare"
SIZE = "size"
COUNT = "count"
WHAT_RELATION = "what_relation"  # "what is on the table": objects in a relation to anchors
LIST = "list"  # "what objects are there"
COLOR = "color"  # "what color is the mug"

#: Kinds ``answer_question`` answers from grounded boxes.
GEOMETRY_KINDS = frozenset(
    {WHERE, RELATION, BETWEEN, DISTANCE, DISTANCE_TO_VIEWER, COMPARE, SIZE, COUNT}
)
#: Kinds parsed here but answered from object instances; ``answer_question`` raises.
OBJECT_LAYER_KINDS = frozenset({WHAT_RELATION, LIST, COLOR})

# One phrase table for goals and questions (referring.RELATION_PHRASES); questions use
# the relations ``answer_question`` can decide yes/no (not distance/between, not the
# parser-only inside/with). Longest first in the alternation.
_RELATION_PHRASES: dict[str, str] = {
    p: n
    for p, n in RELATION_PHRASES.items()
    if n in GEOMETRIC_RELATIONS and n not in ("distance", "between")
}
_RELATION_RE = "|".join(re.escape(p) for p in sorted(_RELATION_PHRASES, key=len, reverse=True))
# Verbs and relative pronouns allowed before a relation ("is the mug sitting on ...").
_REL_FILLER = (
    r"(?:(?:that|which)\s+(?:is|are)\s+)?"
    r"(?:(?:sitting|standing|lying|resting|placed|located|positioned|kept|right|just|directly)"
    r"\s+)?"
)

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

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        WHERE,
        re.compile(
            r"^(?:where\s+(?:is|are)|find|locate|show\s+me)\s+(?P<a>.+?)"
            r"(?:\s+(?:located|placed|kept))?$"
        ),
    ),
    (
        BETWEEN,
        re.compile(
            rf"^(?:is|are)\s+(?P<a>.+?)\s+{_REL_FILLER}(?:in\s+)?between\s+(?P<b>.+?)"
            r"\s+and\s+(?P<c>.+)$"
        ),
    ),
    (
        RELATION,
        re.compile(
            rf"^(?:is|are)\s+(?P<a>.+?)\s+{_REL_FILLER}(?P<rel>{_RELATION_RE})\s+(?P<b>.+)$"
        ),
    ),
    (
        DISTANCE,
        re.compile(
            r"^(?:how\s+far\s+(?:away\s+)?(?:is|are)\s+(?P<a>.+?)\s+from\s+(?P<b>.+)"
            r"|what\s+is\s+the\s+distance\s+between\s+(?P<a2>.+?)\s+and\s+(?P<b2>.+))$"
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
    (COUNT, re.compile(r"^how\s+many\s+(?:of\s+)?(?P<a>.+)$")),
    (
        COLOR,
        re.compile(
            r"^(?:(?:what|which)\s+colou?rs?\s+(?:is|are)\s+(?P<a>.+)"
            r"|what\s+(?:is|are)\s+the\s+colou?rs?\s+of\s+(?P<a2>.+)"
            r"|what\s+colou?r\s+(?:does|do)\s+(?P<a3>.+?)\s+have)$"
        ),
    ),
    (
        LIST,
        re.compile(
            r"^(?:(?:list|name|enumerate|tell\s+me)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?"
            r"(?:objects|things|items)"
            r"|(?:what|which)\s+(?:objects|things|items)\s+(?:are\s+(?:there|here|around|"
            r"visible)|do\s+you\s+(?:see|know)|can\s+you\s+see)"
            r"|what\s+(?:do|can)\s+you\s+see"
            r"|what\s+is\s+(?:there|here|around)"
            r"|what\s+(?:is|are)\s+in\s+(?:the\s+|this\s+)?(?:room|scene|view|image))"
            r"(?:\s+(?:that\s+)?(?:you\s+(?:can\s+)?see|here|there|around(?:\s+you)?|now|"
            r"in\s+(?:the\s+|this\s+)?(?:room|scene|view|image)))*$"
        ),
    ),
    (
        WHAT_RELATION,
        re.compile(
            r"^(?:what|which\s+(?:objects?|things?|items?))(?:\s+(?:objects?|things?|items?))?"
            r"\s+(?:is|are)(?:\s+there)?\s+(?P<rest>.+)$"
        ),
    ),
]

# Scope words in "how many mugs are there in the room": not an anchor.
_SCOPE_WORDS = frozenset(
    ["room", "scene", "view", "image", "picture", "kitchen", "house", "office", "map", "memory"]
)
# Removed from the tail of "how many X ...": they carry no object or relation.
_COUNT_NOISE: tuple[tuple[str, ...], ...] = tuple(
    tuple(p.split())
    for p in (
        "are there",
        "is there",
        "are visible",
        "do you see",
        "can you see",
        "do you count",
        "can you find",
        "do i have",
        "do we have",
        "in total",
        "altogether",
        "total",
        "can be seen",
        "exist",
        "are present",
    )
)


@dataclass(frozen=True)
class ParsedQuestion:
    kind: str
    phrases: tuple[str, ...]  # object phrases to ground, in question order
    # canonical relation for RELATION / COMPARE / WHAT_RELATION, and COUNT with anchors
    relation: str | None = None
    comparative: str | None = None  # the word asked for in COMPARE ("bigger")


@dataclass
class SpatialAnswer:
    text: str
    value: bool | float | int | str | tuple[float, ...] | None  # a where-answer is a point
    objects: list[Box3D] = field(default_factory=list)  # boxes the answer refers to
    missing: list[str] = field(default_factory=list)  # phrases that grounded to nothing


def _without_noise(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for phrase in _COUNT_NOISE:
            if tuple(tokens[i : i + len(phrase)]) == phrase:
                i += len(phrase)
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


def _parse_count(rest: str) -> ParsedQuestion | None:
    """ "how many <rest>": the counted phrase, and an optional relation to anchors
    ("mugs are on the table", "mugs on the table", "mugs are there in the room")."""
    words = _without_noise(rest.split())
    if not words:
        return None
    try:
        expr = parse_expression(" ".join(words))
    except ValueError:
        return None
    target = singular(expr.target.text)
    relations = [
        r
        for r in expr.relations
        if not (r.name == "inside" and r.anchors[0].head.split()[-1] in _SCOPE_WORDS)
    ]
    if not relations:
        return ParsedQuestion(COUNT, (target,))
    if len(relations) > 1:
        return None
    (rel,) = relations
    # Only relations answer_question can test on boxes; not "how many apples are in the
    # bowl" (no geometric "inside"), negations or the viewer as an anchor.
    countable = rel.name in _RELATION_PHRASES.values() or (
        rel.name == "between" and len(rel.anchors) == 2
    )
    if not countable or rel.negated or any(a.is_viewer for a in rel.anchors):
        return None
    return ParsedQuestion(COUNT, (target, *(a.text for a in rel.anchors)), rel.name)


def _parse_what_relation(rest: str) -> ParsedQuestion | None:
    """ "what is <rest>": "on the table", "sitting next to the bowl", "between the mug
    and the pan" -> the anchors and the relation."""
    try:
        expr = parse_expression(f"something {rest}")
    except ValueError:
        return None
    if expr.target.text != "something" or len(expr.relations) != 1:
        return None
    (rel,) = expr.relations
    ok = rel.name in _RELATION_PHRASES.values() or (rel.name == "between" and len(rel.anchors) == 2)
    if not ok or rel.negated or any(a.is_viewer for a in rel.anchors):
        return None
    return ParsedQuestion(WHAT_RELATION, tuple(a.text for a in rel.anchors), rel.name)


def parse_question(question: str) -> ParsedQuestion | None:
    """The spatial form of ``question``, or None for an open question.

    Object phrases are canonical (:func:`~llava3d_ros.core.referring.canonical_phrase`);
    COUNT phrases are singular ("how many mugs" -> "mug"). COUNT may carry a relation
    and its anchors ("how many mugs are on the table" -> ("mug", "table"), on_top_of);
    WHAT_RELATION carries the anchors and the relation; LIST has no phrases."""
    q = " ".join(normalise_tokens(question))
    for kind, pattern in _PATTERNS:
        m = pattern.match(q)
        if not m:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v}
        if kind == LIST:
            return ParsedQuestion(LIST, ())
        if kind == COUNT:
            parsed = _parse_count(groups["a"])
            if parsed is None:
                continue
            return parsed
        if kind == WHAT_RELATION:
            parsed = _parse_what_relation(groups["rest"])
            if parsed is None:
                continue
            return parsed
        a = groups.get("a") or groups.get("a2") or groups.get("a3")
        b = groups.get("b") or groups.get("b2")
        phrases = tuple(canonical_phrase(p) for p in (a, b, groups.get("c")) if p)
        if not phrases or any(not p for p in phrases):
            continue
        if kind == RELATION:
            return ParsedQuestion(kind, phrases, _RELATION_PHRASES[groups["rel"]])
        if kind == COMPARE:
            cmp_word = groups["cmp"]
            return ParsedQuestion(kind, phrases, _COMPARATIVES[cmp_word], cmp_word)
        return ParsedQuestion(kind, phrases)
    return None


# What marks a question as being about the current camera view rather than the scene:
# the viewer as an anchor, seeing/looking, the image itself, or "now".
_VIEW_RE = re.compile(
    r"\b(?:"
    r"(?:in front of|ahead of) (?:me|you|us|the robot|the camera)"
    r"|(?:do|can|could) (?:you|i|we) see|you see|i see|we see"
    r"|looking at|facing (?:me|you|us)"
    r"|(?:in|within|into) (?:the |your |my |this )?(?:view|field of view|image|picture|"
    r"frame|photo|sight|shot)"
    r"|visible|on camera"
    r"|(?:the|this|your|my) (?:camera|image|picture|photo|view)"
    r"|right now|currently|at the moment"
    r")\b"
)


def is_view_question(question: str) -> bool:
    """Whether ``question`` asks about what the camera sees now ("what is in front of me",
    "can you see a cup", "what colour is the mug in this image"), which a 2D model answers
    from the latest keyframe, rather than about the remembered scene."""
    return _VIEW_RE.search(" ".join(normalise_tokens(question))) is not None


def _fmt_point(p: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in p) + ")"


def answer_question(
    parsed: ParsedQuestion,
    boxes: Mapping[str, Sequence[Box3D]],
    viewpoint: Viewpoint | None,
) -> SpatialAnswer:
    """Answer from grounded boxes: ``boxes[phrase]`` lists that phrase's candidates,
    best first (only COUNT looks beyond the first).

    COUNT with a relation counts the candidates for which the relation to the anchors'
    best boxes holds. Raises ``ValueError`` for :data:`OBJECT_LAYER_KINDS` (what is on,
    list, colour): they need the object instances, not boxes per phrase."""
    if parsed.kind in OBJECT_LAYER_KINDS:
        raise ValueError(
            f"question kind {parsed.kind!r} needs the object layer; answer_question "
            "answers only " + ", ".join(sorted(GEOMETRY_KINDS))
        )
    missing = [p for p in parsed.phrases if not boxes.get(p)]
    if parsed.kind == COUNT:
        found = list(boxes.get(parsed.phrases[0], ()))
        if parsed.relation is not None:
            anchor_missing = missing[1:] if missing[:1] == [parsed.phrases[0]] else missing
            if anchor_missing:
                names = " or ".join(f"the {p}" for p in anchor_missing)
                return SpatialAnswer(f"I could not find {names}.", None, [], anchor_missing)
            anchors = [boxes[p][0] for p in parsed.phrases[1:]]
            ref: Box3D | tuple[Box3D, ...] = anchors[0] if len(anchors) == 1 else tuple(anchors)
            found = [
                b
                for b in found
                if all(b is not a for a in anchors)
                and bool(relation(parsed.relation, b, ref, viewpoint).value)
            ]
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
