"""How much of the in-process pipeline's ingest throughput the ROS node keeps.

    .venv/bin/python benchmarks/node_ingest.py [--frames 100] [--rate 10] [--seed 0]
        [--bag DIR] [--replay-rate 1.0] [--repeat 1]

(1) A bag is written with ``llava3d_ros.sim.bag.make_bag`` (what ``llava3d-ros make-bag``
    runs) into a temp dir, or ``--bag DIR`` reuses one (its scene.json decides seed,
    frames and rate; bags made with ``--noise`` are refused, see (2)).
(2) In-process baseline: the same frames are rendered again from the same scene spec
    and walk-through poses (compose_room / walkthrough_poses / RGBDRenderer, as bag.py
    does), depth quantized to millimetres as in the bag's 16UC1 images. The pipeline is
    built exactly as the node builds it from its default parameters (encoder, head,
    memory, lifting) and every frame goes through ``ScenePipeline.process_frame(...,
    force=True)`` with the bag's stamps and base_link positions, timed with perf_counter.
    Two frames go through a throwaway pipeline first (warm-up, not counted), so the timed
    memory starts empty like the node's. keyframes/s = 1000 / median ms per keyframe.
(3) Node: ``llava3d_ros.eval.evaluate.evaluate`` starts the real node in its own process
    (default params plus ``keyframes.min_translation_m: 0``, so every frame of the moving
    walk-through is a keyframe, as ``force=True`` is for the baseline), replays the bag
    with /clock at ``--replay-rate`` and sends no queries. Its metrics give keyframes/s
    (keyframes over the wall time from the first message to the node's last counter
    change), drops by reason and the node's own per-keyframe stage medians. ``--repeat``
    runs the node N times (a fresh process each) and reports medians.

The node cannot integrate faster than frames arrive: its cap is bag rate x replay rate
keyframes/s (printed). The baseline has no such cap, so a ratio well below 1 with the
node at its cap means the bag, not the node, is the limit. The last line is
``node_vs_inprocess_keyframe_throughput: <x>`` (node keyframes/s / in-process keyframes/s).
Run nothing else CPU-heavy meanwhile: both halves are wall-clock timings.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.pipeline import ScenePipeline
from llava3d_ros.eval.evaluate import EvalConfig, evaluate
from llava3d_ros.ros import params as P
from llava3d_ros.sim import bag as B

STAGES = ("latency", "convert", "lift", "encode", "fuse")
# Every frame of the walk-through moves, so translation >= 0 m makes each a keyframe.
KEYFRAME_PARAMS = "/**:\n  ros__parameters:\n    keyframes:\n      min_translation_m: 0.0\n"


def bag_config(bag_dir: Path) -> B.BagConfig:
    """The BagConfig a bag was made with (scene.json's generator block)."""
    gen = B.load_scene(bag_dir)["generator"]
    return B.BagConfig(**{k: gen[k] for k in B.BagConfig.__dataclass_fields__ if k in gen})


def render_frames(cfg: B.BagConfig) -> tuple[list[tuple[np.ndarray, ...]], CameraIntrinsics]:
    """(rgb, depth_m, T_map_optical, robot_xyz, stamp_s) per frame, as the bag holds them."""
    from llava3d_ros.sim.render import RGBDRenderer
    from llava3d_ros.sim.scene import build_pyrender_scene, compose_room, walkthrough_poses

    spec = compose_room(cfg.seed, n_objects=cfg.objects)
    poses = walkthrough_poses(spec, cfg.frames, cfg.seed, loops=cfg.loops)
    robots = B.base_link_poses(poses)[:, :3, 3]  # the node passes base_link as the robot
    period_ns = round(1e9 / cfg.rate)
    renderer = RGBDRenderer(cfg.width, cfg.height)
    try:
        scene = build_pyrender_scene(spec, renderer)
        frames = []
        for i, pose in enumerate(poses):
            f = renderer.render(scene, pose)
            # The node decodes 16UC1 millimetres: give the baseline the same depth values.
            depth = B.depth_to_mm(f.depth).astype(np.float32) * np.float32(1e-3)
            stamp_s = (B.START_TIME_NS + i * period_ns) * 1e-9
            frames.append((f.rgb, depth, np.asarray(pose, dtype=np.float64), robots[i], stamp_s))
        k = renderer.intrinsics
    finally:
        renderer.close()
    return frames, k


def bench_inprocess(frames: list[tuple[np.ndarray, ...]], intr: CameraIntrinsics) -> dict:
    """Median ms per forced keyframe (total and per stage) with the node's default config."""
    enc = P.encoder_config_from_params("dinov2_onnx", P.encoder_option_defaults("dinov2_onnx"))
    cfg = P.pipeline_config_from_params(
        {s.name: s.default for s in P.NODE_PARAMS if "." in s.name}, enc
    )
    bundle = create_encoders(enc)
    warm = ScenePipeline(cfg, bundle)  # throwaway: the timed memory starts empty
    for rgb, depth, pose, robot, stamp in frames[:2]:
        warm.process_frame(rgb, depth, intr, pose, stamp, robot, force=True)
    del warm
    pipe = ScenePipeline(cfg, bundle)
    totals: list[float] = []
    t_all = time.perf_counter()
    stages: dict[str, list[float]] = {s: [] for s in ("lift", "encode", "fuse")}
    for rgb, depth, pose, robot, stamp in frames:
        t0 = time.perf_counter()
        out = pipe.process_frame(rgb, depth, intr, pose, stamp, robot, force=True)
        totals.append(time.perf_counter() - t0)
        for s in stages:
            stages[s].append(out.timings.get(s, 0.0))
    wall = time.perf_counter() - t_all  # includes the loop, for a mean-based rate too
    p50 = {s: 1e3 * statistics.median(v) for s, v in stages.items()}
    p50["latency"] = 1e3 * statistics.median(totals)
    result = {
        "keyframes": len(totals),
        "p50_ms": p50,
        "voxels": len(pipe.memory),
        "keyframes_per_s": 1e3 / p50["latency"],
        "wall_per_s": len(totals) / wall,
        "head": Path(enc.get("head_path", "none")).name,
    }
    del pipe, bundle
    gc.collect()  # free the encoder before the node process loads its own
    return result


def bench_node(
    bag_dir: Path, work: Path, replay_rate: float, run: int, overrides: dict[str, Any]
) -> dict[str, Any]:
    """One node run on the bag without queries; the ingest block of its metrics."""
    import yaml

    params = work / "keyframe_params.yaml"
    doc = yaml.safe_load(KEYFRAME_PARAMS)
    for name, value in overrides.items():
        node = doc["/**"]["ros__parameters"]
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    params.write_text(yaml.safe_dump(doc))
    out = work / f"node_run{run}"
    t0 = time.monotonic()
    res = evaluate(
        EvalConfig(
            bag=bag_dir,
            out=out,
            rate=replay_rate,
            params=params,
            ground_queries=[],
            questions=[],
            progress=False,
            verbose=False,
        )
    )
    ingest = dict(res.metrics["ingest"])
    ingest["wall_s"] = time.monotonic() - t0
    ingest["node_start_s"] = res.metrics["run"]["timings_s"].get("node_start_s", float("nan"))
    return ingest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0, help="bag frame rate (Hz)")
    ap.add_argument("--bag", type=Path, help="reuse this bag (made by make-bag)")
    ap.add_argument("--replay-rate", type=float, default=1.0, help="x real time")
    ap.add_argument("--repeat", type=int, default=1, help="node runs (median reported)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="a node parameter for the node runs, e.g. objects.crops=false",
    )
    args = ap.parse_args()
    import yaml

    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = yaml.safe_load(value)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="node_ingest_") as tmp:
        work = Path(tmp)
        if args.bag is None:
            args.bag = work / "bag"
            t0 = time.perf_counter()
            B.make_bag(
                args.bag,
                B.BagConfig(seed=args.seed, frames=args.frames, rate=args.rate),
                progress=False,
            )
            print(f"wrote bag {args.bag} in {time.perf_counter() - t0:.1f} s")
        cfg = bag_config(args.bag)
        if cfg.noise:  # the noise stream is private to make_bag: re-rendering cannot match it
            raise SystemExit(f"{args.bag} has depth noise; use a bag made without --noise")
        cap = cfg.rate * args.replay_rate
        print(
            f"bag: {cfg.frames} frames {cfg.width}x{cfg.height} at {cfg.rate:g} Hz, seed "
            f"{cfg.seed}; replay x{args.replay_rate:g} -> node cap {cap:.2f} keyframes/s"
        )
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads (node "
            "default ingest.torch_threads=0 is the same)"
        )
        sys.stdout.flush()

        t0 = time.perf_counter()
        frames, intr = render_frames(cfg)
        print(f"re-rendered {len(frames)} frames in {time.perf_counter() - t0:.1f} s")
        base = bench_inprocess(frames, intr)
        del frames
        print(
            f"in-process: {base['keyframes']} keyframes (forced), {base['voxels']} voxels, "
            f"median {base['p50_ms']['latency']:.1f} ms/keyframe -> "
            f"{base['keyframes_per_s']:.2f} keyframes/s ({base['wall_per_s']:.2f}/s as count / "
            f"loop wall; head {base['head']})"
        )
        sys.stdout.flush()

        runs: list[dict[str, Any]] = []
        for i in range(args.repeat):
            r = bench_node(args.bag, work, args.replay_rate, i, overrides)
            runs.append(r)
            print(
                f"node run {i + 1}/{args.repeat}: {r['keyframes']} keyframes of "
                f"{r['frames_received']}/{r['frames_published']} frames received, "
                f"{r['keyframes_per_s']:.2f} keyframes/s over {r['ingest_wall_s']:.1f} s "
                f"ingest wall, dropped {r['dropped']} {r['drop_reasons'] or '(none)'}; "
                f"node start {r['node_start_s']:.1f} s, run {r['wall_s']:.0f} s"
            )
            sys.stdout.flush()
    node_kps = statistics.median(r["keyframes_per_s"] for r in runs)
    node_p50 = {
        s: statistics.median(r["keyframe_p50_ms"].get(s, float("nan")) for r in runs)
        for s in STAGES
    }
    print(
        f"node (median of {len(runs)}): {node_kps:.2f} keyframes/s "
        f"(cap {cap:.2f}: {node_kps / cap:.0%} of it), "
        f"keyframes {statistics.median(r['keyframes'] for r in runs):g}, "
        f"dropped {statistics.median(r['dropped'] for r in runs):g}"
    )
    print(f"{'p50 ms':>8} | {'in-process':>10} | {'node':>8}")
    for s in STAGES:
        ours = base["p50_ms"].get(s)
        print(f"{s:>8} | {'-' if ours is None else f'{ours:.1f}':>10} | {node_p50[s]:>8.1f}")
    print(
        "(latency: in-process = process_frame; node = convert + base_link TF lookup + "
        "process_frame)"
    )
    print(f"total {time.perf_counter() - t_start:.0f} s")
    print(f"node_vs_inprocess_encode_p50: {node_p50['encode'] / base['p50_ms']['encode']:.2f}")
    print(f"node_keyframe_cap_per_s: {cap:.2f}")
    print(f"node_vs_inprocess_keyframe_throughput: {node_kps / base['keyframes_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
