"""Referring-expression parser: targets, attributes, relations, openers, robustness."""

from __future__ import annotations

import time

import pytest

from llava3d_ros.core.referring import (
    GEOMETRIC_RELATIONS,
    PARSER_ONLY_RELATIONS,
    RELATION_PHRASES,
    NounPhrase,
    ReferringExpression,
    canonical_phrase,
    normalise_tokens,
    parse_expression,
    singular,
)
from llava3d_ros.core.spatial import RELATIONS

# A category vocabulary as a caller would pass it (eval.assets names), without importing
# llava3d_ros.eval into the core's tests.
VOCAB = (
    "macaroni and cheese",
    "mac and cheese",
    "box of butter",
    "can of soup",
    "bottle of wine",
    "cup",
    "coffee mug",
    "mug",
    "cookies",
    "cookie box",
    "orange juice",
    "ketchup bottle",
    "chest of drawers",
    "jack in the box",
    "coffee table",
)

Rel = tuple[str, tuple[str, ...]]
# expression, target text, head, attributes, superlative, plural, relations
CASES: list[tuple[str, str, str, tuple[str, ...], str | None, bool, tuple[Rel, ...]]] = [
    # articles, determiners, case, punctuation, whitespace
    ("mug", "mug", "mug", (), None, False, ()),
    ("the mug", "mug", "mug", (), None, False, ()),
    ("a mug", "mug", "mug", (), None, False, ()),
    ("an apple", "apple", "apple", (), None, False, ()),
    ("this mug", "mug", "mug", (), None, False, ()),
    ("that mug", "mug", "mug", (), None, False, ()),
    ("my mug", "mug", "mug", (), None, False, ()),
    ("some mugs", "mugs", "mugs", (), None, True, ()),
    ("any bowl", "bowl", "bowl", (), None, False, ()),
    ("The Ramekin?", "ramekin", "ramekin", (), None, False, ()),
    (
        "  THE   Mug   ON  the   TABLE!!!  ",
        "mug",
        "mug",
        (),
        None,
        False,
        (("on_top_of", ("table",)),),
    ),
    (
        "the\u00a0mug\u2003on the\u3000table",
        "mug",
        "mug",
        (),
        None,
        False,
        (("on_top_of", ("table",)),),
    ),
    ("the mug\u200b on the table.", "mug", "mug", (), None, False, (("on_top_of", ("table",)),)),
    ("«the mug»", "mug", "mug", (), None, False, ()),
    ("the the mug", "mug", "mug", (), None, False, ()),
    # attributes
    ("the red mug", "red mug", "mug", ("red",), None, False, ()),
    ("the dark green bottle", "dark green bottle", "bottle", ("dark green",), None, False, ()),
    ("the dark-green bottle", "dark-green bottle", "bottle", ("dark green",), None, False, ()),
    (
        "the black and white bowl",
        "black and white bowl",
        "bowl",
        ("black and white",),
        None,
        False,
        (),
    ),
    ("the big red mug", "big red mug", "mug", ("big", "red"), None, False, ()),
    ("the big, red mug", "big red mug", "mug", ("big", "red"), None, False, ()),
    ("the small gray bowl", "small gray bowl", "bowl", ("small", "grey"), None, False, ()),
    ("the tall bottle", "tall bottle", "bottle", ("tall",), None, False, ()),
    ("the little cup", "little cup", "cup", ("little",), None, False, ()),
    ("the light blue cup", "light blue cup", "cup", ("light blue",), None, False, ()),
    ("the red one", "red one", "one", ("red",), None, False, ()),
    ("the mug that is red", "mug", "mug", ("red",), None, False, ()),
    ("the orange", "orange", "orange", (), None, False, ()),
    ("the orange juice", "orange juice", "orange juice", (), None, False, ()),
    ("the red orange juice", "red orange juice", "orange juice", ("red",), None, False, ()),
    (
        "the green ketchup bottle",
        "green ketchup bottle",
        "ketchup bottle",
        ("green",),
        None,
        False,
        (),
    ),
    ("the red coffee mug", "red coffee mug", "coffee mug", ("red",), None, False, ()),
    # superlatives and positions
    ("the leftmost mug", "leftmost mug", "mug", (), "leftmost", False, ()),
    ("the left-most mug", "left-most mug", "mug", (), "leftmost", False, ()),
    ("the biggest bowl", "biggest bowl", "bowl", (), "biggest", False, ()),
    ("the largest red bowl", "largest red bowl", "bowl", ("red",), "biggest", False, ()),
    ("the second mug", "second mug", "mug", (), "second", False, ()),
    ("the top shelf", "top shelf", "shelf", (), "highest", False, ()),
    ("the leftmost of the mugs", "leftmost mug", "mug", (), "leftmost", False, ()),
    ("the mug on the left", "mug", "mug", (), "leftmost", False, ()),
    ("the mug to the right", "mug", "mug", (), "rightmost", False, ()),
    ("the mug in the middle", "mug", "mug", (), "middle", False, ()),
    ("the box on top", "box", "box", (), "highest", False, ()),
    ("the mug in the back", "mug", "mug", (), "farthest", False, ()),
    ("the one on the left", "one", "one", (), "leftmost", False, ()),
    ("the mug closest to me", "mug", "mug", (), "closest", False, ()),
    # every relation phrasing
    (
        "the mug on the coffee table",
        "mug",
        "mug",
        (),
        None,
        False,
        (("on_top_of", ("coffee table",)),),
    ),
    ("the mug on top of the box", "mug", "mug", (), None, False, (("on_top_of", ("box",)),)),
    ("the mug sitting on the table", "mug", "mug", (), None, False, (("on_top_of", ("table",)),)),
    (
        "the book standing on the shelf",
        "book",
        "book",
        (),
        None,
        False,
        (("on_top_of", ("shelf",)),),
    ),
    ("the bowl lying on the tray", "bowl", "bowl", (), None, False, (("on_top_of", ("tray",)),)),
    ("the mug resting on the plate", "mug", "mug", (), None, False, (("on_top_of", ("plate",)),)),
    ("the mug that is on the table", "mug", "mug", (), None, False, (("on_top_of", ("table",)),)),
    ("the mug that's on the table", "mug", "mug", (), None, False, (("on_top_of", ("table",)),)),
    ("the mug which is next to the bowl", "mug", "mug", (), None, False, (("next_to", ("bowl",)),)),
    (
        "the bowl which sits next to the pan",
        "bowl",
        "bowl",
        (),
        None,
        False,
        (("next_to", ("pan",)),),
    ),
    (
        "the mug, which is right next to the bowl",
        "mug",
        "mug",
        (),
        None,
        False,
        (("next_to", ("bowl",)),),
    ),
    ("the mug near the bowl", "mug", "mug", (), None, False, (("next_to", ("bowl",)),)),
    ("the mug close to the bowl", "mug", "mug", (), None, False, (("next_to", ("bowl",)),)),
    ("the mug by the sink", "mug", "mug", (), None, False, (("next_to", ("sink",)),)),
    ("the mug beside the bowl", "mug", "mug", (), None, False, (("next_to", ("bowl",)),)),
    ("the mug next to the bowl", "mug", "mug", (), None, False, (("next_to", ("bowl",)),)),
    ("the mug to the left of the bowl", "mug", "mug", (), None, False, (("left_of", ("bowl",)),)),
    ("the mug on the left of the bowl", "mug", "mug", (), None, False, (("left_of", ("bowl",)),)),
    ("the mug left of the bowl", "mug", "mug", (), None, False, (("left_of", ("bowl",)),)),
    ("the mug right of the bowl", "mug", "mug", (), None, False, (("right_of", ("bowl",)),)),
    ("the mug to the right of the bowl", "mug", "mug", (), None, False, (("right_of", ("bowl",)),)),
    (
        "the book in front of the lamp",
        "book",
        "book",
        (),
        None,
        False,
        (("in_front_of", ("lamp",)),),
    ),
    ("the chair behind the desk", "chair", "chair", (), None, False, (("behind", ("desk",)),)),
    ("the mug under the table", "mug", "mug", (), None, False, (("below", ("table",)),)),
    ("the mug below the shelf", "mug", "mug", (), None, False, (("below", ("shelf",)),)),
    ("the lamp above the table", "lamp", "lamp", (), None, False, (("above", ("table",)),)),
    ("the lamp over the table", "lamp", "lamp", (), None, False, (("above", ("table",)),)),
    (
        "the mug between the bowl and the pan",
        "mug",
        "mug",
        (),
        None,
        False,
        (("between", ("bowl", "pan")),),
    ),
    ("the mug between the bowls", "mug", "mug", (), None, False, (("between", ("bowls",)),)),
    (
        "the mug closest to the fridge",
        "mug",
        "mug",
        (),
        "closest",
        False,
        (("distance", ("fridge",)),),
    ),
    ("the mug nearest to the sink", "mug", "mug", (), "closest", False, (("distance", ("sink",)),)),
    ("the mug nearest the sink", "mug", "mug", (), "closest", False, (("distance", ("sink",)),)),
    (
        "the closest mug to the fridge",
        "closest mug",
        "mug",
        (),
        "closest",
        False,
        (("distance", ("fridge",)),),
    ),
    (
        "the mug farthest from the door",
        "mug",
        "mug",
        (),
        "farthest",
        False,
        (("distance", ("door",)),),
    ),
    ("the mug in the basket", "mug", "mug", (), None, False, (("inside", ("basket",)),)),
    ("the bowl with the spoon", "bowl", "bowl", (), None, False, (("with", ("spoon",)),)),
    ("the mug bigger than the cup", "mug", "mug", (), None, False, (("bigger", ("cup",)),)),
    # relative clauses, chains, negation, pronoun anchors
    (
        "the mug on the table and next to the bowl",
        "mug",
        "mug",
        (),
        None,
        False,
        (("on_top_of", ("table",)), ("next_to", ("bowl",))),
    ),
    (
        "the mug on the table next to the bowl",
        "mug",
        "mug",
        (),
        None,
        False,
        (("on_top_of", ("table",)), ("next_to", ("bowl",))),
    ),
    (
        "the mug to the right of the bowl and behind the pan",
        "mug",
        "mug",
        (),
        None,
        False,
        (("right_of", ("bowl",)), ("behind", ("pan",))),
    ),
    (
        "the mug which is red and on the table",
        "mug",
        "mug",
        ("red",),
        None,
        False,
        (("on_top_of", ("table",)),),
    ),
    ("the table with the mug on it", "table", "table", (), None, False, (("with", ("mug",)),)),
    (
        "the bowl under the mug on the leftmost shelf",
        "bowl",
        "bowl",
        (),
        None,
        False,
        (("below", ("mug",)), ("on_top_of", ("leftmost shelf",))),
    ),
    # command verbs
    ("find the mug", "mug", "mug", (), None, False, ()),
    ("Find a bowl.", "bowl", "bowl", (), None, False, ()),
    ("bring me the red mug", "red mug", "mug", ("red",), None, False, ()),
    ("pick up the bowl", "bowl", "bowl", (), None, False, ()),
    ("pick the bowl up", "bowl", "bowl", (), None, False, ()),
    ("where is the mug?", "mug", "mug", (), None, False, ()),
    ("Where's the ketchup?", "ketchup", "ketchup", (), None, False, ()),
    ("where is the mug located", "mug", "mug", (), None, False, ()),
    (
        "show me the dark green bottle",
        "dark green bottle",
        "bottle",
        ("dark green",),
        None,
        False,
        (),
    ),
    ("locate the moka pot", "moka pot", "moka pot", (), None, False, ()),
    ("go to the fridge", "fridge", "fridge", (), None, False, ()),
    ("grab the mug on the tray", "mug", "mug", (), None, False, (("on_top_of", ("tray",)),)),
    ("fetch the orange juice", "orange juice", "orange juice", (), None, False, ()),
    ("get me a cup of coffee", "cup of coffee", "cup of coffee", (), None, False, ()),
    (
        "Could you please bring me the big red mug?",
        "big red mug",
        "mug",
        ("big", "red"),
        None,
        False,
        (),
    ),
    (
        "I'm looking for the light blue cup",
        "light blue cup",
        "cup",
        ("light blue",),
        None,
        False,
        (),
    ),
    ("bring the mug to me", "mug", "mug", (), None, False, ()),
    # names containing "and" / "of" / "on"; plurals; unknown words
    (
        "the macaroni and cheese on the shelf",
        "macaroni and cheese",
        "macaroni and cheese",
        (),
        None,
        False,
        (("on_top_of", ("shelf",)),),
    ),
    (
        "the mug between the macaroni and cheese and the bowl",
        "mug",
        "mug",
        (),
        None,
        False,
        (("between", ("macaroni and cheese", "bowl")),),
    ),
    (
        "the mug between mac and cheese and the bowl",
        "mug",
        "mug",
        (),
        None,
        False,
        (("between", ("mac and cheese", "bowl")),),
    ),
    (
        "the mug between the black and white bowl and the pan",
        "mug",
        "mug",
        (),
        None,
        False,
        (("between", ("black and white bowl", "pan")),),
    ),
    (
        "the cup of coffee on the table",
        "cup of coffee",
        "cup of coffee",
        (),
        None,
        False,
        (("on_top_of", ("table",)),),
    ),
    (
        "the box of butter next to the can of soup",
        "box of butter",
        "box of butter",
        (),
        None,
        False,
        (("next_to", ("can of soup",)),),
    ),
    ("the bottle of wine", "bottle of wine", "bottle of wine", (), None, False, ()),
    ("the bottles of wine", "bottles of wine", "bottles of wine", (), None, True, ()),
    ("the box of the butter", "box of butter", "box of butter", (), None, False, ()),
    ("the chest of drawers", "chest of drawers", "chest of drawers", (), None, False, ()),
    ("the onion on the lemon", "onion", "onion", (), None, False, (("on_top_of", ("lemon",)),)),
    ("the jack in the box", "jack in the box", "jack in the box", (), None, False, ()),
    ("the mugs on the shelf", "mugs", "mugs", (), None, True, (("on_top_of", ("shelf",)),)),
    ("two mugs", "mugs", "mugs", (), None, True, ()),
    ("all of the bowls", "bowls", "bowls", (), None, True, ()),
    ("one of the mugs", "mug", "mug", (), None, False, ()),
    ("the knives", "knives", "knives", (), None, True, ()),
    ("the dishes", "dishes", "dishes", (), None, True, ()),
    ("the glass", "glass", "glass", (), None, False, ()),
    ("the scissors", "scissors", "scissors", (), None, False, ()),
    ("the cookies", "cookies", "cookies", (), None, False, ()),
    (
        "the frobnicator next to the zorp",
        "frobnicator",
        "frobnicator",
        (),
        None,
        False,
        (("next_to", ("zorp",)),),
    ),
    ("mom's mug", "mom's mug", "mom's mug", (), None, False, ()),
    ("the top of the box", "top of box", "top of box", (), None, False, ()),
    ("the biggest of the bowls", "biggest bowl", "bowl", (), "biggest", False, ()),
]


