"""Prompts: LLaVA's v1 conversation templates, location prompts, tokenization, text boxes.

A LLaVA-3D prompt, for the question "What is on the table?"::

    A chat between a curious user ... questions. USER: <image>
    What is on the table? ASSISTANT:

``<image>`` becomes the projected scene tokens. A point ``[x,y,z]`` written in the
question becomes a ``<boxes>`` slot whose embedding is the location MLP of the point
(LLaVA-3D's click prompt); a 6-number box ``[cx,cy,cz,dx,dy,dz]`` in a question is taken
by its centre, as the release does. Tokenization follows the release: the prompt is
split at the placeholders, each text chunk tokenized on its own without special tokens,
one BOS in front.

Boxes in answers are text ``[cx,cy,cz,dx,dy,dz]`` (centre, full size; metres in the frame
of the scene positions): :func:`parse_boxes`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..geometry import vec3
from .config import LmmError
from .model import IMAGE_TOKEN_INDEX, LOC_TOKEN_INDEX

IMAGE_PLACEHOLDER = "<image>"
BOX_PLACEHOLDER = "<boxes>"
IM_START, IM_END = "<im_start>", "<im_end>"

# LLaVA's conversation templates "llava_v1" (the inference scripts) and "vicuna_v1" (what
# LLaVA-3D's training scripts pass as --version): same roles and separators, the system
# prompt differs in one word ("human" / "user").
SYSTEM_PROMPT_V1 = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SYSTEM_PROMPT_VICUNA_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# The click-prompt wording of the released training data and README (3D dense captioning).
DEFAULT_DESCRIBE_QUESTION = (
    f"The related object is located at {BOX_PLACEHOLDER}. Describe the object in detail."
)

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# A bracketed list of 3 numbers (point) or 6 (box), numbers separated by commas.
_POINT_OR_BOX_RE = re.compile(
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})((?:\s*,\s*{_NUM}){{3}})?\s*\]"
)
_BOX_RE = re.compile(
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,"
    rf"\s*({_NUM})\s*,\s*({_NUM})\s*\]"
)
_SPLIT_RE = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(BOX_PLACEHOLDER)})")


@dataclass(frozen=True)
class ConversationTemplate:
    """LLaVA's two-separator style: ``system sep USER: q sep ASSISTANT: a sep2 ...``."""

    system: str = SYSTEM_PROMPT_V1
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"

    def render(self, turns: Sequence[tuple[str, str | None]]) -> str:
        """``turns``: (user message, assistant reply or None for the turn to answer)."""
        seps = (self.sep, self.sep2)
        out = self.system + seps[0]
        messages: list[tuple[str, str | None]] = []
        for user, reply in turns:
            messages += [(self.roles[0], user), (self.roles[1], reply)]
        for i, (role, message) in enumerate(messages):
            if message:
                out += f"{role}: {message}{seps[i % 2]}"
            else:
                out += f"{role}:"
        return out


LLAVA_V1 = ConversationTemplate()
VICUNA_V1 = ConversationTemplate(system=SYSTEM_PROMPT_VICUNA_V1)
#: Templates by the names LLaVA's conversation module gives them.
TEMPLATES: dict[str, ConversationTemplate] = {"vicuna_v1": VICUNA_V1, "llava_v1": LLAVA_V1}
#: The one LLaVA-3D was trained with.
DEFAULT_TEMPLATE = "vicuna_v1"


