"""Grounding on object instances: expression -> target + relations + anchors -> ranked
instances.

Embedding "the mug on the coffee table" as one sentence put the top box on the table (the
anchor) 60 % of the time. Here the parser (:mod:`llava3d_ros.core.referring`) splits the
expression and each part is scored on its own:

    score(i) = p(target | i) x colour(i) x prod_r max_j [ a_r(j) x rel_r(i, j) ]

- ``p(target | i)``: the target's head phrase against the instance's pooled feature,
  competing with the label vocabulary (:meth:`LabelVocabulary.phrase_scores`);
- ``a_r(j)``: the anchor phrase's score of instance ``j`` relative to the best one
  (divided by ``max(best, anchor_floor)``), so an uncertain label still anchors;
- ``colour(i)``: for colour words, ``floor + (1 - floor) * min(1, fraction / full)`` of
  the instance's points of that colour (:mod:`llava3d_ros.core.objects.colour`);
- ``rel_r(i, j)``: the relation's own score in [0, 1] from :mod:`llava3d_ros.core.spatial`
  on the instances' boxes (viewer-relative relations use the robot's viewpoint; without
  one they are uninformative, 0.5); "on" also holds when the segmentation put ``i`` on
  furniture ``j``; negated relations use 1 - rel;
- superlatives ("the leftmost mug", "the closest bowl") pick among the candidates whose
  target score is within ``superlative_band`` of the best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llava3d_ros.core.objects.instances import ObjectInstance, ObjectSnapshot
from llava3d_ros.core.objects.labels import LabelVocabulary
from llava3d_ros.core.options import option
from llava3d_ros.core.referring import NounPhrase, ReferringExpression, Relation
from llava3d_ros.core.spatial import Box3D, Viewpoint, relation

__all__ = ["InstanceMatch", "ObjectGroundingConfig", "phrase_scores", "rank_instances"]

_VIEWER_RELATIONS = frozenset({"left_of", "right_of", "in_front_of", "behind"})


@dataclass(frozen=True)
class ObjectGroundingConfig:
    min_score: float = option(
        0.1,
        "an instance scoring below this does not match (tuned on rooms 1000-1011: "
        "0.25 answered 3 % of queries for absent objects and grounded 79 %, 0.1 answered "
        "8 % and grounded 87 %, 0.05 answered 18 % and grounded 89 %)",
        0.0,
        1.0,
    )
    question_min_score: float = option(
        0.01,
        "questions presuppose the objects they name: a phrase in a question takes the best "
        "instance scoring at least this (a grounding goal needs min_score)",
        0.0,
        1.0,
    )
    colour_floor: float = option(
        0.15, "colour factor of an instance with none of the asked colour", 0.0, 1.0
    )
    colour_full: float = option(
        0.3,
        "fraction of an instance's points in a colour that counts as fully that colour",
        0.01,
        1.0,
    )
    count_min_score: float = option(
        0.5,
        '"how many X": instances scoring at least this count (and never fewer than the one '
        "ground would return at min_score)",
        0.0,
        1.0,
    )
    anchor_floor: float = option(
        0.05,
        "anchor scores are divided by max(best anchor score, this): the best reading of an "
        "anchor counts fully unless even it is below this",
        1e-6,
        1.0,
    )
    superlative_band: float = option(
        0.5, "superlatives choose among candidates scoring >= this x the best", 0.0, 1.0
    )
    oriented: bool = option(
        False, "results carry yaw boxes (else the axis-aligned box of the instance's points)"
    )


@dataclass(frozen=True)
class InstanceMatch:
    index: int  # row in the snapshot
    instance: ObjectInstance
    score: float
    target_score: float
    relation_score: float  # product over relations (1 without)
    anchors: tuple[int, ...] = ()  # instance ids of the best anchors, one per relation


def _colour_factor(
    phrase: NounPhrase, instances: Sequence[ObjectInstance], cfg: ObjectGroundingConfig
) -> np.ndarray:
    colours = [a for a in phrase.attributes if _is_colour(a)]
    out = np.ones(len(instances))
    for colour in colours:
        frac = np.array([_fraction(inst, colour) for inst in instances])
        out *= cfg.colour_floor + (1.0 - cfg.colour_floor) * np.minimum(1.0, frac / cfg.colour_full)
    return out


def _fraction(inst: ObjectInstance, colour: str) -> float:
    hist = inst.colour_fractions
    if colour in hist:
        return float(hist[colour])
    # Multi-word colours ("black and white", "dark green"): the sum of their parts.
    parts = [w for w in colour.replace(" and ", " ").split() if w in hist]
    return float(sum(hist[w] for w in parts))


def _is_colour(attribute: str) -> bool:
    from llava3d_ros.core.referring import COLOUR_WORDS

    return any(w in COLOUR_WORDS for w in attribute.split())


def phrase_scores(
    phrase: NounPhrase,
    snapshot: ObjectSnapshot,
    vocab: LabelVocabulary,
    cfg: ObjectGroundingConfig,
) -> np.ndarray:
    """(K,) score of every instance for one noun phrase (category x colour)."""
    if len(snapshot) == 0:
        return np.zeros(0)
    head = phrase.head or phrase.text
    roles = [inst.role for inst in snapshot.instances]
    p = vocab.phrase_scores(head, snapshot.features, roles).cpu().numpy().astype(np.float64)
    has = np.array([inst.has_feature for inst in snapshot.instances])
    p = np.where(has, p, 0.0)
    return p * _colour_factor(phrase, snapshot.instances, cfg)


def _relation_matrix(
    rel: Relation,
    boxes: Sequence[Box3D],
    snapshot: ObjectSnapshot,
    viewpoint: Viewpoint | None,
) -> np.ndarray:
    """(K, K) rel(i, j) in [0, 1] for a one-anchor relation."""
    k = len(boxes)
    out = np.full((k, k), 0.5)
    if rel.name in _VIEWER_RELATIONS and viewpoint is None:
        return out  # no viewpoint: left/right/front/behind cannot be told
    for i in range(k):
        for j in range(k):
            if i == j:
                out[i, j] = 0.0
                continue
            try:
                out[i, j] = relation(rel.name, boxes[i], boxes[j], viewpoint).score
            except ValueError:
                out[i, j] = 0.5
    if rel.name == "on_top_of":
        ids = [inst.id for inst in snapshot.instances]
        for i, inst in enumerate(snapshot.instances):
            if inst.support_id and inst.support_id in ids:
                out[i, ids.index(inst.support_id)] = 1.0
    if rel.name == "distance":  # "closest to X": nearer scores higher (1 at contact)
        for i in range(k):
            for j in range(k):
                if i != j:
                    gap = boxes[i].distance_to(boxes[j])[1]
                    out[i, j] = math.exp(-gap / 0.5)
    return out


def _superlative_key(
    word: str, boxes: Sequence[Box3D], viewpoint: Viewpoint | None
) -> Callable[[int], float] | None:
    """A function index -> value where the superlative picks the largest value."""
    if word in ("closest", "farthest") and viewpoint is not None:
        sign = -1.0 if word == "closest" else 1.0
        return lambda i: sign * float(np.linalg.norm(boxes[i].center - viewpoint.position))
    if word in ("leftmost", "rightmost") and viewpoint is not None:
        sign = 1.0 if word == "leftmost" else -1.0
        return lambda i: sign * float(viewpoint.to_local(boxes[i].center[None])[0, 1])
    if word in ("highest", "lowest"):
        sign = 1.0 if word == "highest" else -1.0
        return lambda i: sign * float(boxes[i].center[2])
    if word in ("biggest", "smallest"):
        sign = 1.0 if word == "biggest" else -1.0
        return lambda i: sign * boxes[i].volume
    if word in ("tallest", "shortest"):
        sign = 1.0 if word == "tallest" else -1.0
        return lambda i: sign * float(boxes[i].size[2])
    return None


def rank_instances(
    expr: ReferringExpression,
    snapshot: ObjectSnapshot,
    vocab: LabelVocabulary,
    viewpoint: Viewpoint | None,
    cfg: ObjectGroundingConfig,
) -> list[InstanceMatch]:
    """Every instance with a positive score, best first."""
    k = len(snapshot)
    if k == 0:
        return []
    boxes = snapshot.boxes(oriented=True)
    target = phrase_scores(expr.target, snapshot, vocab, cfg)
    total = target.copy()
    rel_total = np.ones(k)
    best_anchor: list[list[int]] = [[] for _ in range(k)]
    for rel in expr.relations:
        if not rel.geometric or any(a.is_viewer for a in rel.anchors):
            continue  # "inside"/"with" and "in front of me": not scored here
        # The best reading of each anchor phrase counts fully: a ketchup bottle whose
        # label is unsure (p 0.03) is still the ketchup "left of the ketchup" means.
        anchors = [
            p / max(float(p.max()), cfg.anchor_floor)
            for p in (phrase_scores(a, snapshot, vocab, cfg) for a in rel.anchors)
        ]
        if rel.name == "between" and len(anchors) == 2:
            score, arg = _between(boxes, anchors[0], anchors[1], viewpoint)
        else:
            m = _relation_matrix(rel, boxes, snapshot, viewpoint)
            if rel.negated:
                m = 1.0 - m
                np.fill_diagonal(m, 0.0)
            cand = m * anchors[0][None, :]
            arg = cand.argmax(axis=1)
            score = cand[np.arange(k), arg]
        rel_total *= score
        for i in range(k):
            best_anchor[i].append(snapshot.instances[int(arg[i])].id)
    total = total * rel_total
    if expr.target.superlative:
        key = _superlative_key(expr.target.superlative, boxes, viewpoint)
        if key is not None and total.max() > 0:
            band = np.flatnonzero(total >= cfg.superlative_band * total.max())
            winner = max(band.tolist(), key=key)
            # The chosen one keeps its score; the others in the band drop below it.
            for i in band.tolist():
                if i != winner:
                    total[i] = min(total[i], 0.5 * total[winner])
    order = np.argsort(-total, kind="stable")
    return [
        InstanceMatch(
            int(i),
            snapshot.instances[i],
            float(total[i]),
            float(target[i]),
            float(rel_total[i]),
            tuple(best_anchor[i]),
        )
        for i in order
        if total[i] > 0
    ]


def _between(
    boxes: Sequence[Box3D], a: np.ndarray, b: np.ndarray, viewpoint: Viewpoint | None
) -> tuple[np.ndarray, np.ndarray]:
    k = len(boxes)
    score = np.zeros(k)
    arg = np.zeros(k, dtype=np.int64)
    top_a = np.argsort(-a)[:4]
    top_b = np.argsort(-b)[:4]
    for i in range(k):
        for ja in top_a.tolist():
            for jb in top_b.tolist():
                if len({i, ja, jb}) < 3:
                    continue
                r = relation("between", boxes[i], (boxes[ja], boxes[jb]), viewpoint).score
                s = a[ja] * b[jb] * r
                if s > score[i]:
                    score[i], arg[i] = s, ja
    return score, arg


def result_box(match: InstanceMatch, cfg: ObjectGroundingConfig, label: str) -> Box3D:
    """The box a result carries: the yaw box or the points' axis-aligned box."""
    inst = match.instance
    src = inst.box if cfg.oriented else inst.aabb
    return Box3D(src.center, src.size, src.yaw, label, float(match.score), len(inst.points))


def result_box_of(inst: ObjectInstance, oriented: bool) -> Box3D:
    src = inst.box if oriented else inst.aabb
    return Box3D(src.center, src.size, src.yaw, inst.label, inst.label_score, len(inst.points))
