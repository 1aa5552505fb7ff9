"""Scores for bag evaluations: grounding accuracy at IoU thresholds, spatial QA accuracy,
latency percentiles. Pure numpy (no rclpy), so the scoring is unit-tested on its own.

Grounding (ScanRefer, Chen et al. 2020): a query is a hit at threshold k when the 3D IoU
of the *top* predicted box with the target's ground-truth box is at least k;
``Acc@0.25`` and ``Acc@0.5`` are the hit fractions over all queries. As in ScanRefer, the
boxes are axis-aligned: the ground truth is the axis-aligned box of the object's points
(its mesh vertices in the map frame) and a predicted yaw-rotated box is replaced by its
axis-aligned hull. The exact rotated IoU against the yaw-tight ground-truth box is kept
per query as ``iou_oriented``. A query the node answers without a box (NO_MATCH,
MODEL_UNAVAILABLE, a timeout...) is a miss with IoU 0.

Spatial QA: the expected answer's form picks the rule, following the node's answer
format (:mod:`llava3d_ros.core.questions`):

- "Yes"/"No": the answer's first word.
- "the <phrase>" (which-questions): the phrase the answer names first ("The mug is
  bigger." names "mug") must be the expected one.
- "<number> m" (distances): the first "<number> m" in the answer, within
  ``max(DISTANCE_ABS_TOL_M, DISTANCE_REL_TOL * expected)``.
- a bare integer (counts): the answer's first integer, exactly.
- anything else: the normalised answer equals or starts with the expected text.

An answer with an error code other than NONE is wrong whatever its text, with one
exception: the node answers a count of nothing ("How many bowls are there?" -> "0.")
with NO_MATCH, and that is an answer (:func:`answered`). ``by_type`` splits the accuracy
by answer form; yes/no and either/or questions have a 50 % coin-flip floor, which
``chance_floor`` states for the question mix at hand.

Object instances (:func:`objects_summary`): the node's object list against the visible
ground-truth objects and furniture, with the same ScanRefer IoU. Recall@k: fraction of
ground-truth objects (furniture) with some predicted instance of any role at IoU >= k.
Precision@0.25: fraction of predicted "object" instances whose best ground-truth match
(object or furniture) reaches 0.25. AP@k: class-agnostic average precision of the
"object" instances ranked by ``label_score`` (PASCAL VOC: each prediction takes its
best-overlapping ground-truth object; a hit when IoU >= k and that object is not taken
yet, else a false positive; all-point interpolated precision). Label accuracy: of the
ground-truth objects matched at 0.25, the fraction whose best instance's label is one
of the object's names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from llava3d_ros.core.spatial import Box3D

__all__ = [
    "DISTANCE_ABS_TOL_M",
    "DISTANCE_REL_TOL",
    "GROUNDING_KINDS",
    "IOU_THRESHOLDS",
    "QA_TYPES",
    "answer_kind",
    "answered",
    "average_precision",
    "box_from_pose",
    "chance_floor",
    "grounding_by_kind",
    "grounding_summary",
    "iou_matrix",
    "iou_scanrefer",
    "label_accuracy",
    "objects_summary",
    "percentile",
    "precision_at",
    "qa_by_type",
    "qa_summary",
    "qa_type",
    "recall_at",
    "score_answer",
    "score_grounding",
    "summarize",
    "yaw_from_quaternion",
]

IOU_THRESHOLDS = (0.25, 0.5)
#: Referring-expression kinds of ``scene.json`` (``grounding.by_kind``).
GROUNDING_KINDS = ("name", "attribute", "spatial")
#: Question types of ``spatial_qa.by_type``, from the expected answer's form.
QA_TYPES = ("yes_no", "either_or", "distance", "count", "other")
_QA_TYPE_OF_KIND = {
    "yes_no": "yes_no",
    "choice": "either_or",
    "distance": "distance",
    "count": "count",
}
#: Types a coin flip answers right half the time.
_TWO_WAY = frozenset({"yes_no", "either_or"})
DISTANCE_ABS_TOL_M = 0.15
DISTANCE_REL_TOL = 0.15

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"


# ------------------------------------------------------------------------- boxes


def yaw_from_quaternion(q_xyzw: Sequence[float]) -> float:
    """Heading of a rotation (x, y, z, w): the angle of its rotated x axis in the xy
    plane (exact for rotations about z, the node's boxes)."""
    x, y, z, w = (float(v) for v in q_xyzw)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n < 1e-12:
        return 0.0
    x, y, z, w = x / n, y / n, z / n, w / n
    # First column of the rotation matrix.
    r00 = 1.0 - 2.0 * (y * y + z * z)
    r10 = 2.0 * (x * y + z * w)
    return math.atan2(r10, r00)


def box_from_pose(
    center: Sequence[float], size: Sequence[float], orientation_xyzw: Sequence[float] = (0, 0, 0, 1)
) -> Box3D:
    """A predicted box (vision_msgs/BoundingBox3D fields) as a yaw box."""
    return Box3D(
        np.asarray(center, float),
        np.abs(np.asarray(size, float)),
        yaw_from_quaternion(orientation_xyzw),
    )


def iou_scanrefer(pred: Box3D, gt_min: Sequence[float], gt_max: Sequence[float]) -> float:
    """ScanRefer's 3D IoU: axis-aligned predicted hull vs the axis-aligned ground truth."""
    return pred.axis_aligned().iou(Box3D.from_min_max(gt_min, gt_max))


def score_grounding(
    pred: Box3D | None, gt_box: Box3D, gt_min: Sequence[float], gt_max: Sequence[float]
) -> dict[str, Any]:
    """Per-query scores: ``iou`` (ScanRefer), ``iou_oriented`` (exact, yaw boxes) and
    ``hit_at_0_25`` / ``hit_at_0_5`` (on ``iou``). No prediction: all zero / False."""
    if pred is None:
        iou = iou_o = 0.0
    else:
        iou = iou_scanrefer(pred, gt_min, gt_max)
        iou_o = pred.iou(gt_box)
    out: dict[str, Any] = {"iou": float(iou), "iou_oriented": float(iou_o)}
    for k in IOU_THRESHOLDS:
        out[_hit_key(k)] = bool(iou >= k)
    return out


def _hit_key(k: float) -> str:
    return "hit_at_" + f"{k:g}".replace(".", "_")


def _acc_key(k: float) -> str:
    return "acc_at_" + f"{k:g}".replace(".", "_")


# ------------------------------------------------------------------------- answers


def _clean(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9.\- ]+", " ", text.lower()).split())


def _strip_article(text: str) -> str:
    return re.sub(r"^(?:the|a|an)\s+", "", text.strip())


def answer_kind(expected: str) -> str:
    """Which scoring rule an expected answer selects: "yes_no", "choice", "distance",
    "count" or "text"."""
    e = expected.strip()
    el = e.lower().rstrip(".")
    if el in ("yes", "no"):
        return "yes_no"
    if re.fullmatch(rf"{_NUMBER}\s*m", el):
        return "distance"
    if re.fullmatch(r"\d+", el):
        return "count"
    if el.startswith("the "):
        return "choice"
    return "text"


def _first_word(text: str) -> str:
    m = re.match(r"\s*([A-Za-z]+)", text)
    return m.group(1).lower() if m else ""


def _named_choice(answer: str) -> str | None:
    """The phrase an answer names first: "The yellow mug is bigger." -> "yellow mug"."""
    a = _clean(answer)
    m = re.match(r"^(?:the\s+)?(.+?)\s+(?:is|are)\b", a)
    if m:
        return _strip_article(m.group(1))
    m = re.match(r"^the\s+(.+)$", a)
    return _strip_article(m.group(1)).rstrip(".") if m else None


def answered(error_name: str, expected: str) -> bool:
    """Did the node give an answer to score? NONE, or NO_MATCH for a count (its "0.")."""
    return error_name == "NONE" or (error_name == "NO_MATCH" and answer_kind(expected) == "count")


def score_answer(expected: str, answer: str, ok: bool = True) -> bool:
    """Is ``answer`` right? ``ok``: the node answered without an error code."""
    if not ok or not answer.strip():
        return False
    kind = answer_kind(expected)
    if kind == "yes_no":
        return _first_word(answer) == expected.strip().lower().rstrip(".")
    if kind == "distance":
        expected_number = re.match(_NUMBER, expected.strip())
        if expected_number is None:  # answer_kind said distance: cannot happen
            raise ValueError(f"no distance in the expected answer {expected!r}")
        want = float(expected_number.group(0))
        m = re.search(rf"({_NUMBER})\s*m\b", answer)
        if not m:
            return False
        got = float(m.group(1))
        return abs(got - want) <= max(DISTANCE_ABS_TOL_M, DISTANCE_REL_TOL * abs(want))
    if kind == "count":
        m = re.search(r"\d+", answer)
        return m is not None and int(m.group(0)) == int(expected.strip())
    if kind == "choice":
        named = _named_choice(answer)
        return named is not None and named == _strip_article(_clean(expected)).rstrip(".")
    e, a = _clean(expected).rstrip("."), _clean(answer).rstrip(".")
    return a == e or a.startswith(e + " ")


# ------------------------------------------------------------------------- summaries


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None
    return float(np.percentile(np.asarray(v), q))


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def grounding_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{n, acc_at_0_25, acc_at_0_5, median_iou}`` over per-query records (each with
    ``iou``; hits are recomputed from it, so a record cannot disagree with the summary)."""
    n = len(records)
    ious = [float(r["iou"]) for r in records]
    out: dict[str, Any] = {"n": n}
    for k in IOU_THRESHOLDS:
        out[_acc_key(k)] = _round(sum(i >= k for i in ious) / n) if n else None
    out["median_iou"] = _round(float(np.median(ious))) if n else None
    return out


def grounding_by_kind(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`grounding_summary` per expression kind (every key of
    :data:`GROUNDING_KINDS`, n = 0 where none); records of other kinds are left out."""
    return {
        kind: grounding_summary([r for r in records if r.get("kind") == kind])
        for kind in GROUNDING_KINDS
    }


def qa_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    return {"n": n, "accuracy": _round(correct / n) if n else None}


def qa_type(expected: str) -> str:
    """The :data:`QA_TYPES` entry of a question, from its expected answer."""
    return _QA_TYPE_OF_KIND.get(answer_kind(expected), "other")


def qa_by_type(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`qa_summary` per question type (every key of :data:`QA_TYPES`)."""
    types = [qa_type(str(r.get("expected", ""))) for r in records]
    return {
        t: qa_summary([r for r, rt in zip(records, types, strict=True) if rt == t])
        for t in QA_TYPES
    }


def chance_floor(expected: Sequence[str]) -> float | None:
    """Accuracy of a coin flip on these questions: 0.5 per yes/no or either/or question,
    0 for the rest (no guess names a distance or a count), averaged; None for none."""
    if not expected:
        return None
    return _round(sum(0.5 if qa_type(e) in _TWO_WAY else 0.0 for e in expected) / len(expected))


# ------------------------------------------------------------------------- instances


def _pred_box(p: Mapping[str, Any]) -> Box3D:
    """A predicted instance (``center``, ``size``, ``yaw``) as a yaw box."""
    h = float(p.get("yaw", 0.0)) / 2.0
    return box_from_pose(p["center"], p["size"], (0.0, 0.0, math.sin(h), math.cos(h)))


def iou_matrix(pred: Sequence[Mapping[str, Any]], gt: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(P, G) ScanRefer IoU of predicted instances (``center``, ``size``, ``yaw``) against
    ground-truth boxes (``aabb_min``, ``aabb_max``)."""
    out = np.zeros((len(pred), len(gt)))
    for i, p in enumerate(pred):
        box = _pred_box(p)
        for j, g in enumerate(gt):
            out[i, j] = iou_scanrefer(box, g["aabb_min"], g["aabb_max"])
    return out


def recall_at(ious: np.ndarray, k: float) -> float | None:
    """Fraction of ground-truth columns with some prediction (row) at IoU >= k; None
    without ground truth."""
    n_gt = ious.shape[1]
    if n_gt == 0:
        return None
    if ious.shape[0] == 0:
        return 0.0
    return _round(float(np.mean(ious.max(axis=0) >= k)))


def precision_at(ious: np.ndarray, k: float) -> float | None:
    """Fraction of predicted rows whose best ground-truth match has IoU >= k; None
    without predictions. Duplicates of one object all count (it is not AP)."""
    n_pred = ious.shape[0]
    if n_pred == 0:
        return None
    if ious.shape[1] == 0:
        return 0.0
    return _round(float(np.mean(ious.max(axis=1) >= k)))


def average_precision(scores: Sequence[float], ious: np.ndarray, k: float) -> float | None:
    """Class-agnostic AP at IoU ``k`` (PASCAL VOC 2010+): predictions by descending
    score (ties keep their order); each takes the ground truth it overlaps most; a true
    positive when IoU >= k and that ground truth is still free, else a false positive
    (a duplicate); area under the precision-recall curve with precision made monotone
    (all-point interpolation). ``ious``: (P, G). None without ground truth."""
    n_pred, n_gt = ious.shape
    if n_gt == 0:
        return None
    if n_pred == 0:
        return 0.0
    order = sorted(range(n_pred), key=lambda i: -float(scores[i]))  # stable for ties
    taken = np.zeros(n_gt, bool)
    tp = np.zeros(n_pred)
    for rank, i in enumerate(order):
        j = int(np.argmax(ious[i]))
        if ious[i, j] >= k and not taken[j]:
            taken[j] = True
            tp[rank] = 1.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, n_pred + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):  # precision envelope, right to left
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return _round(float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])))