def _rels(expr: ReferringExpression) -> tuple[Rel, ...]:
    return tuple((r.name, tuple(a.text for a in r.anchors)) for r in expr.relations)


@pytest.mark.parametrize(
    ("text", "target", "head", "attributes", "superlative", "plural", "relations"), CASES
)
def test_parse_table(
    text: str,
    target: str,
    head: str,
    attributes: tuple[str, ...],
    superlative: str | None,
    plural: bool,
    relations: tuple[Rel, ...],
) -> None:
    expr = parse_expression(text, VOCAB)
    t = expr.target
    got = (t.text, t.head, t.attributes, t.superlative, t.plural, _rels(expr))
    assert got == (target, head, attributes, superlative, plural, relations)


def test_table_is_large_and_covers_every_relation() -> None:
    assert len(CASES) >= 60
    named = {name for case in CASES for name, _ in case[6]}
    assert named == (GEOMETRIC_RELATIONS - {"smaller"}) | PARSER_ONLY_RELATIONS
    # Every phrase of the table parses to its relation in a sentence.
    for phrase, name in RELATION_PHRASES.items():
        anchors = "the bowl and the pan" if name == "between" else "the bowl"
        expr = parse_expression(f"the mug {phrase} {anchors}")
        assert [r.name for r in expr.relations] == [name], phrase
        if name != "between":
            assert expr.relations[0].anchors[0].text == "bowl", phrase


