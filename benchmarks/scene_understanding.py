"""In-process grounding and spatial-QA accuracy on rendered rooms: the node's pipeline
(``ScenePipeline``, default model) fed the same walk-through a bag would carry, without
DDS, so settings can be compared in minutes. ``llava3d-ros eval`` (through the node) is
the measurement that counts; this script is for iterating.

    python benchmarks/scene_understanding.py --seeds 1000-1011          # tuning rooms
    python benchmarks/scene_understanding.py --seeds 2000-2011 --noise  # held-out rooms

Frames are rendered once per (seed, frames, rate, noise) and cached under
``~/.cache/llava3d_ros/walkthroughs`` (compressed npz, ~60-100 MB per room; never in
git). Prints per room and overall: grounding Acc@0.25 / Acc@0.5 by expression kind
(name, attribute, spatial), spatial QA accuracy by question type (yes/no and either/or
questions have a 50 % chance floor), and the ground latency median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.seeds import parse_seeds
from llava3d_ros.sim import render as _render  # noqa: F401  (EGL before OpenGL)
from llava3d_ros.sim.bag import BagConfig, Walkthrough

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llava3d_ros"


def load_walkthrough(config: BagConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(scene document, arrays: rgb, depth_mm, t_map_optical, t_map_base, stamps)."""
    key = f"seed{config.seed}_f{config.frames}_r{config.rate:g}_n{int(config.noise)}"
    root = CACHE / "walkthroughs"
    npz, doc_path = root / f"{key}.npz", root / f"{key}.json"
    if npz.is_file() and doc_path.is_file():
        with np.load(npz) as data:
            return json.loads(doc_path.read_text()), {k: data[k] for k in data.files}
    root.mkdir(parents=True, exist_ok=True)
    walk = Walkthrough(config)
    rgb, depth = [], []
    for f in walk.frames():
        rgb.append(f.rgb)
        depth.append(np.clip(np.round(f.depth * 1000.0), 0, 65535).astype(np.uint16))
    doc = walk.document({}, 0.0)
    arrays = {
        "rgb": np.stack(rgb),
        "depth_mm": np.stack(depth),
        "t_map_optical": np.asarray(walk.poses),
        "t_map_base": np.asarray(walk.base_poses),
        "stamps": np.asarray(walk.stamps, dtype=np.int64),
    }
    tmp = npz.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, npz)
    doc_path.write_text(json.dumps(doc))
    return doc, arrays


_BUNDLES: dict[str, Any] = {}


def build_pipeline(overrides: dict[str, Any]) -> Any:
    """The node's pipeline with its default parameters (and ``overrides``); the encoders
    are loaded once per process."""
    from llava3d_ros.core.encoders import create_encoders
    from llava3d_ros.core.pipeline import ScenePipeline
    from llava3d_ros.ros import params as P

    enc = P.encoder_config_from_params("dinov2_onnx", P.encoder_option_defaults("dinov2_onnx"))
    values = {s.name: s.default for s in P.NODE_PARAMS if "." in s.name}
    values.update(overrides)
    key = json.dumps(enc, sort_keys=True)
    if key not in _BUNDLES:
        _BUNDLES[key] = create_encoders(enc)
    return ScenePipeline(P.pipeline_config_from_params(values, enc), _BUNDLES[key])


