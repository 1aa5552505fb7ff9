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
with NO_MATCH, and that is an answer (:func:`answered`).
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
    "IOU_THRESHOLDS",
    "answer_kind",
    "answered",
    "box_from_pose",
    "grounding_summary",
    "iou_scanrefer",
    "percentile",
    "qa_summary",
    "score_answer",
    "score_grounding",
    "summarize",
    "yaw_from_quaternion",
]

IOU_THRESHOLDS = (0.25, 0.5)
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
    return Box3D(np.asarray(center, float), np.abs(np.asarray(size, float)),
                 yaw_from_quaternion(orientation_xyzw))  # fmt: skip


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
        want = float(re.match(_NUMBER, expected.strip()).group(0))  # type: ignore[union-attr]
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


def qa_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    return {"n": n, "accuracy": _round(correct / n) if n else None}


def summarize(
    ground: Sequence[Mapping[str, Any]],
    qa: Sequence[Mapping[str, Any]],
    ingest: Mapping[str, Any],
    memory: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` document. Latencies are client round trips (goal sent ->
    result received), in milliseconds."""
    metrics: dict[str, Any] = {
        "grounding": grounding_summary(ground),
        "spatial_qa": qa_summary(qa),
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