def _norm_name(text: str) -> str:
    return " ".join(str(text).lower().replace("_", " ").split())


def label_accuracy(
    pred: Sequence[Mapping[str, Any]],
    gt: Sequence[Mapping[str, Any]],
    ious: np.ndarray,
    k: float = 0.25,
) -> float | None:
    """Of the ground-truth objects (columns) whose best instance reaches IoU ``k``, the
    fraction where that instance's ``label`` is one of the object's ``names`` (case and
    spacing ignored); None when no object is matched."""
    if ious.shape[0] == 0 or ious.shape[1] == 0:
        return None
    best = ious.argmax(axis=0)
    matched = [j for j in range(ious.shape[1]) if ious[best[j], j] >= k]
    if not matched:
        return None
    right = sum(
        _norm_name(pred[best[j]].get("label", "")) in {_norm_name(n) for n in gt[j]["names"]}
        for j in matched
    )
    return _round(right / len(matched))


def objects_summary(
    pred: Sequence[Mapping[str, Any]] | None,
    scene_objects: Sequence[Mapping[str, Any]],
    update_time_s: float | None = None,
    update_count: int | None = None,
) -> dict[str, Any]:
    """The ``objects`` section of ``metrics.json`` (see the module doc). ``pred``: the
    node's final object list as records (``role``, ``label``, ``label_score``,
    ``center``, ``size``, ``yaw``), None when the node published none (object layer off:
    every score is None then); ``scene_objects``: ``scene.json``'s objects (``role``,
    ``aabb_min``/``aabb_max``, ``visible``, ``names``), of which only visible ones count:
    nothing in the bag shows the rest."""
    gt = [g for g in scene_objects if g.get("visible", True)]
    gt_obj = [g for g in gt if g["role"] == "object"]
    gt_furn = [g for g in gt if g["role"] == "furniture"]
    preds = list(pred or [])
    pred_obj = [p for p in preds if p.get("role") == "object"]
    out: dict[str, Any] = {
        "n_gt_objects": len(gt_obj),
        "n_gt_furniture": len(gt_furn),
        "n_pred_objects": len(pred_obj) if pred is not None else None,
        "n_pred_furniture": (len(preds) - len(pred_obj)) if pred is not None else None,
    }
    iou_obj = iou_matrix(preds, gt_obj)  # any predicted role may find an object
    iou_furn = iou_matrix(preds, gt_furn)
    iou_pred_obj_all = iou_matrix(pred_obj, gt)
    iou_ap = iou_matrix(pred_obj, gt_obj)
    for what, ious in (("object", iou_obj), ("furniture", iou_furn)):
        for k in IOU_THRESHOLDS:
            key = f"{what}_recall_at_" + f"{k:g}".replace(".", "_")
            out[key] = recall_at(ious, k) if pred is not None else None
    out["object_precision_at_0_25"] = (
        precision_at(iou_pred_obj_all, 0.25) if pred is not None else None
    )
    scores = [float(p.get("label_score", 0.0)) for p in pred_obj]
    for k in IOU_THRESHOLDS:
        key = "object_ap_at_" + f"{k:g}".replace(".", "_")
        out[key] = average_precision(scores, iou_ap, k) if pred is not None else None
    out["label_accuracy"] = label_accuracy(preds, gt_obj, iou_obj) if pred is not None else None
    out["update_time_s"] = _round(update_time_s)
    out["update_count"] = None if update_count is None else int(update_count)
    return out


def summarize(
    ground: Sequence[Mapping[str, Any]],
    qa: Sequence[Mapping[str, Any]],
    ingest: Mapping[str, Any],
    memory: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    objects: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` document. Latencies are client round trips (goal sent ->
    result received), in milliseconds. ``objects``: :func:`objects_summary`'s section
    (every key None without one)."""
    grounding = grounding_summary(ground)
    grounding["by_kind"] = grounding_by_kind(ground)
    spatial_qa = qa_summary(qa)
    spatial_qa["by_type"] = qa_by_type(qa)
    spatial_qa["chance_floor"] = chance_floor([str(r.get("expected", "")) for r in qa])
    metrics: dict[str, Any] = {
        "grounding": grounding,
        "spatial_qa": spatial_qa,
        "objects": dict(objects) if objects is not None else objects_summary(None, []),
        "ingest": dict(ingest),
        "latency_ms": {
            "ground_p50": _round(percentile([r["latency_ms"] for r in ground], 50), 1),
            "ground_p95": _round(percentile([r["latency_ms"] for r in ground], 95), 1),
            "ask_p50": _round(percentile([r["latency_ms"] for r in qa], 50), 1),
        },
        "memory": dict(memory),
    }
    if extra:
        metrics.update(extra)
    return metrics