def run_room(pipe: Any, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    from llava3d_ros.core.geometry import CameraIntrinsics
    from llava3d_ros.core.questions import parse_question
    from llava3d_ros.core.spatial import Viewpoint
    from llava3d_ros.eval import metrics as M
    from llava3d_ros.sim.expressions import SceneObject, object_by_id

    cam = doc["camera"]
    intr = CameraIntrinsics(cam["fx"], cam["fy"], cam["cx"], cam["cy"], cam["width"], cam["height"])
    t0 = time.perf_counter()
    for i in range(len(arrays["stamps"])):
        pipe.process_frame(
            arrays["rgb"][i],
            arrays["depth_mm"][i].astype(np.float32) / 1000.0,
            intr,
            arrays["t_map_optical"][i],
            float(arrays["stamps"][i]) * 1e-9,
            arrays["t_map_base"][i][:3, 3],
        )
    if hasattr(pipe, "flush"):
        pipe.flush()  # the object layer's last update, as a drained node would have
    ingest_s = time.perf_counter() - t0
    objects = [SceneObject.from_dict(o) for o in doc["objects"]]
    viewpoint = Viewpoint.from_transform(arrays["t_map_base"][-1], forward_axis="x")
    ground, qa, lat = [], [], []
    for g in doc["expressions"]:
        target = object_by_id(objects, g["target"])
        t = time.perf_counter()
        out = (
            pipe.ground(g["query"], viewpoint=viewpoint)
            if _takes_viewpoint(pipe)
            else (pipe.ground(g["query"]))
        )
        lat.append(time.perf_counter() - t)
        pred = out.boxes[0] if out.code == "ok" and out.boxes else None
        s = M.score_grounding(pred, target.box(), target.aabb_min, target.aabb_max)
        top = out.matches[0] if getattr(out, "matches", None) else None
        ground.append(
            {
                "query": g["query"],
                "kind": g["kind"],
                "iou": s["iou"],
                "top": pred.label if pred else None,
                "top_score": top.score if top else None,
                "top_label_score": top.instance.label_score if top else None,
                "cause": _cause(pipe, g["query"], target, viewpoint),
            }
        )
    # Objects that are not in the room: a grounding answer is a false positive.
    from llava3d_ros.sim.assets import CATEGORIES

    present = {o.category for o in objects}
    rng = np.random.default_rng(int(doc["generator"]["seed"]))
    absent_cats = [
        c for c, info in CATEGORIES.items() if info.role == "object" and c not in present
    ]
    absent = []
    for cat in rng.choice(absent_cats, size=min(5, len(absent_cats)), replace=False).tolist():
        query = f"the {CATEGORIES[cat].names[0]}"
        out = (
            pipe.ground(query, viewpoint=viewpoint)
            if _takes_viewpoint(pipe)
            else (pipe.ground(query))
        )
        top = out.matches[0] if getattr(out, "matches", None) else None
        absent.append(
            {
                "query": query,
                "answered": out.code == "ok" and bool(out.boxes),
                "top_score": top.score if top else None,
                "top_label": top.instance.label if top else None,
                "top_label_score": top.instance.label_score if top else None,
            }
        )
    for q in doc["questions"]:
        parsed = parse_question(q["question"])
        if parsed is None:
            qa.append({"question": q["question"], "kind": q["kind"], "correct": False})
            continue
        code, answer, _msg = pipe.ask_spatial(parsed, viewpoint)
        text = answer.text if answer is not None else ""
        ok = M.answered({"ok": "NONE", "no_match": "NO_MATCH"}.get(code, code), q["answer"])
        qa.append(
            {
                "question": q["question"],
                "kind": q["kind"],
                "expected": q["answer"],
                "answer": text,
                "correct": M.score_answer(q["answer"], text, ok),
            }
        )
    return {
        "ground": ground,
        "qa": qa,
        "absent": absent,
        "ground_s": lat,
        "ingest_s": ingest_s,
        "keyframes": pipe.memory.stats().frames_integrated,
    }


def _cause(pipe: Any, query: str, target: Any, viewpoint: Any) -> str:
    """Why a query may fail: "segmentation" (no instance's box reaches IoU 0.25 with the
    target), else the rank of the best-overlapping instance in the object ranking."""
    objects = getattr(pipe, "objects", None)
    if objects is None or pipe.vocabulary is None:
        return ""
    from llava3d_ros.core.objects.grounding import rank_instances
    from llava3d_ros.eval.metrics import iou_scanrefer

    snap = objects.snapshot()
    ious = [iou_scanrefer(i.aabb, target.aabb_min, target.aabb_max) for i in snap.instances]
    if not ious or max(ious) < 0.25:
        return f"segmentation (best instance IoU {max(ious, default=0):.2f})"
    best = snap.instances[int(np.argmax(ious))].id
    ranked = rank_instances(
        pipe.parse(query), snap, pipe.vocabulary, viewpoint, pipe.config.object_grounding
    )
    for r, m in enumerate(ranked):
        if m.instance.id == best:
            return (
                f"rank {r} score {m.score:.2f} (target {m.target_score:.2f}, relation "
                f"{m.relation_score:.2f}; label {m.instance.label})"
            )
    return "not ranked"


def _takes_viewpoint(pipe: Any) -> bool:
    import inspect

    return "viewpoint" in inspect.signature(pipe.ground).parameters


def qa_type(record: dict[str, Any]) -> str:
    """yes/no, either/or (which is ...), distance, count: the chance floor differs."""
    expected = str(record.get("expected", ""))
    from llava3d_ros.eval.metrics import answer_kind

    kind = answer_kind(expected) if expected else record["kind"]
    return {"yes_no": "yes/no", "choice": "either/or"}.get(kind, kind)


def summarize(rooms: list[dict[str, Any]]) -> dict[str, Any]:
    ground = [r for room in rooms for r in room["ground"]]
    qa = [r for room in rooms for r in room["qa"]]

    def acc(records: list[dict[str, Any]], k: float) -> float:
        return sum(r["iou"] >= k for r in records) / max(len(records), 1)

    out: dict[str, Any] = {"grounding": {}, "qa": {}}
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ground:
        by_kind[r["kind"]].append(r)
    for kind, recs in [("all", ground), *sorted(by_kind.items())]:
        out["grounding"][kind] = {
            "n": len(recs),
            "acc_at_0_25": round(acc(recs, 0.25), 3),
            "acc_at_0_5": round(acc(recs, 0.5), 3),
        }
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in qa:
        by_type[qa_type(r)].append(r)
    for kind, recs in [("all", qa), *sorted(by_type.items())]:
        n = len(recs)
        out["qa"][kind] = {
            "n": n,
            "accuracy": round(sum(r["correct"] for r in recs) / max(n, 1), 3),
        }
    absent = [r for room in rooms for r in room.get("absent", [])]
    out["absent_false_positive_rate"] = (
        round(sum(r["answered"] for r in absent) / len(absent), 3) if absent else None
    )
    lat = [x for room in rooms for x in room["ground_s"]]
    out["ground_p50_ms"] = round(1e3 * statistics.median(lat), 1) if lat else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="1000-1011", help="room seeds, e.g. 1000-1011 or 0,5")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--noise", action="store_true", help="Kinect-like depth noise")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="override a node parameter, e.g. --set objects.min_coverage=0.3",
    )
    ap.add_argument("--json", type=Path, help="write every record here")
    ap.add_argument("--verbose", action="store_true", help="print every miss")
    args = ap.parse_args(argv)
    import yaml

    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = yaml.safe_load(value)
    rooms = []
    for seed in parse_seeds(args.seeds):
        cfg = BagConfig(seed=seed, frames=args.frames, rate=args.rate, noise=args.noise)
        t = time.perf_counter()
        doc, arrays = load_walkthrough(cfg)
        load_s = time.perf_counter() - t
        pipe = build_pipeline(overrides)
        room = run_room(pipe, doc, arrays)
        if hasattr(pipe, "close"):
            pipe.close()
        room["seed"] = seed
        rooms.append(room)
        s = summarize([room])
        g, q = s["grounding"]["all"], s["qa"]["all"]
        print(
            f"seed {seed}: grounding n={g['n']} Acc@0.25 {g['acc_at_0_25']:.2f} "
            f"Acc@0.5 {g['acc_at_0_5']:.2f} | QA n={q['n']} {q['accuracy']:.2f} | "
            f"absent answered {s['absent_false_positive_rate']} | "
            f"{room['keyframes']} keyframes, ingest {room['ingest_s']:.0f} s, "
            f"load {load_s:.0f} s",
            flush=True,
        )
        if args.verbose:
            for r in room["ground"]:
                if r["iou"] < 0.25:
                    print(
                        f"    miss [{r['kind']}] {r['query']!r} -> {r['top']} iou "
                        f"{r['iou']:.2f}: {r['cause']}"
                    )
            for r in room["qa"]:
                if not r["correct"]:
                    print(
                        f"    wrong {r['question']!r}: {r.get('answer')!r} "
                        f"(expected {r.get('expected')!r})"
                    )
    s = summarize(rooms)
    print(json.dumps(s, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": s, "rooms": rooms}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
