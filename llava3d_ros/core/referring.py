"""Rule-based parsing of referring expressions: "bring me the red mug on the table".

One parser for grounding goals and spatial questions, so that "the ramekin" in a goal and
"ramekin" in a question name the same thing. :func:`parse_expression` splits an
expression into a **target** noun phrase and zero or more **relations** to anchor noun
phrases; :func:`canonical_phrase` is the canonical text of a noun phrase (what a caller
embeds). Deterministic, no model, no network; linear in the input length.

Handled:

- Normalisation: Unicode (NFKC; control, format and any Unicode space characters are
  spaces), case, punctuation (kept: word-internal hyphens and apostrophes, decimal
  points), contractions ("where's", "isn't"), "&" -> "and".
- Command and question openers, repeatedly: "please", "can you", "find", "locate",
  "show me", "bring me", "get me", "fetch", "grab", "pick up", "go to", "where is",
  "i am looking for", ... (:data:`COMMAND_PHRASES`); trailing "please", "for me",
  "to me", "here", and "up" after "pick".
- Determiners and quantifiers at the start of every noun phrase ("the", "a", "this",
  "my", "some", "all of the", "two", ...), and articles after "of"/"and" inside one
  ("box of the butter" -> "box of butter").
- Noun phrases: leading colour words ("red", "dark green", "black and white", "navy
  blue", "reddish"), size words (big/small/large/little/tall/short/tiny/huge/...) into
  ``attributes``; superlatives and ordinals ("leftmost", "closest", "biggest", "top",
  "second", ...) into ``superlative`` in canonical form (:data:`SUPERLATIVES`); the
  rest is the ``head``, unknown words included. ``plural`` from the head noun (the word
  before "of" in "X of Y", else the last word), irregular plurals and plural-only nouns
  ("scissors") included; "all"/"both"/numbers above one also make it plural.
- Relations after the target (:data:`RELATION_PHRASES`), optionally inside a relative
  clause ("that is on", "which sits next to", "standing on", "right next to", "that is
  not on" -> ``negated``), chained with or without "and" ("the mug on the table and
  next to the bowl"); "between X and Y" (two anchors); "closest to" / "nearest (to)" /
  "farthest from" (relation ``distance`` plus superlative ``closest``/``farthest`` on
  the target, also "the closest mug to the fridge"); "closest to me" (superlative only).
- Anchor-less positions: "the mug on the left", "in the middle", "at the back",
  "on top" -> ``superlative`` (:data:`POSITION_PHRASES`); a predicate "that is red".
- ``known_phrases``: multi-word names the caller knows (a category vocabulary) are never
  split by a relation or attribute rule ("macaroni and cheese", "jack in the box",
  "orange juice" keeps "orange"); singular or plural ("bottles of wine"). A few common
  names are built in (:data:`BUILTIN_PHRASES`) so "between the macaroni and cheese and
  the bowl" works without a vocabulary. A known name that is a plural form
  ("cookies") is not flagged ``plural`` unless its singular is known too.

Relation names: the geometric ones are those of :data:`llava3d_ros.core.spatial.
RELATIONS` (:data:`GEOMETRIC_RELATIONS`: ``left_of right_of in_front_of behind above
below on_top_of next_to between distance bigger smaller``). Two more are parser-only
(:data:`PARSER_ONLY_RELATIONS`; ``spatial.relation`` raises on them, callers must handle
or skip them; ``Relation.geometric`` says which): ``inside`` ("in", "inside", "within")
and ``with`` ("with", "containing", "holding", "full of", "that has": containment,
support or a part - no single geometric test).

Not handled (documented limitations):

- Nesting: every relation attaches to the target; "the mug on the table by the window"
  gives the mug two relations, not a table-by-the-window anchor.
- Conjoined targets: "the mug and the bowl" is one target phrase "mug and bowl".
- Object-relative clauses ("the bowl that the mug is in"), "except", "other than",
  disjunctions ("in the sink or on the counter": the first anchor becomes "sink or"),
  ordinals counted from a side ("the second mug from the left": superlative "second",
  "from the left" stays in the head), positions inside an anchor ("the mug at the back
  of the shelf", "at the end of the table": kept in the head), "from" ("the mug from
  the kitchen": kept in the head).
- "with" is a decision, not geometry: "the X with the Y" gives target X and a parser-only
  ``with`` relation to Y, so the target text stays "X" (grounding "bowl" instead of
  "bowl with the spoon"); whether Y is in, on or part of X is left to the caller.
- Placement and destination commands: "put the mug on the table" parses like "the mug
  on the table" (the destination reads as a relation); "bring the mug to the kitchen"
  keeps "to the kitchen" in the head.
- Anchors that are pronouns ("the table with the mug on it": the "on it" relation is
  dropped); anchors naming the viewer ("in front of me") are kept as a noun phrase with
  ``is_viewer`` True except for "closest to me", which only sets the superlative.
- Adjectives other than colour and size (materials, states: "wooden", "empty") stay in
  the head; only one superlative is kept (the first).
- Questions: :func:`parse_expression` is for object references and commands;
  ``questions.parse_question`` handles question forms and uses this parser inside.

Empty input: :func:`parse_expression` raises :class:`ValueError` for an expression that
names nothing (empty, whitespace or punctuation only, only openers/determiners such as
"find the"); :func:`canonical_phrase` returns "" instead. Very long input is fine
(linear; 10 000 words parse in well under a second).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llava3d_ros.core.spatial import RELATIONS

__all__ = [
    "BUILTIN_PHRASES",
    "COLOUR_WORDS",
    "COMMAND_PHRASES",
    "GEOMETRIC_RELATIONS",
    "PARSER_ONLY_RELATIONS",
    "POSITION_PHRASES",
    "RELATION_PHRASES",
    "SIZE_WORDS",
    "SUPERLATIVES",
    "NounPhrase",
    "ReferringExpression",
    "Relation",
    "canonical_phrase",
    "normalise_tokens",
    "parse_expression",
    "singular",
]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(" ".join(p.split()) for p in text.split(","))


#: Relation names ``spatial.relation`` evaluates.
GEOMETRIC_RELATIONS: frozenset[str] = frozenset(RELATIONS)
#: Relation names this parser emits that ``spatial`` has no test for.
PARSER_ONLY_RELATIONS: frozenset[str] = frozenset({"inside", "with"})

# Relation phrasings -> canonical relation names; one table for goals and questions
# (``questions`` builds its regex from the geometric entries). Matched as whole tokens,
# longest first, so "on" never matches inside "onion" and "on the left of" beats "on".
RELATION_PHRASES: dict[str, str] = {
    "to the left of": "left_of",
    "on the left of": "left_of",
    "on the left side of": "left_of",
    "to the left side of": "left_of",
    "on the left hand side of": "left_of",
    "on the left-hand side of": "left_of",
    "at the left of": "left_of",
    "left of": "left_of",
    "to the right of": "right_of",
    "on the right of": "right_of",
    "on the right side of": "right_of",
    "to the right side of": "right_of",
    "on the right hand side of": "right_of",
    "on the right-hand side of": "right_of",
    "at the right of": "right_of",
    "right of": "right_of",
    "in front of": "in_front_of",
    "closer than": "in_front_of",
    "nearer than": "in_front_of",
    "behind": "behind",
    "in back of": "behind",
    "farther than": "behind",
    "further than": "behind",
    "farther away than": "behind",
    "further away than": "behind",
    "above": "above",
    "over": "above",
    "higher than": "above",
    "below": "below",
    "under": "below",
    "underneath": "below",
    "beneath": "below",
    "lower than": "below",
    "on top of": "on_top_of",
    "on the top of": "on_top_of",
    "on": "on_top_of",
    "onto": "on_top_of",
    "upon": "on_top_of",
    "atop": "on_top_of",
    "next to": "next_to",
    "beside": "next_to",
    "near": "next_to",
    "near to": "next_to",
    "close to": "next_to",
    "by": "next_to",
    "alongside": "next_to",
    "adjacent to": "next_to",
    "against": "next_to",
    "by the side of": "next_to",
    "at the side of": "next_to",
    "between": "between",
    "in between": "between",
    # Superlative relations: the target is the argmin/argmax of the distance to the
    # anchor; the parser also sets target.superlative to "closest"/"farthest".
    "closest to": "distance",
    "nearest to": "distance",
    "closest": "distance",
    "nearest": "distance",
    "farthest from": "distance",
    "furthest from": "distance",
    "farthest away from": "distance",
    "furthest away from": "distance",
    "bigger than": "bigger",
    "larger than": "bigger",
    "smaller than": "smaller",
    # Parser-only relations (no geometric test in ``spatial``).
    "in": "inside",
    "inside": "inside",
    "inside of": "inside",
    "within": "inside",
    "into": "inside",
    "with": "with",
    "containing": "with",
    "holding": "with",
    "filled with": "with",
    "full of": "with",
    "has": "with",
    "having": "with",
}

# Which superlative a "distance" phrase puts on the target.
_DISTANCE_SUPERLATIVE = {
    "closest to": "closest",
    "nearest to": "closest",
    "closest": "closest",
    "nearest": "closest",
    "to": "closest",
    "farthest from": "farthest",
    "furthest from": "farthest",
    "farthest away from": "farthest",
    "furthest away from": "farthest",
    "from": "farthest",
}

#: Anchor-less viewer-relative positions after a noun -> canonical superlative.
POSITION_PHRASES: dict[str, str] = {
    **{
        f"{p} {side}": f"{side}most"
        for side in ("left", "right")
        for p in (
            "on the",
            "to the",
            "at the",
            "on the far",
            "to the far",
            "at the far",
            "furthest",
            "farthest",
            "far",
            "most to the",
            "furthest to the",
            "farthest to the",
        )
    },
    **{f"on the {s} side": f"{s}most" for s in ("left", "right")},
    **{f"on the {s} hand side": f"{s}most" for s in ("left", "right")},
    **{f"on the {s}-hand side": f"{s}most" for s in ("left", "right")},
    "in front": "closest",
    "in the front": "closest",
    "at the front": "closest",
    "closest": "closest",
    "nearest": "closest",
    "in the back": "farthest",
    "at the back": "farthest",
    "in back": "farthest",
    "in the rear": "farthest",
    "at the rear": "farthest",
    "behind": "farthest",
    "farthest": "farthest",
    "furthest": "farthest",
    "farthest away": "farthest",
    "furthest away": "farthest",
    "on top": "highest",
    "on the top": "highest",
    "at the top": "highest",
    "up top": "highest",
    "above": "highest",
    "at the bottom": "lowest",
    "on the bottom": "lowest",
    "below": "lowest",
    "in the middle": "middle",
    "in the center": "middle",
    "in the centre": "middle",
    "in the middle one": "middle",
}

#: Superlative and ordinal words before a noun -> canonical superlative.
SUPERLATIVES: dict[str, str] = {
    "leftmost": "leftmost",
    "left-most": "leftmost",
    "left": "leftmost",
    "rightmost": "rightmost",
    "right-most": "rightmost",
    "right": "rightmost",
    "closest": "closest",
    "nearest": "closest",
    "frontmost": "closest",
    "front": "closest",
    "farthest": "farthest",
    "furthest": "farthest",
    "rearmost": "farthest",
    "back": "farthest",
    "highest": "highest",
    "topmost": "highest",
    "uppermost": "highest",
    "top": "highest",
    "upper": "highest",
    "lowest": "lowest",
    "bottommost": "lowest",
    "bottom": "lowest",
    "lower": "lowest",
    "biggest": "biggest",
    "largest": "biggest",
    "smallest": "smallest",
    "tiniest": "smallest",
    "tallest": "tallest",
    "shortest": "shortest",
    "middle": "middle",
    "center": "middle",
    "centre": "middle",
    "central": "middle",
    "first": "first",
    "second": "second",
    "third": "third",
    "fourth": "fourth",
    "last": "last",
}

# Superlative words that before "of" name a part, not a choice ("the top of the box").
_PARTS = frozenset(
    [
        "left",
        "right",
        "top",
        "bottom",
        "front",
        "back",
        "upper",
        "lower",
        "middle",
        "center",
        "centre",
        "central",
    ]
)

#: Colour words accepted as attributes (spelling variants are normalised: gray -> grey).
COLOUR_WORDS: frozenset[str] = _words(
    "red orange yellow green blue purple violet pink brown beige black white grey gray "
    "silver gold golden tan cyan teal turquoise magenta maroon navy olive cream ivory "
    "khaki lime crimson indigo lavender bronze copper "
    "reddish orangish orangey yellowish greenish bluish blueish purplish pinkish "
    "brownish greyish grayish blackish whitish"
)
# Words that modify a following colour word ("dark green", "navy blue", "hot pink").
_COLOUR_MODIFIERS = _words(
    "light dark bright pale deep pastel neon navy olive lime sky forest baby royal hot "
    "sea mint dusty dull vivid"
)
_COLOUR_SPELLING = {"gray": "grey", "grayish": "greyish", "golden": "gold"}

#: Size words accepted as attributes.
SIZE_WORDS: frozenset[str] = _words("big small large little tall short tiny huge giant mini medium")

#: Multi-word names protected from splitting even without ``known_phrases``.
BUILTIN_PHRASES: tuple[str, ...] = (
    "macaroni and cheese",
    "mac and cheese",
    "salt and pepper",
    "fish and chips",
    "peanut butter and jelly",
    "jack in the box",
    "orange juice",
    "cream cheese",
    "olive oil",
    "red wine",
    "white wine",
    "green tea",
    "black tea",
    "black pepper",
    "brown sugar",
    "white board",
    "green beans",
    "black beans",
)

#: Command and question openers stripped from the start (longest first, repeatedly).
COMMAND_PHRASES: tuple[str, ...] = _phrases(
    """
    please, kindly, hey, hi, ok, okay, robot, hey robot, now, then, can you, could you,
    would you, will you, can you please, could you please, i want you to, i need you to,
    i would like you to, i want, i need, i would like, i am looking for, looking for,
    help me find, go and, go ahead and, try to, find, find me, locate, show, show me,
    point to, point at, point out, highlight, look for, look at, search for, detect,
    segment, identify, spot, bring, bring me, get, get me, fetch, fetch me, grab, grab me,
    pick up, pick, take, hand me, give me, pass me, go to, go get, go fetch, go grab,
    move to, navigate to, walk to, drive to, head to, approach, reach for, touch,
    tell me where, where is, where are, where can i find, where do i find,
    where did you see, what is the location of, the location of, the position of,
    which one is, which is, is there, are there, do you see, can you see
    """
)
_TRAILING_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(p.split())
    for p in (
        "please",
        "for me",
        "to me",
        "to us",
        "over here",
        "here",
        "thanks",
        "thank you",
        "now",
        "right now",
        "located",
    )
)
# "... to me" is a destination unless it ends a relation ("next to me", "closest to me").
_TO_RELATION_WORDS = _words(
    "next close closer closest near nearer nearest adjacent left right side"
)

_ARTICLES = frozenset({"the", "a", "an"})
_DETERMINERS = _words(
    "the a an this that these those my your our his her their its some any all both each "
    "every several many few"
)
_NUMBERS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "couple": 2,
    "pair": 2,
}
_PLURAL_DETERMINERS = _words("these those all both several many few")
# Tokens skipped between a noun and its relation phrase ("that is", "which sits",
# "standing", "right"): a relative clause or an intensifier, never a noun.
_FILLERS = _words(
    "that which who whose is are was were be being been sits sit sitting stands stand "
    "standing lies lie lying rests rest resting placed located positioned kept stored "
    "found hanging hangs leaning leans lean put right just directly immediately also "
    "currently somewhere and but the one ones not never seems appears to"
)
_NEGATIONS = frozenset({"not", "never"})
_PREDICATE_OPENERS = _words("that which who is are was were")
_VIEWER_WORDS = _words("me you us myself yourself ourselves robot camera viewer observer")
_PRONOUNS = _words("it them this that those these him her one ones other each")

# Irregular and tricky plurals -> singular.
_IRREGULAR_SINGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "knives": "knife",
    "shelves": "shelf",
    "leaves": "leaf",
    "loaves": "loaf",
    "halves": "half",
    "wolves": "wolf",
    "scarves": "scarf",
    "lives": "life",
    "wives": "wife",
    "calves": "calf",
    "cookies": "cookie",
    "movies": "movie",
    "pies": "pie",
    "ties": "tie",
    "brownies": "brownie",
    "hoodies": "hoodie",
    "smoothies": "smoothie",
    "zombies": "zombie",
    "selfies": "selfie",
    "shoes": "shoe",
    "toes": "toe",
    "canoes": "canoe",
    "oboes": "oboe",
    "potatoes": "potato",
    "tomatoes": "tomato",
    "mangoes": "mango",
    "heroes": "hero",
    "echoes": "echo",
    "cacti": "cactus",
    "dice": "die",
}
# Nouns that end in "s" but name one thing (or only come in the plural form).
_NOT_PLURAL = _words(
    "lens news gas canvas atlas series species chaos kudos swiss christmas yes this its "
    "his hers ours always scissors pliers tongs tweezers pants jeans trousers shorts "
    "headphones earphones binoculars goggles glasses pajamas pyjamas clothes "
    "mathematics physics economics billiards"
)

_KEPT_PUNCT = "'-"
_CONTRACTIONS = {
    "n't": " not",
    "'re": " are",
    "'m": " am",
    "'ll": " will",
    "'ve": " have",
    "'d": " would",
}
_IS_AFTER = _words("where what that it there here who which how when")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class NounPhrase:
    """One noun phrase. ``text``: canonical phrase (lower case, single spaces, no leading
    determiner, no punctuation) with attributes and superlative as written; ``head``:
    ``text`` without them (the category words); ``attributes``: colour and size words in
    order ("dark green", "black and white", "big"); ``superlative``: canonical
    superlative/ordinal (:data:`SUPERLATIVES` values) or None."""

    text: str
    head: str
    attributes: tuple[str, ...] = ()
    superlative: str | None = None
    plural: bool = False

    @property
    def is_viewer(self) -> bool:
        """The phrase names the robot or the person asking ("me", "the camera")."""
        return self.text in _VIEWER_WORDS

    @property
    def singular(self) -> str:
        """``text`` with the head noun in the singular ("red mugs" -> "red mug")."""
        return singular(self.text) if self.plural else self.text


@dataclass(frozen=True)
class Relation:
    """``name``: canonical relation (:data:`GEOMETRIC_RELATIONS` or
    :data:`PARSER_ONLY_RELATIONS`); ``anchors``: one noun phrase, two for ``between``
    ("between the mugs" has one, plural); ``negated``: "that is not on the table"."""

    name: str
    anchors: tuple[NounPhrase, ...]
    negated: bool = False

    @property
    def geometric(self) -> bool:
        """Whether ``spatial.relation`` can evaluate this relation."""
        return self.name in GEOMETRIC_RELATIONS


@dataclass(frozen=True)
class ReferringExpression:
    """``target``: the object referred to; ``relations``: conditions on it, in order;
    ``text``: the canonical expression without openers ("red mug on the table")."""

    target: NounPhrase
    relations: tuple[Relation, ...]
    text: str

    @property
    def anchors(self) -> tuple[NounPhrase, ...]:
        return tuple(a for r in self.relations for a in r.anchors)


# --------------------------------------------------------------------------- normalising


def _split_contractions(token: str) -> list[str]:
    if "'" not in token:
        return [token]
    token = token.strip("'")
    for suffix, repl in _CONTRACTIONS.items():
        if token.endswith(suffix) and len(token) > len(suffix):
            stem = token[: -len(suffix)]
            stem = {"ca": "can", "wo": "will", "sha": "shall"}.get(stem, stem)
            return [stem, *repl.split()]
    if token.endswith("'s") and token[:-2] in _IS_AFTER:
        return [token[:-2], "is"]
    return [token] if token else []


def normalise_tokens(text: str) -> list[str]:
    """Lower-case word tokens of ``text``: Unicode-normalised, punctuation removed
    except word-internal hyphens/apostrophes and decimal points, contractions split."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    chars: list[str] = []
    for ch in text:
        if ch in "’‘`´ʼ":
            ch = "'"
        elif ch in "‐‑‒–—―−":
            ch = "-"
        if ch.isalnum() or ch in _KEPT_PUNCT or ch == ".":
            chars.append(ch)
        elif ch == "&":
            chars.append(" and ")
        else:
            # Spaces of every kind, control/format characters (zero-width space) and
            # punctuation all separate words.
            chars.append(" ")
    s = "".join(chars).lower()
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)  # keep "1.5", drop sentence dots
    tokens: list[str] = []
    for raw in s.split():
        tok = raw.strip("-'")
        if not tok:
            continue
        tokens.extend(t for t in _split_contractions(tok) if t.strip("-'"))
    return tokens


