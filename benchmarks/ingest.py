"""Per-keyframe ingest cost (lift + fuse) against LLaVA-3D's rebuild, and memory growth.

    .venv/bin/python benchmarks/ingest.py [--device cpu] [--frames 40] [--long 10000]

(1) Synthetic RGB-D: a camera walks through a furnished room (analytic ray casting,
    640x480 depth with 1 % noise and 2 % dropouts). Each keyframe's 24x24 patch grid
    (CLIP ViT-L/14-336 layout) carries random features, 1024 "vision" + 384 "ground" -
    the encoder is not part of this benchmark.
    ours: ``lift_patches`` (robust per-patch depth, llava3d_ros.core.lifting; an inline
    patch-centre fallback exists only for a checkout without that module) +
    ``VoxelPatchMemory.integrate`` (5 cm voxel hash, all bounds on), per keyframe. The
    memory is fresh, so this includes committing new storage pages.
    LLaVA-3D rebuild: what its released code does when the scene gets a view - unproject
    every depth pixel of every view so far (homogeneous 4x4 pose product), sample one
    xyz per patch (nearest resize of the xyz map to 24x24), voxelize the whole scene
    again at 0.2 m (round, ravel, torch.unique(return_inverse=True)) and scatter-mean
    the features (index_add + counts; torch-scatter is not used here). Its video
    processor resizes depth to 336x336 first, so that is the faithful variant; the
    variant on the raw 640x480 frames is printed as well. The baseline gets the same
    1408-channel features as ours, and the better of 1 and all torch threads.
    Timings are medians (the machine is shared and noisy); ratios divide by the median
    of ours over all keyframes, which does not grow with the scene.
(2) 10,000 keyframes through a grid of 8 m rooms with every bound on (20k voxels, 8 m
    radius, 30 s age): voxels, evictions by reason and process RSS at intervals. Uses
    128 + 64 feature channels so 10k frames fit the time budget, and casts only the 576
    patch-centre rays per frame (10k full VGA renders would dominate; lifting is timed
    in (1)).

The last line is ``speedup_vs_llava3d_rebuild: <x>x`` at 20 views (LLaVA-3D's
``num_frames``), against the 336x336 baseline.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava3d_ros.core.encoders.base import GROUND, VISION, PatchGeometry
from llava3d_ros.core.memory import VoxelPatchMemory

try:  # the real lifting module (robust per-patch statistics)
    from llava3d_ros.core.geometry import CameraIntrinsics
    from llava3d_ros.core.lifting import lift_patches

    HAVE_LIFTING = True
except ImportError:  # pragma: no cover - only while the module did not exist yet
    HAVE_LIFTING = False

W, H = 640, 480
FX = FY = 525.0
CX, CY = 319.5, 239.5
GEOM = PatchGeometry(
    input_height=336, input_width=336, patch_size=14, grid_height=24, grid_width=24
)
DIMS_FULL = {VISION: 1024, GROUND: 384}
DIMS_LONG = {VISION: 128, GROUND: 64}
ROOM = np.array([8.0, 6.0, 3.0])
# furniture: axis-aligned boxes (min, max)
BOXES = np.array(
    [
        [[1.0, 1.0, 0.0], [2.5, 2.0, 0.8]],  # table
        [[5.0, 4.0, 0.0], [7.5, 5.8, 1.0]],  # bed
        [[6.5, 0.2, 0.0], [7.8, 0.8, 2.0]],  # cabinet
        [[3.5, 2.5, 0.0], [4.0, 3.0, 0.5]],  # box
    ]
)


# --------------------------------------------------------------------- scene


def look_rotation(yaw: float, pitch: float) -> np.ndarray:
    """map <- camera_optical rotation (x right, y down, z forward) for a camera looking
    along yaw/pitch in a z-up map."""
    f = np.array(
        [math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)]
    )
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    return np.stack([r, d, f], axis=1)


def cast(
    origin: np.ndarray,
    dirs: np.ndarray,
    room_lo: np.ndarray,
    room_hi: np.ndarray,
    boxes: np.ndarray,
) -> np.ndarray:
    """Ray parameter of the first hit for rays origin + t * dirs (inside the room)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t_room = np.where(dirs > 0, (room_hi - origin) * inv, (room_lo - origin) * inv)
        t = np.min(np.where(np.isfinite(t_room), t_room, np.inf), axis=1)
        for lo, hi in boxes:
            t1, t2 = (lo - origin) * inv, (hi - origin) * inv
            near = np.nanmax(np.minimum(t1, t2), axis=1)
            far = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (near <= far) & (near > 0)
            t = np.where(hit, np.minimum(t, near), t)
    return t


