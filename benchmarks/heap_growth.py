"""Does the pipeline itself leak? The node's pipeline (default parameters, default
encoder and head, object layer on) in this process, without ROS, fed a cached walk-through
in a loop with stamps continuing, as the soak feeds the node.

    .venv/bin/python benchmarks/heap_growth.py [--seed 1000] [--minutes 8]
        [--warmup-minutes 2] [--report-s 60] [--top 12]

Every ``--report-s`` after the warm-up: frames fed, voxels, objects, the RSS and the
Python heap that tracemalloc traces (numpy buffers included, torch tensors not; traced from
the start). At the end the allocation sites whose traced size grew most between the first
report and the last, and ``python_heap_growth_mb_per_min``: what a leak in Python objects
or arrays would show.
RSS moving while the traced heap stays flat points at native memory (numpy/torch buffers
freed into glibc arenas, onnxruntime, open3d), not at objects the pipeline keeps.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scene_understanding import build_pipeline, load_walkthrough
from soak import rss_mb

from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.heap import trim_heap
from llava3d_ros.sim.bag import BagConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--warmup-minutes", type=float, default=2.0)
    ap.add_argument("--report-s", type=float, default=60.0)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)

    doc, arrays = load_walkthrough(BagConfig(seed=args.seed, frames=200, rate=10.0))
    cam = doc["camera"]
    intr = CameraIntrinsics(cam["fx"], cam["fy"], cam["cx"], cam["cy"], cam["width"], cam["height"])
    depth = [d.astype(np.float32) / 1000.0 for d in arrays["depth_mm"]]
    n = len(depth)
    period = float(np.median(np.diff(arrays["stamps"]))) * 1e-9
    pipe = build_pipeline({})
    pipe.start()
    tracemalloc.start(25)  # from the start: what the warm-up allocates is traced too
    t0 = time.monotonic()
    warm_end = t0 + args.warmup_minutes * 60.0
    end = warm_end + args.minutes * 60.0
    next_report = warm_end
    first: tracemalloc.Snapshot | None = None
    rows: list[tuple[float, float, float]] = []
    i = 0
    print(f"{'min':>5} {'frames':>6} {'voxels':>7} {'obj':>4} {'rss MB':>7} {'traced MB':>9}")
    while True:
        k = i % n
        pipe.process_frame(
            arrays["rgb"][k],
            depth[k],
            intr,
            arrays["t_map_optical"][k],
            i * period,
            arrays["t_map_base"][k][:3, 3],
        )
        i += 1
        now = time.monotonic()
        if now < next_report:
            continue
        gc.collect()
        trim_heap()  # what the node does every ingest.heap_trim_period_s
        if first is None:
            first = tracemalloc.take_snapshot()
        traced = tracemalloc.get_traced_memory()[0] / 2**20
        minute = (now - warm_end) / 60.0
        rows.append((minute, rss_mb(os.getpid())[0], traced))
        stats = pipe.memory.stats()
        objs = pipe.objects.stats()["objects"] if pipe.objects is not None else 0
        print(
            f"{minute:5.1f} {i:6d} "
            f"{stats.num_voxels:7d} {objs:4d} {rows[-1][1]:7.0f} {traced:9.1f}",
            flush=True,
        )
        if now >= end:
            break
        next_report += args.report_s
    last = tracemalloc.take_snapshot()
    pipe.stop()
    print(f"top {args.top} allocation sites by growth since the first report:")
    for stat in last.compare_to(first, "traceback")[: args.top]:
        frame = stat.traceback[-1]
        print(
            f"  {stat.size_diff / 2**20:+8.2f} MB {stat.count_diff:+7d} blocks  "
            f"{frame.filename}:{frame.lineno}"
        )
    span = rows[-1][0] - rows[0][0]
    py = (rows[-1][2] - rows[0][2]) / span if span > 0 else 0.0
    rss = (rows[-1][1] - rows[0][1]) / span if span > 0 else 0.0
    print(f"RSS {rows[0][1]:.0f} -> {rows[-1][1]:.0f} MB ({rss:+.1f} MB/min) over {span:.1f} min")
    print(f"python_heap_growth_mb_per_min: {py:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