def _singular_word(word: str) -> str:
    if word in _IRREGULAR_SINGULAR:
        return _IRREGULAR_SINGULAR[word]
    if word in _NOT_PLURAL or len(word) < 3 or not word.endswith("s"):
        return word
    if word.endswith(("ss", "us", "is", "'s")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zzes")):
        return word[:-2]
    return word[:-1]


def _noun_index(tokens: Sequence[str]) -> int:
    """Index of the head noun: the word before the first "of" ("boxes of butter"),
    else the last word."""
    for k in range(1, len(tokens) - 1):
        if tokens[k] == "of":
            return k - 1
    return len(tokens) - 1


def singular(phrase: str) -> str:
    """``phrase`` with its head noun in the singular: "mugs" -> "mug", "red boxes" ->
    "red box", "cans of soup" -> "can of soup", "knives" -> "knife"."""
    tokens = phrase.split()
    if not tokens:
        return phrase
    k = _noun_index(tokens)
    tokens[k] = _singular_word(tokens[k])
    return " ".join(tokens)


def _strip_determiners(tokens: Sequence[str], inner: bool = True) -> tuple[list[str], bool | None]:
    """Leading determiners and quantifiers removed ("the", "all of the", "two", "one of
    the"), and with ``inner`` the articles right after "of"/"and" ("box of the butter")
    -> (tokens, number: True plural quantifier, False "one of", None no quantifier)."""
    toks = list(tokens)
    number: bool | None = None
    i = 0
    while i < len(toks):
        t = toks[i]
        if t in _DETERMINERS:
            if t in _PLURAL_DETERMINERS:
                number = True
        elif t == "of" and i > 0:  # "all of the", "one of the"
            pass
        elif (t in _NUMBERS or t.isdigit()) and i + 1 < len(toks):
            count = _NUMBERS.get(t, int(t) if t.isdigit() else 1)
            number = count > 1 if count != 1 or toks[i + 1] == "of" else number
        else:
            break
        i += 1
    rest = toks[i:]
    if not inner:
        return rest, number
    out = [
        t
        for k, t in enumerate(rest)
        if not (t in _ARTICLES and k > 0 and rest[k - 1] in ("of", "and"))
    ]
    return out, number


def canonical_phrase(text: str) -> str:
    """The canonical form of a noun phrase: lower case, single spaces, no punctuation,
    no leading determiner. "ramekin", "the ramekin", "a ramekin" and "The Ramekin?" all
    give "ramekin". Same text as :attr:`NounPhrase.text` for a phrase without relations.
    Returns "" for a phrase with no words (no exception)."""
    tokens, _ = _strip_determiners(normalise_tokens(text))
    return " ".join(tokens)


# --------------------------------------------------------------------------- vocabulary


_RELATION_TABLE = {tuple(p.split()): (p, n) for p, n in RELATION_PHRASES.items()}
_POSITION_TABLE = {tuple(p.split()): s for p, s in POSITION_PHRASES.items()}
_COMMAND_TABLE = {tuple(p.split()) for p in COMMAND_PHRASES}
_MAX_RELATION_LEN = max(len(k) for k in _RELATION_TABLE)
_MAX_POSITION_LEN = max(len(k) for k in _POSITION_TABLE)
_MAX_COMMAND_LEN = max(len(k) for k in _COMMAND_TABLE)
_MAX_FILLERS = 5


@dataclass(frozen=True)
class _Known:
    phrases: frozenset[str]  # canonical, singular and as given
    by_first: dict[str, tuple[tuple[str, ...], ...]]  # first token -> multi-word phrases


@functools.lru_cache(maxsize=16)
def _compile_known(phrases: frozenset[str]) -> _Known:
    canon: set[str] = set()
    for p in (*BUILTIN_PHRASES, *phrases):
        c = canonical_phrase(p)
        if c:
            canon.add(c)
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for c in canon:
        toks = tuple(c.split())
        if len(toks) > 1:
            by_first.setdefault(toks[0], []).append(toks)
    return _Known(frozenset(canon), {k: tuple(v) for k, v in by_first.items()})


_Span = tuple[int, int] | None


def _protected_spans(tokens: Sequence[str], known: _Known) -> list[_Span]:
    """Per token, the (start, end) of the known multi-word name it lies in, else None.
    Singular or plural forms match ("bottles of wine"); leftmost-longest, no overlaps."""
    spans: list[_Span] = [None] * len(tokens)
    i = 0
    while i < len(tokens):
        cands = (
            *known.by_first.get(tokens[i], ()),
            *known.by_first.get(_singular_word(tokens[i]), ()),
        )
        matched = 0
        for phrase in sorted(cands, key=len, reverse=True):
            n = len(phrase)
            if n < 2 or i + n > len(tokens):
                continue
            if all(
                t == p or _singular_word(t) == p
                for t, p in zip(tokens[i : i + n], phrase, strict=True)
            ):
                matched = n
                break
        if matched:
            for k in range(i, i + matched):
                spans[k] = (i, i + matched)
            i += matched
        else:
            i += 1
    return spans


# --------------------------------------------------------------------------- openers


def _strip_commands(tokens: list[str]) -> list[str]:
    picked = False
    changed = True
    while changed and tokens:
        changed = False
        for n in range(min(_MAX_COMMAND_LEN, len(tokens) - 1), 0, -1):
            head = tuple(tokens[:n])
            if head in _COMMAND_TABLE:
                picked = picked or head[0] == "pick"
                tokens = tokens[n:]
                changed = True
                break
    changed = True
    while changed and len(tokens) > 1:
        changed = False
        ends = [*_TRAILING_PHRASES, ("up",)] if picked else _TRAILING_PHRASES
        for phrase in sorted(ends, key=len, reverse=True):
            n = len(phrase)
            if phrase[0] == "to" and len(tokens) > n and tokens[-n - 1] in _TO_RELATION_WORDS:
                continue
            if len(tokens) > n and tuple(tokens[-n:]) == phrase:
                tokens = tokens[:-n]
                changed = True
                break
    return tokens


# --------------------------------------------------------------------------- clauses


@dataclass(frozen=True)
class _Clause:
    kind: str  # "relation", "position" or "predicate"
    start: int  # first token (fillers included)
    end: int  # first token after the phrase (the anchor starts here)
    value: str  # relation name / superlative / "" for predicates
    phrase: str = ""  # the relation phrase as matched
    negated: bool = False
    attributes: tuple[str, ...] = ()


def _free(spans: Sequence[_Span], lo: int, hi: int) -> bool:
    """No protected phrase overlaps tokens[lo:hi]."""
    return all(spans[k] is None for k in range(lo, hi))


def _colour_at(tokens: Sequence[str], i: int, limit: int) -> tuple[str, int] | None:
    """A colour expression starting at ``i`` and ending before ``limit``:
    -> (attribute text, end index)."""

    def word(k: int) -> str | None:
        if k >= limit:
            return None
        t = tokens[k]
        if t in COLOUR_WORDS:
            return _COLOUR_SPELLING.get(t, t)
        parts = t.split("-")
        if (
            len(parts) > 1
            and parts[-1] in COLOUR_WORDS
            and all(p in COLOUR_WORDS or p in _COLOUR_MODIFIERS for p in parts)
        ):
            # "dark-green" -> "dark green"; "blue-green" stays hyphenated.
            sep = " " if parts[0] in _COLOUR_MODIFIERS and parts[0] not in COLOUR_WORDS else "-"
            return sep.join(_COLOUR_SPELLING.get(p, p) for p in parts)
        return None

    def single(k: int) -> tuple[str, int] | None:
        if k + 1 < limit and tokens[k] in _COLOUR_MODIFIERS:
            w = word(k + 1)
            if w is not None:
                return f"{tokens[k]} {w}", k + 2
        w = word(k)
        return (w, k + 1) if w is not None else None

    first = single(i)
    if first is None:
        return None
    text, end = first
    # "black and white", "red-and-blue" style combinations.
    while end + 1 < limit and tokens[end] in ("and", "or"):
        nxt = single(end + 1)
        if nxt is None:
            break
        text, end = f"{text} {tokens[end]} {nxt[0]}", nxt[1]
    return text, end


def _attribute_at(tokens: Sequence[str], i: int, limit: int) -> tuple[str, int] | None:
    t = tokens[i]
    if t in SIZE_WORDS:
        return t, i + 1
    if t.endswith("-sized") and t[:-6] in SIZE_WORDS:
        return t[:-6], i + 1
    return _colour_at(tokens, i, limit)


def _predicate_at(tokens: Sequence[str], j: int, n: int) -> tuple[tuple[str, ...], int] | None:
    """Colour/size words from ``j`` up to the end or "and"/"but" + more: "that is red"."""
    attrs: list[str] = []
    k = j
    while k < n:
        got = _attribute_at(tokens, k, n)
        if got is None:
            break
        attrs.append(got[0])
        k = got[1]
        if k < n and tokens[k] == "and" and k + 1 < n and _attribute_at(tokens, k + 1, n):
            k += 1
    return (tuple(attrs), k) if attrs else None


def _clause_at(
    tokens: Sequence[str],
    i: int,
    spans: Sequence[_Span],
    distance_ok: bool,
    validate: bool = True,
) -> _Clause | None:
    """A clause (relation, position or predicate) starting at token ``i``, possibly after
    relative-clause fillers; the shortest filler run that leads to a match wins."""
    n = len(tokens)
    for skip in range(_MAX_FILLERS + 1):
        j = i + skip
        if skip and (tokens[j - 1] not in _FILLERS or spans[j - 1] is not None):
            break
        if j >= n:
            break
        skipped = tokens[i:j]
        negated = any(t in _NEGATIONS for t in skipped)
        best: _Clause | None = None
        # Relations: longest phrase first; need an anchor after them.
        for m in range(min(_MAX_RELATION_LEN, n - j), 0, -1):
            hit = _RELATION_TABLE.get(tuple(tokens[j : j + m]))
            if hit and j + m < n and _free(spans, j, j + m):
                best = _Clause("relation", i, j + m, hit[1], hit[0], negated)
                break
        if best is None and distance_ok and tokens[j] in ("to", "from") and j + 1 < n:
            best = _Clause("relation", i, j + 1, "distance", tokens[j], negated)
        # Positions: only at the end or right before another clause.
        for m in range(min(_MAX_POSITION_LEN, n - j), 0, -1):
            sup = _POSITION_TABLE.get(tuple(tokens[j : j + m]))
            if sup is None or not _free(spans, j, j + m):
                continue
            if best is not None and best.end - j > m:
                break  # a longer relation phrase wins ("on the left of")
            end = j + m
            if end == n or (
                validate and _clause_at(tokens, end, spans, False, validate=False) is not None
            ):
                best = _Clause("position", i, end, sup, negated=negated)
                break
        if best is not None:
            return best
        if skip and any(t in _PREDICATE_OPENERS for t in skipped):
            pred = _predicate_at(tokens, j, n)
            if pred is not None:
                attrs, end = pred
                if end == n or (validate and _clause_at(tokens, end, spans, False, validate=False)):
                    return _Clause("predicate", i, end, "", negated=negated, attributes=attrs)
    return None


# --------------------------------------------------------------------------- phrases


def _is_plural(head: Sequence[str], known: _Known) -> bool:
    k = _noun_index(head)
    word = head[k]
    sing = _singular_word(word)
    if sing == word:
        return False
    text = " ".join(head)
    if text in known.phrases:
        # A known name in plural form ("cookies") names one object unless its
        # singular is known as well ("mugs" with "mug" known is plural).
        return singular(text) in known.phrases
    return True


def _noun_phrase(tokens: Sequence[str], known: _Known) -> NounPhrase | None:
    """The noun phrase of ``tokens`` (one segment), or None if it is only determiners."""
    body, number = _strip_determiners(tokens)
    if len(body) > 2 and body[1] == "of" and body[0] in SUPERLATIVES and body[0] not in _PARTS:
        # "the leftmost of the mugs": one object, "leftmost mug".
        body = [body[0], *_strip_determiners(body[2:])[0]]
        number = False
    if not body:
        return None
    if number is False:
        body = singular(" ".join(body)).split()  # "one of the mugs" -> "mug"
    spans = _protected_spans(body, known)
    n = len(body)
    attributes: list[str] = []
    superlative: str | None = None
    i = 0
    while i < n - 1:  # the head keeps at least one word
        span = spans[i]
        if span is not None and (
            i != span[0] or " ".join(body[i + 1 : span[1]]) not in known.phrases
        ):
            break  # inside a protected name: "orange juice" keeps its "orange"
        t = body[i]
        if body[i + 1] == "of":
            break  # "top of the box": a part, the whole phrase is the head
        if t in SUPERLATIVES:
            superlative = superlative or SUPERLATIVES[t]
            i += 1
            continue
        got = _attribute_at(body, i, n - 1)
        if got is None or (span is not None and got[1] > i + 1):
            break
        attributes.append(got[0])
        i = got[1]
        if i < n - 1 and body[i] == "and" and _attribute_at(body, i + 1, n - 1):
            i += 1  # "big and red mug"
    head = body[i:]
    plural = _is_plural(head, known) if number is None else number
    return NounPhrase(" ".join(body), " ".join(head), tuple(attributes), superlative, plural)


def _split_between(
    tokens: Sequence[str], known: _Known
) -> tuple[Sequence[str], Sequence[str]] | None:
    """Split "the bowl and the pan" at the "and" that separates two anchors: not inside a
    protected name, preferring one followed by a determiner, never between two colour
    words ("black and white"); the first such "and" otherwise."""
    spans = _protected_spans(tokens, known)
    cands = [
        k
        for k in range(1, len(tokens) - 1)
        if tokens[k] == "and"
        and spans[k] is None
        and not (tokens[k - 1] in COLOUR_WORDS and tokens[k + 1] in COLOUR_WORDS)
        and any(t not in _DETERMINERS for t in tokens[:k])
    ]
    if not cands:
        return None
    det = [k for k in cands if tokens[k + 1] in _DETERMINERS]
    k = (det or cands)[0]
    return tokens[:k], tokens[k + 1 :]


# --------------------------------------------------------------------------- parsing


def parse_expression(text: str, known_phrases: Iterable[str] = ()) -> ReferringExpression:
    """Parse a referring expression or object command into target and relations.

    ``known_phrases``: names (e.g. a category vocabulary) never split by the rules; pass
    the same list every call for the cache to work. Raises :class:`ValueError` when the
    expression names nothing (empty, punctuation only, only openers/determiners)."""
    known = _compile_known(frozenset(known_phrases))
    tokens = _strip_commands(normalise_tokens(text))
    return _parse_tokens(tokens, known, text)


def _parse_tokens(tokens: list[str], known: _Known, original: str = "") -> ReferringExpression:
    if not any(t not in _DETERMINERS for t in tokens):
        raise ValueError(f"empty referring expression: {original[:80]!r}")
    spans = _protected_spans(tokens, known)
    n = len(tokens)

    # Segment: target tokens, then clauses each followed by its anchor tokens.
    segments: list[tuple[_Clause | None, int, int]] = []
    clause: _Clause | None = None
    seg_start = 0
    content = False  # the current segment has a non-determiner word
    distance_ok = False  # "the closest mug to the fridge"
    i = 0
    while i < n:
        if content and (clause is None or clause.kind == "relation"):
            m = _clause_at(tokens, i, spans, distance_ok and clause is None)
        elif clause is not None and clause.kind != "relation":
            m = _clause_at(tokens, i, spans, False)  # words after a position are dropped
        else:
            m = None
        if m is not None:
            segments.append((clause, seg_start, i))
            clause, seg_start, content = m, m.end, False
            i = m.end
            continue
        t = tokens[i]
        if t not in _DETERMINERS:
            content = True
        if clause is None and SUPERLATIVES.get(t) in ("closest", "farthest"):
            distance_ok = True
        i += 1
    segments.append((clause, seg_start, n))

    _, t0, t1 = segments[0]
    target = _noun_phrase(tokens[t0:t1], known)
    if target is None:
        raise ValueError(f"referring expression names no object: {original[:80]!r}")
    superlative = target.superlative
    attributes = list(target.attributes)
    relations: list[Relation] = []
    for c, s, e in segments[1:]:
        assert c is not None
        if c.kind == "position":
            superlative = superlative or c.value
            continue
        if c.kind == "predicate":
            if not c.negated:
                attributes.extend(a for a in c.attributes if a not in attributes)
            continue
        pieces: Sequence[Sequence[str]] = [tokens[s:e]]
        if c.value == "between":
            pieces = _split_between(tokens[s:e], known) or pieces
        anchors = [a for a in (_noun_phrase(p, known) for p in pieces) if a is not None]
        if not anchors or any(a.text in _PRONOUNS for a in anchors):
            continue  # "the table with the mug on it": nothing to ground for "it"
        if c.value == "distance":
            superlative = superlative or _DISTANCE_SUPERLATIVE.get(c.phrase, "closest")
            if anchors[0].is_viewer:
                continue  # "closest to me": a viewer-relative superlative
        relations.append(Relation(c.value, tuple(anchors), c.negated))

    if superlative != target.superlative or attributes != list(target.attributes):
        target = NounPhrase(target.text, target.head, tuple(attributes), superlative, target.plural)
    body, _ = _strip_determiners(tokens, inner=False)
    return ReferringExpression(target, tuple(relations), " ".join(body))