def test_relation_names_are_spatial_ones_or_documented() -> None:
    assert set(RELATIONS) == GEOMETRIC_RELATIONS
    assert set(RELATION_PHRASES.values()) <= GEOMETRIC_RELATIONS | PARSER_ONLY_RELATIONS
    r = parse_expression("the mug in the basket").relations[0]
    assert not r.geometric and parse_expression("the mug on the box").relations[0].geometric


def test_canonical_phrase_is_shared_by_articles_case_and_punctuation() -> None:
    forms = ["ramekin", "the ramekin", "a ramekin", "The ramekin?", "The Ramekin?", " THE ramekin."]
    assert {canonical_phrase(f) for f in forms} == {"ramekin"}
    assert canonical_phrase("the red mug") == parse_expression("the red mug").target.text
    assert canonical_phrase("") == "" and canonical_phrase("the") == ""
    assert canonical_phrase("all of the mugs") == "mugs"


def test_known_phrases_protect_names_that_contain_rule_words() -> None:
    # "orange" is a colour and "in" a relation: without the vocabulary they would split.
    plain = parse_expression("the cat in the hat")
    assert plain.target.head == "cat" and plain.relations[0].name == "inside"
    known = parse_expression("the cat in the hat", ["cat in the hat"])
    assert known.target.head == "cat in the hat" and known.relations == ()
    assert parse_expression("the cookies").target.plural  # no vocabulary: plural form
    assert not parse_expression("the cookies", ["cookies"]).target.plural
    assert parse_expression("the mugs", ["mug", "mugs"]).target.plural