def camera_rays(us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Camera-frame rays scaled to z = 1, so the ray parameter is the z-depth."""
    return np.stack([(us - CX) / FX, (vs - CY) / FY, np.ones_like(us)], axis=-1)


def room_walk(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    poses, p, yaw = [], np.array([3.0, 3.0, 1.4]), 0.0
    for _ in range(n):
        p = np.clip(p + rng.normal(scale=[0.15, 0.15, 0.02]), [0.8, 0.8, 1.0], ROOM - 0.8)
        yaw += rng.normal(scale=0.25)
        t = np.eye(4)
        t[:3, :3] = look_rotation(yaw, -0.25 + rng.normal(scale=0.05))
        t[:3, 3] = p
        poses.append(t)
    return poses


def render_depth(pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = camera_rays(u.reshape(-1), v.reshape(-1))
    dirs = rays @ pose[:3, :3].T
    z = cast(pose[:3, 3], dirs, np.zeros(3), ROOM, BOXES).reshape(H, W)
    z = z * (1.0 + 0.01 * rng.standard_normal(z.shape))
    z[rng.random(z.shape) < 0.02] = 0.0  # sensor dropouts
    return z.astype(np.float32)


# -------------------------------------------------------------------- lifting


def lift_inline(depth: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fallback used only if llava3d_ros.core.lifting is missing: median valid depth of
    each patch on the patch-centre ray."""
    b = GEOM.patch_pixel_bounds(H, W).reshape(-1, 4)
    pts, idx = [], []
    for i, (r0, r1, c0, c1) in enumerate(b):
        z = depth[r0:r1, c0:c1]
        z = z[z > 0]
        if z.size < 0.25 * (r1 - r0) * (c1 - c0):
            continue
        ray = camera_rays(np.array([(c0 + c1 - 1) / 2]), np.array([(r0 + r1 - 1) / 2]))[0]
        pts.append(ray * np.median(z))
        idx.append(i)
    p = np.asarray(pts) @ pose[:3, :3].T + pose[:3, 3]
    return p.astype(np.float32), np.asarray(idx, dtype=np.int64)


def lift(depth: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not HAVE_LIFTING:
        return lift_inline(depth, pose)
    intr = CameraIntrinsics(fx=FX, fy=FY, cx=CX, cy=CY, width=W, height=H)
    lifted = lift_patches(depth, intr, GEOM, pose)
    return lifted.points.numpy(), lifted.patch_index.numpy()


# ------------------------------------------------------------ LLaVA-3D rebuild


def llava3d_rebuild(
    depths: torch.Tensor,
    poses: torch.Tensor,
    k: torch.Tensor,
    feats: torch.Tensor,
    voxel: float = 0.2,
) -> tuple[torch.Tensor, int]:
    """depths (V, h, w), poses (V, 4, 4) map <- camera, k (4,) fx fy cx cy for (h, w),
    feats (V, 576, C) -> pooled features (U, C)."""
    v, h, w = depths.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    z = depths.reshape(v, -1)
    x = (xs.reshape(1, -1) - k[2]) * z / k[0]
    y = (ys.reshape(1, -1) - k[3]) * z / k[1]
    cam = torch.stack([x, y, z, torch.ones_like(z)], dim=-1)  # (V, hw, 4)
    world = (poses @ cam.transpose(1, 2)).transpose(1, 2)
    world = (world[..., :3] / world[..., 3:]).reshape(v, h, w, 3)
    patch_xyz = F.interpolate(
        world.permute(0, 3, 1, 2), size=(GEOM.grid_height, GEOM.grid_width), mode="nearest"
    )
    patch_xyz = patch_xyz.permute(0, 2, 3, 1).reshape(-1, 3)
    cells = torch.round(patch_xyz / voxel).long()
    cells -= cells.min(dim=0).values
    ext = cells.max(dim=0).values + 1
    keys = (cells[:, 0] * ext[1] + cells[:, 1]) * ext[2] + cells[:, 2]
    uniq, inv = torch.unique(keys, return_inverse=True)
    flat = feats.reshape(-1, feats.shape[-1])
    sums = torch.zeros(uniq.numel(), flat.shape[1]).index_add_(0, inv, flat)
    counts = torch.bincount(inv, minlength=uniq.numel()).clamp_min(1)
    return sums / counts[:, None], int(uniq.numel())


def resize_depth_nearest(depth: np.ndarray, size: int = 336) -> np.ndarray:
    r = (np.arange(size) * H / size).astype(int)
    c = (np.arange(size) * W / size).astype(int)
    return depth[r][:, c]


# --------------------------------------------------------------------- helpers


def median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def random_features(n: int, dims: dict[str, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.randn(n, d, generator=g) for k, d in dims.items()}


# ------------------------------------------------------------------ part (1)


def bench_keyframes(args: argparse.Namespace) -> float:
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    n = args.frames
    t0 = time.perf_counter()
    poses = room_walk(n, rng)
    depths = [render_depth(p, rng) for p in poses]
    feats = [random_features(GEOM.num_patches, DIMS_FULL, g) for _ in range(n)]
    print(
        f"rendered {n} synthetic VGA depth frames in {time.perf_counter() - t0:.1f} s; "
        f"lifting: {'llava3d_ros.core.lifting.lift_patches' if HAVE_LIFTING else 'inline'}"
    )

    dev = torch.device(args.device)
    mem = VoxelPatchMemory(
        DIMS_FULL, voxel_size=0.05, max_voxels=200_000, max_radius=10.0, max_age_s=600.0, device=dev
    )
    lift_t, fuse_t, total_t, patches = [], [], [], []
    for i in range(n):
        t_a = time.perf_counter()
        pts, idx = lift(depths[i], poses[i])
        t_b = time.perf_counter()
        sel = torch.from_numpy(idx)
        f = {k: v.index_select(0, sel).to(dev) for k, v in feats[i].items()}
        mem.integrate(
            torch.from_numpy(pts).to(dev), f, stamp=i * 0.5, robot_position=poses[i][:3, 3]
        )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_c = time.perf_counter()
        lift_t.append(t_b - t_a)
        fuse_t.append(t_c - t_b)
        total_t.append(t_c - t_a)
        patches.append(len(idx))
    print(
        f"ours: {n} keyframes, {statistics.median(patches):.0f} lifted patches/frame, "
        f"{len(mem)} voxels at the end; median lift {median_ms(lift_t):.2f} ms + fuse "
        f"{median_ms(fuse_t):.2f} ms = {median_ms(total_t):.2f} ms per keyframe"
    )
    tp = time.perf_counter()
    tokens, _ = mem.pool(VISION, 0.2, 2560)
    print(
        f"(query time, not per keyframe) pool() to {len(tokens)} LMM tokens: "
        f"{1e3 * (time.perf_counter() - tp):.1f} ms"
    )

    k_vga = torch.tensor([FX, FY, CX, CY], dtype=torch.float32)
    s = 336
    k_336 = torch.tensor(
        [FX * s / W, FY * s / H, (CX + 0.5) * s / W - 0.5, (CY + 0.5) * s / H - 0.5],
        dtype=torch.float32,
    )
    d_vga = torch.from_numpy(np.stack(depths))
    d_336 = torch.from_numpy(np.stack([resize_depth_nearest(d, s) for d in depths]))
    p_all = torch.from_numpy(np.stack(poses)).float()
    f_all = torch.stack([torch.cat([f[VISION], f[GROUND]], dim=1) for f in feats])

    lengths = [v for v in (5, 10, 20, 40) if v <= n]
    print()
    print(
        f"{'views':>5} | {'ours ms/kf':>10} | {'rebuild 336 ms':>14} | {'x':>6} | "
        f"{'rebuild VGA ms':>14} | {'x':>6} | {'tokens':>6}"
    )
    # the ratios use ours over all keyframes (it does not grow with the scene; the column
    # shows the median of the keyframes that brought the scene to that many views)
    ours_all = median_ms(total_t)
    headline = float("nan")
    for views in lengths:
        best: dict[str, float] = {}
        tokens = 0
        for threads in sorted({1, args.all_threads}):
            torch.set_num_threads(threads)
            for name, d, k in (("336", d_336, k_336), ("vga", d_vga, k_vga)):
                reps = []
                for _ in range(args.reps):
                    t = time.perf_counter()
                    _, tokens = llava3d_rebuild(d[:views], p_all[:views], k, f_all[:views])
                    reps.append(time.perf_counter() - t)
                best[name] = min(best.get(name, math.inf), median_ms(reps))
        torch.set_num_threads(args.threads)
        # ours: median over the keyframes that brought the scene to about that many views
        window = total_t[max(0, views // 2) : views]
        ours = median_ms(window)
        r336, rvga = best["336"], best["vga"]
        print(
            f"{views:>5} | {ours:>10.2f} | {r336:>14.1f} | {r336 / ours_all:>5.1f}x | "
            f"{rvga:>14.1f} | {rvga / ours_all:>5.1f}x | {tokens:>6}"
        )
        if views == 20:
            headline = r336 / ours_all
    if math.isnan(headline):  # fewer than 20 frames requested
        headline = r336 / ours_all
    print("ours is constant per keyframe (new patches only); the rebuild grows with the views")
    return headline


# ------------------------------------------------------------------ part (2)


def bench_long(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(1)
    g = torch.Generator().manual_seed(1)
    dev = torch.device(args.device)
    room = 8.0
    mem = VoxelPatchMemory(
        DIMS_LONG,
        voxel_size=0.05,
        max_voxels=args.long_max_voxels,
        max_radius=8.0,
        max_age_s=30.0,
        device=dev,
    )
    b = GEOM.patch_pixel_bounds(H, W).reshape(-1, 4).astype(np.float64)
    rays = camera_rays((b[:, 2] + b[:, 3] - 1) / 2, (b[:, 0] + b[:, 1] - 1) / 2)
    feat_pool = [random_features(GEOM.num_patches, DIMS_LONG, g) for _ in range(16)]
    p, heading = np.array([4.0, 4.0, 1.4]), 0.0
    print()
    print(
        f"long run: {args.long} keyframes, 0.5 s apart, through a grid of {room:.0f} m rooms; "
        f"bounds: max_voxels={mem.max_voxels}, max_radius={mem.max_radius} m, "
        f"max_age_s={mem.max_age_s}; features {DIMS_LONG}"
    )
    print(
        f"{'keyframe':>8} | {'voxels':>7} | {'evicted max/radius/age':>24} | "
        f"{'RSS MB':>7} | {'fuse ms (median of last block)':>30}"
    )
    times: list[float] = []
    rss_marks: dict[int, float] = {}
    step = max(1, args.long // 10)
    for i in range(1, args.long + 1):
        heading += rng.normal(scale=0.1)
        p = p + 0.15 * np.array([math.cos(heading), math.sin(heading), 0.0])
        pose = look_rotation(heading + rng.normal(scale=0.6), -0.2)
        dirs = rays @ pose.T
        lo = np.floor(p / room) * room
        lo[2] = 0.0
        hi = lo + np.array([room, room, 3.0])
        box = lo + np.array([[[3.0, 3.0, 0.0], [4.5, 4.0, 0.9]]])  # a table per room
        z = cast(p, dirs, lo, hi, box)
        pts = (p + dirs * z[:, None]).astype(np.float32)
        f = {k: v.to(dev) for k, v in feat_pool[i % 16].items()}
        t = time.perf_counter()
        mem.integrate(torch.from_numpy(pts).to(dev), f, stamp=0.5 * i, robot_position=p)
        times.append(time.perf_counter() - t)
        if i % step == 0:
            ev = mem.stats().evictions
            rss = rss_mb()
            rss_marks[i] = rss
            print(
                f"{i:>8} | {len(mem):>7} | "
                f"{ev['max_voxels']:>8}/{ev['radius']:>7}/{ev['age']:>7} | {rss:>7.0f} | "
                f"{median_ms(times[-step:]):>30.2f}"
            )
    marks = sorted(rss_marks)
    first = rss_marks[marks[min(1, len(marks) - 1)]]
    last = rss_marks[marks[-1]]
    st = mem.stats()
    print(
        f"voxels {len(mem)} <= {mem.max_voxels}; memory tensors {st.memory_bytes / 2**20:.0f} "
        f"MiB reserved; RSS change from keyframe {marks[min(1, len(marks) - 1)]} to "
        f"{marks[-1]}: {last - first:+.1f} MB"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=40, help="keyframes in part (1)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each rebuild")
    ap.add_argument("--long", type=int, default=10_000, help="keyframes in part (2)")
    ap.add_argument("--long-max-voxels", type=int, default=20_000)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for ours (the baseline also runs with all cores)",
    )
    args = ap.parse_args()
    all_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, {os.cpu_count()} CPUs; ours runs "
        f"with {args.threads} torch thread(s), the baseline with 1 and {all_threads} "
        "(the faster counts)"
    )
    args.all_threads = all_threads
    t0 = time.perf_counter()
    headline = bench_keyframes(args) if args.frames > 0 else float("nan")
    if args.long > 0:
        bench_long(args)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(f"speedup_vs_llava3d_rebuild: {headline:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