def template_named(name: str) -> ConversationTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise LmmError(
            f"unknown conversation template {name!r}; use one of {sorted(TEMPLATES)}"
        ) from None


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and the click points that fill its ``<boxes>`` slots, in order."""

    text: str
    locations: tuple[tuple[float, float, float], ...]


def _point(values: Sequence[Any]) -> tuple[float, float, float]:
    p = tuple(round(float(v), 3) for v in values)  # the release rounds clicks to 1 mm
    if len(p) != 3 or not all(math.isfinite(v) for v in p):
        raise LmmError(f"a location must be 3 finite numbers, got {values!r}")
    return p


def extract_locations(question: str) -> tuple[str, list[tuple[float, float, float]]]:
    """Replace every ``[x,y,z]`` (or 6-number box: its centre) by ``<boxes>``."""
    points: list[tuple[float, float, float]] = []

    def sub(m: re.Match[str]) -> str:
        points.append(_point(m.group(1, 2, 3)))
        return BOX_PLACEHOLDER

    return _POINT_OR_BOX_RE.sub(sub, question), points


def build_prompt(
    question: str,
    *,
    location: Any = None,
    history: Sequence[tuple[str, str]] = (),
    template: ConversationTemplate = VICUNA_V1,
    use_im_start_end: bool = False,
    clicks: bool = True,
) -> Prompt:
    """Render one question (plus optional earlier turns) in a LLaVA v1 template
    (default: vicuna_v1, the one LLaVA-3D was trained with).

    Locations: coordinates written in the question (``[x,y,z]``) and/or ``location`` — one
    point (3,) or several (L, 3) — which fill literal ``<boxes>`` placeholders of the
    question, left to right, after the written ones are converted. The scene placeholder
    goes first in the first user turn (LLaVA-3D's order) unless the question has one.

    ``clicks`` False (a 2D model, which has no location embedding): coordinates stay
    text, and a ``<boxes>`` in the question is an error.
    """
    if not question.strip():
        raise LmmError("empty question")
    written: list[tuple[float, float, float]]
    if not clicks:
        if BOX_PLACEHOLDER in question or location is not None:
            raise LmmError(f"this model takes no location prompts ('{BOX_PLACEHOLDER}')")
        text, written = question, []
    else:
        text, written = extract_locations(question)
    explicit: list[tuple[float, float, float]] = []
    if location is not None:
        rows = [location] if _is_point(location) else list(location)
        explicit = [_point(r) for r in rows]
    slots = text.count(BOX_PLACEHOLDER)
    if slots != len(written) + len(explicit):
        raise LmmError(
            f"question has {slots} location slot(s) ('{BOX_PLACEHOLDER}' or "
            f"[x,y,z]) but {len(written)} written + {len(explicit)} given "
            "location(s); put one '<boxes>' in the question per location"
        )
    # Written and explicit points share the slots in text order: merge by position.
    locations = _merge_in_order(question, written, explicit) if clicks else []
    if text.count(IMAGE_PLACEHOLDER) > 1:
        raise LmmError("the question may hold at most one '<image>' placeholder")
    if IMAGE_PLACEHOLDER not in text:
        text = f"{IMAGE_PLACEHOLDER}\n{text}"
    if use_im_start_end:
        text = text.replace(IMAGE_PLACEHOLDER, IM_START + IMAGE_PLACEHOLDER + IM_END)
    for user, _reply in history:
        if IMAGE_PLACEHOLDER in user or BOX_PLACEHOLDER in user:
            raise LmmError("earlier turns must be plain text (no <image> or <boxes>)")
    turns: list[tuple[str, str | None]] = []
    if history:
        # The scene goes with the first user turn, as in a LLaVA multi-turn conversation.
        first_user, first_reply = history[0]
        scene_first = text.startswith(f"{IMAGE_PLACEHOLDER}\n")
        if scene_first:
            text = text[len(IMAGE_PLACEHOLDER) + 1 :]
            first_user = f"{IMAGE_PLACEHOLDER}\n{first_user}"
        turns.append((first_user, first_reply))
        turns += [(u, r) for u, r in history[1:]]
    turns.append((text, None))
    return Prompt(text=template.render(turns), locations=tuple(locations))


def _is_point(location: Any) -> bool:
    try:
        return len(location) == 3 and all(
            not hasattr(v, "__len__") or getattr(v, "ndim", 1) == 0 for v in location
        )
    except TypeError:
        return False


def _merge_in_order(
    question: str,
    written: list[tuple[float, float, float]],
    explicit: list[tuple[float, float, float]],
) -> list[tuple[float, float, float]]:
    """Slot order in the question: each match is either a literal <boxes> (next explicit
    point) or a written coordinate (next written point)."""
    out: list[tuple[float, float, float]] = []
    w = iter(written)
    e = iter(explicit)
    pattern = re.compile(f"{re.escape(BOX_PLACEHOLDER)}|{_POINT_OR_BOX_RE.pattern}")
    for m in pattern.finditer(question):
        out.append(next(e) if m.group(0) == BOX_PLACEHOLDER else next(w))
    return out


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's default encoding starts with BOS (Llama's does)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def tokenize_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids with IMAGE_TOKEN_INDEX / LOC_TOKEN_INDEX at the placeholders.

    Each text chunk between placeholders is tokenized on its own (the release does the
    same, so a Llama tokenizer adds its word-start marker at each chunk as in training)."""
    ids: list[int] = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    for chunk in _SPLIT_RE.split(prompt):
        if chunk == IMAGE_PLACEHOLDER:
            ids.append(IMAGE_TOKEN_INDEX)
        elif chunk == BOX_PLACEHOLDER:
            ids.append(LOC_TOKEN_INDEX)
        elif chunk:
            ids.extend(int(i) for i in tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


@dataclass(frozen=True)
class TextBox:
    """A box read from answer text: centre and full size (dx, dy, dz), axis-aligned."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    start: int  # character span of "[...]" in the text
    end: int

    @property
    def min_corner(self) -> tuple[float, float, float]:
        return vec3(c - s / 2.0 for c, s in zip(self.center, self.size, strict=True))

    @property
    def max_corner(self) -> tuple[float, float, float]:
        return vec3(c + s / 2.0 for c, s in zip(self.center, self.size, strict=True))


def parse_boxes(text: str) -> list[TextBox]:
    """Every ``[cx,cy,cz,dx,dy,dz]`` in ``text``, in order. Lists whose sizes are negative
    or whose numbers are not finite are skipped (not a box); other bracket lists (points,
    wrong length) are ignored."""
    out: list[TextBox] = []
    for m in _BOX_RE.finditer(text):
        v = [float(x) for x in m.groups()]
        if not all(math.isfinite(x) for x in v) or min(v[3:]) < 0:
            continue
        out.append(
            TextBox(
                center=(v[0], v[1], v[2]), size=(v[3], v[4], v[5]), start=m.start(), end=m.end()
            )
        )
    return out


def object_context(
    objects: Sequence[tuple[str, Any, Any]],  # (label, centre (3,), size (3,))
    to_scene: Callable[[Any], Any] | None = None,
) -> str:
    """The object list as one line of text for the question (Chat-Scene's idea, as plain
    text): ``label`` + centre + size per object, in metres, centres moved by ``to_scene``
    ((N, 3) -> (N, 3)) so they match the scene tokens' frame. Numbers are written
    without brackets: a bracketed triple in a question is a click (``<boxes>``)."""
    if not objects:
        return ""
    centres = [tuple(float(v) for v in c) for _, c, _ in objects]
    if to_scene is not None:
        centres = [tuple(float(v) for v in row) for row in to_scene(centres)]
    parts = []
    for (label, _, size), c in zip(objects, centres, strict=True):
        d = [float(v) for v in size]
        parts.append(
            f"{label} at ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}), "
            f"size {d[0]:.2f} x {d[1]:.2f} x {d[2]:.2f}"
        )
    return "Objects in the scene (centre x, y, z and size in metres): " + "; ".join(parts) + "."