def test_negation_and_viewer_anchors() -> None:
    r = parse_expression("the mug that is not on the table").relations
    assert len(r) == 1 and r[0].negated and r[0].name == "on_top_of"
    v = parse_expression("the mug in front of me").relations[0]
    assert v.name == "in_front_of" and v.anchors[0].is_viewer
    assert parse_expression("the mug closest to the camera").relations == ()
    assert parse_expression("the mug next to it").relations == ()


def test_expression_text_keeps_the_words_without_openers() -> None:
    expr = parse_expression("Please find the red mug on the table!")
    assert expr.text == "red mug on the table"
    assert expr.anchors == (NounPhrase("table", "table"),)


@pytest.mark.parametrize("text", ["", "   ", "\u00a0\t\n", "?!.", "find the", "the", "\u200b"])
def test_empty_expressions_raise(text: str) -> None:
    with pytest.raises(ValueError, match="referring expression"):
        parse_expression(text)


def test_not_a_string_raises_type_error() -> None:
    with pytest.raises(TypeError):
        parse_expression(None)  # type: ignore[arg-type]


def test_very_long_input_is_linear_and_keeps_the_target() -> None:
    filler = " ".join(["very"] * 3000)
    text = f"the {filler} red mug on the table " + "next to the bowl " * 500
    start = time.perf_counter()
    expr = parse_expression(text, VOCAB)
    assert time.perf_counter() - start < 1.0
    assert expr.target.head.endswith("red mug") and expr.target.head.startswith("very")
    assert len(expr.relations) == 501


