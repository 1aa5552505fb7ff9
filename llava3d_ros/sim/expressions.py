"""Ground-truth objects, referring expressions and spatial questions for a composed room.

Everything here is computed from the scene's exact ground truth (mesh-tight boxes) and
the viewpoint the node answers from, with the same functions the node uses
(:mod:`llava3d_ros.core.spatial`, :mod:`llava3d_ros.core.questions`), so an expected
answer is exactly what a perfect memory would produce.

- :class:`SceneObject`: one object or piece of furniture with its id (``"mug_2"``:
  category and instance id), names, yaw box and the axis-aligned box of its mesh
  vertices (what ScanRefer's IoU compares), support, and how much of the walk-through
  saw it.
- :func:`referring_expressions`: per visible object "the <name>" (the shortest name no
  other object in the room carries), "the <colour name>", and spatial ones ("the mug
  left of the bowl", "the mug on the table") whose relation holds clearly for the target
  and clearly fails for every other object of the same name.
- :func:`spatial_questions`: questions in the forms :func:`~llava3d_ros.core.questions.
  parse_question` recognises, with the answer in the node's answer format: yes/no
  relations ("Yes"/"No"), "which is bigger/closer" ("the <phrase>"), distances
  ("1.23 m") and counts ("2"). Every question is parsed back here to make sure the node
  will read the same phrases and relation.

"Clearly" means the relation's own score (:class:`~llava3d_ros.core.spatial.
RelationResult`) is at least :data:`CLEAR_SCORE` (at most 1 - it for "clearly not"), or
for the contact relations (on, next to) a margin of a fraction of the threshold:
borderline cases are never asked, so a correct memory cannot lose points on them.

Viewer-relative relations use the viewpoint the node uses: the ``base_link`` pose at the
end of the bag, forward = +x of base_link (see :meth:`Viewpoint.from_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llava3d_ros.core.geometry import vec3
from llava3d_ros.core.questions import (
    COMPARE,
    COUNT,
    DISTANCE,
    DISTANCE_TO_VIEWER,
    RELATION,
    parse_question,
)
from llava3d_ros.core.spatial import RELATION_PHRASES, Box3D, Viewpoint, relation
from llava3d_ros.sim.assets import CATEGORIES, asset_vertices
from llava3d_ros.sim.scene import object_boxes

__all__ = [
    "CLEAR_SCORE",
    "MIN_VISIBLE_FRAMES",
    "MIN_VISIBLE_PIXELS",
    "SceneObject",
    "assign_unique_names",
    "object_by_id",
    "objects_from_spec",
    "plural",
    "referring_expressions",
    "spatial_questions",
    "viewpoint_from_dict",
    "viewpoint_to_dict",
]

#: A relation counts as clearly true (false) at a score >= this (<= 1 - this).
CLEAR_SCORE = 0.9
#: on / next to: clearly true (false) at a margin of at least this fraction of the
#: relation's own tolerance (on: its gap tolerance, next to: its distance threshold).
CLEAR_CONTACT_FRACTION = 0.25
#: Objects seen in fewer frames, or never with this many pixels, get no expressions.
MIN_VISIBLE_FRAMES = 3
MIN_VISIBLE_PIXELS = 150

# relation -> mirror relation for a "No" question (phrases: spatial.RELATION_PHRASES)
_MIRROR = {
    "left_of": "right_of",
    "right_of": "left_of",
    "in_front_of": "behind",
    "behind": "in_front_of",
    "above": "below",
    "below": "above",
}
_VIEWER_RELATIONS = ("left_of", "right_of", "in_front_of", "behind")


@dataclass
class SceneObject:
    """Ground truth for one object or piece of furniture, in the map frame."""

    id: str  # "<category>_<instance id>", e.g. "mug_2"
    instance_id: int
    asset_id: str
    category: str
    role: str  # "object" or "furniture"
    names: tuple[str, ...]
    attributes: dict[str, str]
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    aabb_min: tuple[float, float, float]  # axis-aligned box of the mesh vertices
    aabb_max: tuple[float, float, float]
    on: str | None = None  # id of the furniture it stands on (None: the floor)
    name: str = ""  # shortest name no other object in the room carries ("" if none)
    visible_frames: int = 0  # frames with at least one pixel of it
    max_pixels: int = 0  # its largest pixel count in one frame

    @property
    def visible(self) -> bool:
        return self.visible_frames >= MIN_VISIBLE_FRAMES and self.max_pixels >= MIN_VISIBLE_PIXELS

    def box(self) -> Box3D:
        """The yaw box (tight in the object's own frame)."""
        return Box3D(np.array(self.center), np.array(self.size), self.yaw, self.name or self.id)

    def aabb(self) -> Box3D:
        """The axis-aligned box of the object's points (ScanRefer's ground truth box)."""
        return Box3D.from_min_max(self.aabb_min, self.aabb_max, label=self.name or self.id)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = list(self.names)
        for k in ("center", "size", "aabb_min", "aabb_max"):
            d[k] = [round(float(v), 6) for v in d[k]]
        d["yaw"] = round(float(self.yaw), 6)
        d["visible"] = self.visible
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SceneObject:
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        kw["names"] = tuple(kw.get("names", ()))
        for k in ("center", "size", "aabb_min", "aabb_max"):
            kw[k] = tuple(float(v) for v in kw[k])
        kw["attributes"] = dict(kw.get("attributes", {}))
        return cls(**kw)


def objects_from_spec(
    spec: Any, visibility: Mapping[int, tuple[int, int]] | None = None
) -> list[SceneObject]:
    """Objects then furniture of a :class:`~llava3d_ros.sim.scene.SceneSpec`, with unique
    names assigned. ``visibility``: instance id -> (frames seen, max pixels in a frame)."""
    boxes = object_boxes(spec, include_furniture=True)
    placements = {p.instance_id: p for p in spec.placements()}
    ids = {k: f"{b.category}_{k}" for k, b in boxes.items()}
    out: list[SceneObject] = []
    order = [p.instance_id for p in spec.objects] + [p.instance_id for p in spec.furniture]
    for k in order:
        b, p = boxes[k], placements[k]
        world = asset_vertices(p.asset_id) @ p.matrix()[:3, :3].T + p.matrix()[:3, 3]
        frames, pixels = (visibility or {}).get(k, (0, 0))
        out.append(
            SceneObject(
                id=ids[k],
                instance_id=k,
                asset_id=b.asset_id,
                category=b.category,
                role=b.role,
                names=tuple(b.names),
                attributes=dict(b.attributes),
                center=vec3(b.center),
                size=vec3(b.size),
                yaw=float(b.yaw),
                aabb_min=vec3(world.min(axis=0)),
                aabb_max=vec3(world.max(axis=0)),
                on=ids.get(p.on) if p.on else None,
                visible_frames=int(frames),
                max_pixels=int(pixels),
            )
        )
    assign_unique_names(out)
    return out


def assign_unique_names(objects: Sequence[SceneObject]) -> None:
    """Give each object the first of its names that no other object carries."""
    for obj in objects:
        others = {n for o in objects if o is not obj for n in o.names}
        obj.name = next((n for n in obj.names if n not in others), "")


def viewpoint_to_dict(vp: Viewpoint) -> dict[str, list[float]]:
    return {"position": [float(v) for v in vp.position], "forward": [float(v) for v in vp.forward]}


def viewpoint_from_dict(d: Mapping[str, Sequence[float]]) -> Viewpoint:
    return Viewpoint(np.asarray(d["position"], float), np.asarray(d["forward"], float))


# ------------------------------------------------------------------------- relations


def _clarity(name: str, a: SceneObject, b: SceneObject, vp: Viewpoint) -> bool | None:
    """True / False when ``a <name> b`` clearly holds / fails, None when borderline."""
    r = relation(name, a.box(), b.box(), vp)
    if name in ("on_top_of", "next_to"):
        tol = r.details.get("threshold", 0.1) if name == "next_to" else 0.1
        limit = CLEAR_CONTACT_FRACTION * tol
        if r.value and r.margin >= limit:
            return True
        if not r.value and r.margin <= -limit:
            return False
        return None
    if r.score >= CLEAR_SCORE and r.value:
        return True
    if r.score <= 1.0 - CLEAR_SCORE and not r.value:
        return False
    return None


def _strength(name: str, a: SceneObject, b: SceneObject, vp: Viewpoint) -> float:
    return relation(name, a.box(), b.box(), vp).margin


def _distractors(obj: SceneObject, word: str, objects: Iterable[SceneObject]) -> list[SceneObject]:
    return [o for o in objects if o is not obj and word in o.names]


# ------------------------------------------------------------------------- expressions


def _attribute_name(obj: SceneObject, objects: Sequence[SceneObject]) -> str:
    """A unique name that carries an attribute word ("yellow mug"), or ""."""
    words = {w for v in obj.attributes.values() for w in str(v).split()}
    others = {n for o in objects if o is not obj for n in o.names}
    for n in obj.names:
        if n not in others and words & set(n.split()) and n != obj.name:
            return n
    return ""


def referring_expressions(
    objects: Sequence[SceneObject], viewpoint: Viewpoint, max_spatial: int = 2
) -> list[dict[str, Any]]:
    """Referring expressions for the visible objects (not furniture): list of
    ``{query, target, kind, ...}`` with ``kind`` "name", "attribute" or "spatial"."""
    out: list[dict[str, Any]] = []
    visible = [o for o in objects if o.visible]
    by_id = {o.id: o for o in objects}
    for obj in visible:
        if obj.role != "object":
            continue
        if obj.name:
            out.append({"query": f"the {obj.name}", "target": obj.id, "kind": "name"})
        attr = _attribute_name(obj, objects)
        if attr:
            out.append({"query": f"the {attr}", "target": obj.id, "kind": "attribute"})
        base = obj.names[0]
        distractors = _distractors(obj, base, objects)
        candidates: list[tuple[int, float, str, SceneObject]] = []  # (rank, strength, rel, anchor)
        anchors = [
            o
            for o in visible
            if o is not obj and o.name and base not in o.name.split() and o.category != obj.category
        ]
        for anchor in anchors:
            rels: tuple[str, ...]
            if anchor.role == "furniture":
                rels = ("on_top_of",) if obj.on == anchor.id else ()
            else:
                rels = ("next_to", *_VIEWER_RELATIONS)
            for rel in rels:
                if _clarity(rel, obj, anchor, viewpoint) is not True:
                    continue
                if any(_clarity(rel, d, anchor, viewpoint) is not False for d in distractors):
                    continue
                rank = 0 if rel == "on_top_of" else (1 if rel == "next_to" else 2)
                candidates.append((rank, _strength(rel, obj, anchor, viewpoint), rel, anchor))
        # One view-independent (on > next to) and one viewer-relative expression.
        chosen: list[tuple[str, SceneObject]] = []
        for group in ((0, 1), (2,)):
            pool = sorted((c for c in candidates if c[0] in group), key=lambda c: (c[0], -c[1]))
            if pool:
                chosen.append((pool[0][2], pool[0][3]))
        for rel, anchor in chosen[:max_spatial]:
            out.append(
                {
                    "query": f"the {base} {RELATION_PHRASES[rel]} the {anchor.name}",
                    "target": obj.id,
                    "kind": "spatial",
                    "relation": rel,
                    "anchor": anchor.id,
                }
            )
    # Anchors must exist in the map by id (sanity check).
    assert all(e.get("anchor", obj.id) in by_id for e in out)
    return out


# ------------------------------------------------------------------------- questions


def plural(name: str) -> str:
    """English plural of the last word ("coffee mug" -> "coffee mugs")."""
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and not name.endswith(("ay", "ey", "oy", "uy")):
        return name[:-1] + "ies"
    return name + "s"


def _fmt_m(value: float) -> str:
    return f"{value:.2f} m"


def _check(question: str, kind: str, phrases: tuple[str, ...], rel: str | None = None) -> bool:
    """The node parses ``question`` into exactly this kind, phrases and relation."""
    parsed = parse_question(question)
    if parsed is None or parsed.kind != kind or parsed.phrases != phrases:
        return False
    return rel is None or parsed.relation == rel


def spatial_questions(
    objects: Sequence[SceneObject],
    viewpoint: Viewpoint,
    seed: int = 0,
    n_questions: int = 16,
    absent_categories: Sequence[tuple[str, str]] = (),
) -> list[dict[str, Any]]:
    """Spatial questions with exact answers in the node's answer format.

    Mix (when the room allows): yes/no relations (half "Yes", half "No"), which is
    bigger/closer, distances between objects and to the viewer, counts (one of a
    category that is absent: answer "0"). ``absent_categories``: (category, name) pairs
    to draw the absent count from."""
    rng = np.random.default_rng(seed + 7919)
    named = [o for o in objects if o.visible and o.name]
    things = [o for o in named if o.role == "object"]
    furniture = [o for o in named if o.role == "furniture"]
    pools: dict[str, list[dict[str, Any]]] = {
        "relation_yes": [],
        "relation_no": [],
        "compare": [],
        "distance": [],
        "count": [],
    }

    def add(
        pool: str,
        q: str,
        answer: str,
        kind: str,
        phrases: tuple[str, ...],
        rel: str | None,
        **extra: Any,
    ) -> None:
        if _check(q, kind, phrases, rel):
            pools[pool].append({"question": q, "answer": answer, "kind": kind, **extra})

    for a in things:
        for b in things:
            if a is b or a.category == b.category:
                continue
            for rel in (*_VIEWER_RELATIONS, "above", "next_to"):
                truth = _clarity(rel, a, b, viewpoint)
                if truth is None:
                    continue
                q = f"Is the {a.name} {RELATION_PHRASES[rel]} the {b.name}?"
                ids = [a.id, b.id]
                add(
                    f"relation_{'yes' if truth else 'no'}",
                    q,
                    "Yes" if truth else "No",
                    RELATION,
                    (a.name, b.name),
                    rel,
                    relation=rel,
                    objects=ids,
                )
            if a.id < b.id:
                if _clarity("bigger", a, b, viewpoint) is not None:
                    word = "bigger" if rng.random() < 0.5 else "smaller"
                    first = bool(relation(word, a.box(), b.box(), viewpoint).value)
                    pick = a if first else b
                    q = f"Which is {word}, the {a.name} or the {b.name}?"
                    add(
                        "compare",
                        q,
                        f"the {pick.name}",
                        COMPARE,
                        (a.name, b.name),
                        word,
                        relation=word,
                        objects=[a.id, b.id],
                    )
                if _clarity("in_front_of", a, b, viewpoint) is not None:
                    word = "closer" if rng.random() < 0.5 else "farther"
                    rel = "in_front_of" if word == "closer" else "behind"
                    first = bool(relation(rel, a.box(), b.box(), viewpoint).value)
                    pick = a if first else b
                    q = f"Which is {word}, the {a.name} or the {b.name}?"
                    add(
                        "compare",
                        q,
                        f"the {pick.name}",
                        COMPARE,
                        (a.name, b.name),
                        rel,
                        relation=rel,
                        objects=[a.id, b.id],
                    )
                d = float(np.linalg.norm(np.subtract(a.center, b.center)))
                q = f"How far is the {a.name} from the {b.name}?"
                add(
                    "distance",
                    q,
                    _fmt_m(d),
                    DISTANCE,
                    (a.name, b.name),
                    None,
                    relation="distance",
                    objects=[a.id, b.id],
                )
        for f in furniture:
            truth = _clarity("on_top_of", a, f, viewpoint)
            if truth is None:
                continue
            q = f"Is the {a.name} on the {f.name}?"
            add(
                f"relation_{'yes' if truth else 'no'}",
                q,
                "Yes" if truth else "No",
                RELATION,
                (a.name, f.name),
                "on_top_of",
                relation="on_top_of",
                objects=[a.id, f.id],
            )
        d = float(math.dist(viewpoint.position, a.center))
        q = f"How far away is the {a.name}?"
        add(
            "distance",
            q,
            _fmt_m(d),
            DISTANCE_TO_VIEWER,
            (a.name,),
            None,
            relation="distance_to_viewer",
            objects=[a.id],
        )
    # Counts: by category name, only when every object carrying that name was seen.
    seen: set[str] = set()
    for o in objects:
        cat = CATEGORIES.get(o.category)
        if o.role != "object" or o.category in seen or cat is None or not cat.colour_names:
            continue
        seen.add(o.category)
        word = o.names[0]
        carriers = [x for x in objects if word in x.names]
        if not all(x.visible for x in carriers):
            continue
        q = f"How many {plural(word)} are there?"
        add(
            "count",
            q,
            str(len(carriers)),
            COUNT,
            (word,),
            None,
            relation="count",
            objects=[x.id for x in carriers],
        )
    present = {n for o in objects for n in o.names}
    absent = [(c, n) for c, n in absent_categories if n not in present]
    if absent:
        _c, word = absent[int(rng.integers(len(absent)))]
        q = f"How many {plural(word)} are there?"
        add("count", q, "0", COUNT, (word,), None, relation="count", objects=[])

    # Balanced selection: quotas per pool, then fill from what is left.
    quotas = {"relation_yes": 4, "relation_no": 4, "compare": 3, "distance": 2, "count": 2}
    scale = n_questions / max(sum(quotas.values()), 1)
    chosen: list[dict[str, Any]] = []
    leftovers: list[dict[str, Any]] = []
    for name, pool in pools.items():
        order = rng.permutation(len(pool))
        take = round(quotas[name] * scale)
        chosen += [pool[i] for i in order[:take]]
        leftovers += [pool[i] for i in order[take:]]
    rng.shuffle(leftovers)
    chosen += leftovers[: max(0, n_questions - len(chosen))]
    # Stable, readable order: by kind, then question text; no duplicates.
    unique = {q["question"]: q for q in chosen}
    return sorted(unique.values(), key=lambda q: (_KIND_ORDER.get(q["kind"], 9), q["question"]))


_KIND_ORDER = {RELATION: 0, COMPARE: 1, DISTANCE: 2, DISTANCE_TO_VIEWER: 3, COUNT: 4}


def object_by_id(objects: Iterable[SceneObject], key: str | int) -> SceneObject:
    """Look an object up by id ("mug_2") or instance id (2 or "2")."""
    objs = list(objects)
    for o in objs:
        if o.id == str(key):
            return o
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        for o in objs:
            if o.instance_id == int(key):
                return o
    raise KeyError(f"no object {key!r}; known: {', '.join(o.id for o in objs)}")
