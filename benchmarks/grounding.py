"""Grounding query latency against memory size (synthetic memory, planted objects).

    .venv/bin/python benchmarks/grounding.py [--dim 384] [--sizes 1e3,1e4,1e5,1e6]

Each memory holds sparse background voxels (10% occupancy of a cube, so the grid is not
one blob) whose features are one of 4 background directions ("floor", "wall", ...) plus
noise, and dense 5x5x5-voxel shell objects of 5 categories (about 5% of the voxels) that
share an "objectness" direction, as CLIP features do; negatives are the background and
"object" text embeddings. The query is one object category, so about 1% of the voxels
score high and get clustered - a typical query. Prints a table of median
latency per stage, a sanity check that the top box is a planted object, one "broad"
query (a category covering ~30% of the largest memory) and, as the last line,
``latency_ratio_1e6_vs_1e3: <x>``. Timings are wall clock on whatever machine runs it
(the dev box has 2 noisy cores; with other jobs running, small memories are dominated by
thread wake-up latency of torch's intra-op pool).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava3d_ros.core.grounding import Grounder, GroundingConfig
from llava3d_ros.core.spatial import Box3D

VS = 0.05
STAGES = ("similarity", "selection", "clustering", "boxes")
N_CATS = 5
N_BG = 4
OBJ = 5  # object edge in voxels


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def make_memory(m: int, dim: int, seed: int, broad_fraction: float = 0.0) -> dict:
    """Synthetic memory of exactly ``m`` voxels (duplicates of coords are allowed and
    harmless). ``broad_fraction`` of the clutter gets category 0's feature instead."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cats = _unit(torch.randn(N_CATS + 1 + N_BG, dim, generator=g))
    objness, bg_dirs = cats[N_CATS], cats[N_CATS + 1 :]
    img = _unit(0.6 * objness + 0.8 * cats[:N_CATS])
    txt = _unit(0.3 * objness + 0.8 * cats[:N_CATS])
    bg_img = _unit(0.2 * objness + bg_dirs)
    bg_txt = _unit(0.1 * objness + bg_dirs)

    shell = np.stack(np.meshgrid(*[np.arange(OBJ)] * 3, indexing="ij"), -1).reshape(-1, 3)
    shell = shell[((shell == 0) | (shell == OBJ - 1)).any(axis=1)]  # 98 voxels
    n_obj = max(2, int(0.05 * m) // len(shell))
    n_obj_vox = n_obj * len(shell)
    n_bg = m - n_obj_vox
    side = max(round((n_bg / 0.10) ** (1 / 3)), OBJ * 4)
    bg = rng.integers(0, side, (n_bg, 3))
    # Objects on distinct lattice slots 2 voxels apart, so instances never touch.
    per_axis = max(side // (OBJ + 2), 1)
    while per_axis**3 < n_obj:
        per_axis += 1
    slots = rng.choice(per_axis**3, n_obj, replace=False)
    origins = (np.stack(np.unravel_index(slots, (per_axis,) * 3), -1) * (OBJ + 2))[:, None]
    obj = (origins + shell[None]).reshape(-1, 3)
    obj_cat = np.repeat(np.arange(n_obj) % N_CATS, len(shell))
    coords = np.concatenate([bg, obj])

    noise = 0.5 / dim**0.5
    bg_cat = torch.randint(0, N_BG, (n_bg,), generator=g)
    feats = torch.empty(m, dim)
    feats[:n_bg] = bg_img[bg_cat] + noise * torch.randn(n_bg, dim, generator=g)
    feats[n_bg:] = img[torch.from_numpy(obj_cat)] + noise * torch.randn(n_obj_vox, dim, generator=g)
    if broad_fraction > 0:
        k = int(broad_fraction * m)
        feats[:k] = img[0] + noise * torch.randn(k, dim, generator=g)
    feats *= torch.empty(m, 1).uniform_(0.5, 2.0, generator=g)  # running means: any norm
    cent = torch.from_numpy((coords + 0.5 + rng.uniform(-0.3, 0.3, coords.shape)) * VS)
    planted = [
        Box3D.from_min_max(o[0] * VS, (o[0] + OBJ) * VS)
        for i, o in enumerate(origins)
        if i % N_CATS == 1
    ]
    return {
        "centroids": cent.float(),
        "features": feats,
        "counts": torch.randint(1, 50, (m,), generator=g),
        "query": txt[1],
        "broad_query": txt[0],
        "negatives": torch.cat([objness[None], bg_txt]),
        "planted": planted,
    }


def bench_one(
    grounder: Grounder, mem: dict, runs: int, query: str = "query"
) -> tuple[float, float, dict[str, float], object]:
    """-> (median total, min total, median per stage, last result)."""
    args = (mem[query], mem["centroids"], mem["features"], mem["counts"], VS)
    grounder.ground(*args)  # warm-up
    totals, stages = [], {s: [] for s in STAGES}
    res = None
    for _ in range(runs):
        t0 = time.perf_counter()
        res = grounder.ground(*args)
        totals.append(time.perf_counter() - t0)
        for s in STAGES:
            stages[s].append(res.timings.get(s, 0.0))
    return (
        statistics.median(totals),
        min(totals),
        {s: statistics.median(v) for s, v in stages.items()},
        res,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--sizes", default="1e3,1e4,1e5,1e6")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print(
        f"grounding benchmark: D={args.dim}, voxel {VS} m, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU"
    )
    hdr = (
        f"{'voxels':>9} {'runs':>4} {'median ms':>10} {'min ms':>8} "
        + " ".join(f"{s:>11}" for s in STAGES)
        + f" {'selected':>9} {'boxes':>5} {'top IoU':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    sys.stdout.flush()
    medians: dict[int, float] = {}
    mins: dict[int, float] = {}
    grounder = Grounder(GroundingConfig())
    mem = None
    for m in sizes:
        mem = make_memory(m, args.dim, args.seed)
        grounder.set_negatives(mem["negatives"])
        runs = 15 if m <= 10_000 else (7 if m <= 100_000 else 5)
        total, best, st, res = bench_one(grounder, mem, runs)
        medians[m], mins[m] = total, best
        iou = max((res.boxes[0].iou(p) for p in mem["planted"]), default=0.0) if res.boxes else 0.0
        print(
            f"{m:>9} {runs:>4} {total * 1e3:>10.1f} {best * 1e3:>8.1f} "
            + " ".join(f"{st[s] * 1e3:>8.1f} ms" for s in STAGES)
            + f" {res.num_selected:>9} {len(res.boxes):>5} {iou:>7.2f}"
        )
        del mem
    big = max(sizes)
    mem = make_memory(big, args.dim, args.seed, broad_fraction=0.3)
    grounder.set_negatives(mem["negatives"])
    total, _, st, res = bench_one(grounder, mem, 3, "broad_query")
    print(
        f"broad query at {big} voxels: {total * 1e3:.1f} ms median, "
        f"{res.num_selected} selected, " + ", ".join(f"{s} {st[s] * 1e3:.1f} ms" for s in STAGES)
    )
    del mem
    lo, hi = min(sizes), max(sizes)
    print("stage medians are per stage; 'min' is the fastest run (least disturbed by other load)")
    print(f"min_latency_ratio_{_tag(hi)}_vs_{_tag(lo)}: {mins[hi] / mins[lo]:.1f}x")
    print(f"latency_ratio_{_tag(hi)}_vs_{_tag(lo)}: {medians[hi] / medians[lo]:.1f}x")
    return 0


def _tag(m: int) -> str:
    e = round(np.log10(m))
    return f"1e{e}" if 10**e == m else str(m)


if __name__ == "__main__":
    sys.exit(main())