def test_results_are_deterministic_and_hashable() -> None:
    a = parse_expression("the red mug on the table", VOCAB)
    b = parse_expression("the red mug on the table", list(VOCAB))
    assert a == b and hash(a) == hash(b)


def test_normalise_tokens_and_singular() -> None:
    assert normalise_tokens("Where's the mug? It isn't 1.5 m away.") == [
        "where",
        "is",
        "the",
        "mug",
        "it",
        "is",
        "not",
        "1.5",
        "m",
        "away",
    ]
    assert normalise_tokens("Ｍｕｇ & bowl") == ["mug", "and", "bowl"]
    assert [singular(p) for p in ("mugs", "red boxes", "cans of soup", "knives", "glass")] == [
        "mug",
        "red box",
        "can of soup",
        "knife",
        "glass",
    ]


@pytest.mark.parametrize("with_vocabulary", [False, True])
def test_every_catalogue_name_survives_as_target_and_anchor(with_vocabulary: bool) -> None:
    from llava3d_ros.sim.assets import CATEGORIES

    names = [n for info in CATEGORIES.values() for n in info.names]
    known = names if with_vocabulary else ()
    for name in names:
        expr = parse_expression(f"the {name} on the table", known)
        assert (expr.target.text, _rels(expr)) == (name, (("on_top_of", ("table",)),)), name
        expr = parse_expression(f"find the mug next to the {name}", known)
        assert _rels(expr) == (("next_to", (name,)),), name
