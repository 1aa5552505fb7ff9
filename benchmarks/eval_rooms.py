"""Grounding, spatial QA and object metrics through the node, over many rooms: for each
seed, ``llava3d-ros make-bag`` (cached) and ``llava3d-ros eval`` (the node in its own
process, the bag replayed with /clock, queries from a separate client), then the pooled
numbers over every query of every room.

    python benchmarks/eval_rooms.py --seeds 2000-2011 --out /tmp/eval_heldout
    python benchmarks/eval_rooms.py --seeds 2000-2011 --noise --out /tmp/eval_heldout_noisy

Bags go to ``~/.cache/llava3d_ros/bags`` (never in git). Prints one line per room and a
summary: grounding Acc@0.25/0.5 overall and by kind (name, attribute, spatial), spatial
QA by type with the chance floor (yes/no and either/or questions have a 50 % floor),
object recall/precision/AP and label accuracy, ground latency p50, keyframes/s and
drops; writes ``summary.json`` into ``--out``.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.seeds import parse_seeds

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llava3d_ros" / "bags"


def bag_for(seed: int, frames: int, rate: float, noise: bool) -> Path:
    from llava3d_ros.sim.bag import BagConfig, make_bag

    path = CACHE / f"seed{seed}_f{frames}_r{rate:g}_n{int(noise)}"
    if not (path / "scene.json").is_file():
        make_bag(
            path,
            BagConfig(seed=seed, frames=frames, rate=rate, noise=noise),
            overwrite=True,
            progress=False,
        )
    return path


def pooled(rooms: list[dict[str, Any]]) -> dict[str, Any]:
    from llava3d_ros.eval import metrics as M

    ground = [r for room in rooms for r in room["ground"]]
    qa = [r for room in rooms for r in room["qa"]]
    objects = [room["metrics"]["objects"] for room in rooms]

    def mean(key: str) -> float | None:
        vals = [o[key] for o in objects if o.get(key) is not None]
        return round(statistics.fmean(vals), 3) if vals else None

    summary = M.summarize(ground, qa, {}, {})
    lat = [r["latency_ms"] for r in ground]
    return {
        "rooms": len(rooms),
        "grounding": summary["grounding"],
        "spatial_qa": summary["spatial_qa"],
        "objects_mean_over_rooms": {
            k: mean(k)
            for k in (
                "object_recall_at_0_25",
                "object_recall_at_0_5",
                "object_precision_at_0_25",
                "object_ap_at_0_25",
                "object_ap_at_0_5",
                "label_accuracy",
                "furniture_recall_at_0_25",
            )
        },
        "ground_latency_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "keyframes_per_s_median": round(
            statistics.median(room["metrics"]["ingest"]["keyframes_per_s"] for room in rooms), 2
        ),
        "dropped_total": sum(room["metrics"]["ingest"]["dropped"] for room in rooms),
        "drop_reasons": _sum_dicts(room["metrics"]["ingest"]["drop_reasons"] for room in rooms),
    }


def _sum_dicts(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for d in dicts:
        for k, v in d.items():
            out[k] += int(v)
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="2000-2011")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--noise", action="store_true", help="Kinect-like depth noise in the bags")
    ap.add_argument("--params", type=Path, help="extra node params file")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from llava3d_ros.eval.evaluate import EvalConfig, evaluate

    args.out.mkdir(parents=True, exist_ok=True)
    rooms = []
    for seed in parse_seeds(args.seeds):
        t0 = time.monotonic()
        bag = bag_for(seed, args.frames, args.rate, args.noise)
        t_bag = time.monotonic() - t0
        result = evaluate(
            EvalConfig(
                bag=bag,
                out=args.out / f"seed{seed}",
                params=args.params,
                progress=False,
                verbose=False,
            )
        )
        m = result.metrics
        rooms.append({"seed": seed, "metrics": m, "ground": result.ground, "qa": result.qa})
        g, q, o = m["grounding"], m["spatial_qa"], m["objects"]
        print(
            f"seed {seed}: Acc@0.25 {g['acc_at_0_25']:.2f} Acc@0.5 {g['acc_at_0_5']:.2f} "
            f"(n={g['n']}) | QA {q['accuracy']:.2f} (n={q['n']}, floor {q['chance_floor']:.2f}) "
            f"| objects recall {o['object_recall_at_0_25']} label {o['label_accuracy']} | "
            f"{m['ingest']['keyframes']} kf {m['ingest']['keyframes_per_s']:.1f}/s, "
            f"{m['ingest']['dropped']} dropped | ground p50 {m['latency_ms']['ground_p50']} ms "
            f"| bag {t_bag:.0f} s, eval {m['run']['timings_s']['total_s']:.0f} s",
            flush=True,
        )
    summary = pooled(rooms)
    summary["seeds"] = parse_seeds(args.seeds)
    summary["noise"] = args.noise
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
