"""Patch lifting: planted geometry, edge cases, a loop reference, and a real Middlebury frame."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from llava3d_ros.core.encoders.base import PatchGeometry
from llava3d_ros.core.geometry import (
    CameraIntrinsics,
    invert_transform,
    make_transform,
    project,
    transform_points,
    unproject,
)
from llava3d_ros.core.lifting import lift_patches
from llava3d_ros.core.transfers import TransferMeter
from tests.cuda_emulation import cuda_or_emulated

CLIP_GRID = PatchGeometry(336, 336, 14, 24, 24)  # LLaVA-3D's CLIP ViT-L/14-336 grid
VGA = CameraIntrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)
T_MAP_CAM = make_transform([1.5, -0.4, 0.9], [0.2, -0.6, 0.3, 0.7])


def patch_means_of(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Mean of an (H, W, ...) array over each patch rectangle, by a plain loop."""
    gh, gw = bounds.shape[:2]
    out = np.empty((gh, gw, *values.shape[2:]))
    for r in range(gh):
        for c in range(gw):
            r0, r1, c0, c1 = bounds[r, c]
            out[r, c] = values[r0:r1, c0:c1].reshape((-1, *values.shape[2:])).mean(axis=0)
    return out


@dataclass
class Lifted:
    """A LiftedPatches as numpy arrays, for the comparisons below."""

    points: np.ndarray
    patch_index: np.ndarray
    valid: np.ndarray
    depth_spread: np.ndarray
    support: np.ndarray

    def __len__(self) -> int:
        return len(self.patch_index)


def lift(*args: Any, **kwargs: Any) -> Lifted:
    """lift_patches, its tensor types checked, returned as numpy."""
    lp = lift_patches(*args, **kwargs)
    n = len(lp)
    assert lp.points.shape == (n, 3) and lp.points.dtype == torch.float32
    assert lp.patch_index.shape == (n,) and lp.patch_index.dtype == torch.int64
    assert lp.depth_spread.shape == (n,) and lp.depth_spread.dtype == torch.float32
    assert lp.support.shape == (n,) and lp.support.dtype == torch.int32
    assert lp.valid.dtype == torch.bool
    fields = (lp.points, lp.patch_index, lp.valid, lp.depth_spread, lp.support)
    return Lifted(*(t.cpu().numpy() for t in fields))


def check_consistent(lp: Lifted, grid: PatchGeometry) -> None:
    assert lp.valid.shape == (grid.grid_height, grid.grid_width)
    np.testing.assert_array_equal(lp.patch_index, np.flatnonzero(lp.valid.reshape(-1)))
    assert np.isfinite(lp.points).all() and (lp.support >= 1).all()
    assert (lp.depth_spread >= 0).all()


# ------------------------------------------------------------------------ planted geometry


def test_fronto_parallel_plane_lands_exactly_in_map_frame() -> None:
    # 640 / 24 is not an integer: patches are 26 or 27 columns wide (and 20 rows high).
    depth = np.full((480, 640), 2.0, np.float32)
    lp = lift(depth, VGA, CLIP_GRID, T_MAP_CAM)
    check_consistent(lp, CLIP_GRID)
    assert len(lp) == 576 and lp.valid.all()
    assert (lp.depth_spread == 0).all()
    # Expected: each patch's mean pixel, unprojected at 2 m, then moved into the map.
    bounds = CLIP_GRID.patch_pixel_bounds(480, 640)
    vv, uu = np.mgrid[0:480, 0:640].astype(np.float64)
    mean_u = patch_means_of(uu, bounds).reshape(-1)
    mean_v = patch_means_of(vv, bounds).reshape(-1)
    cam = np.stack(
        [(mean_u - 319.5) * 2.0 / 525.0, (mean_v - 239.5) * 2.0 / 525.0, np.full(576, 2.0)], axis=1
    )
    np.testing.assert_allclose(lp.points, transform_points(T_MAP_CAM, cam), atol=2e-6)
    assert lp.support.sum() == 480 * 640  # every pixel used once
    # The top-left patch (rows 0-19, cols 0-26 -> mean pixel (13, 9.5)) by hand.
    top_left = [(13.0 - 319.5) * 2 / 525, (9.5 - 239.5) * 2 / 525, 2.0]
    np.testing.assert_allclose(
        transform_points(invert_transform(T_MAP_CAM), lp.points[:1]), [top_left], atol=2e-6
    )


def test_tilted_plane_points_lie_on_plane_inside_their_patch() -> None:
    # A floor 1 m below the camera, which is pitched 20 degrees down (plane n . p = 1 in the
    # camera frame): the horizon is in view (no depth above it, as for a real sensor) and
    # patches near it span far more depth than the inlier tolerance, so only part of
    # their pixels is averaged - yet the mean of any set of plane points is on the plane.
    n = np.array([0.0, math.sin(math.radians(70)), math.cos(math.radians(70))])
    rays = unproject(np.ones((480, 640), np.float32), VGA).astype(np.float64)
    facing = rays @ n
    depth = np.where(facing > 0.02, 1.0 / np.maximum(facing, 1e-9), np.nan).astype(np.float32)
    lp = lift(depth, VGA, CLIP_GRID, T_MAP_CAM)
    check_consistent(lp, CLIP_GRID)
    b = CLIP_GRID.patch_pixel_bounds(480, 640).reshape(-1, 4)[lp.patch_index]
    area = (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])
    assert 450 < len(lp) < 576  # the rows above the horizon have no depth
    assert (lp.support < area).sum() > 100  # tolerance active on many patches
    cam = transform_points(invert_transform(T_MAP_CAM), lp.points.astype(np.float64))
    np.testing.assert_allclose(cam @ n, 1.0, atol=5e-6)
    # Each point projects inside the rectangle of the patch it is indexed as.
    uv = project(cam, VGA)
    assert ((uv[:, 0] >= b[:, 2] - 0.5) & (uv[:, 0] <= b[:, 3] - 0.5)).all()
    assert ((uv[:, 1] >= b[:, 0] - 0.5) & (uv[:, 1] <= b[:, 1] - 0.5)).all()


def small_setup() -> tuple[CameraIntrinsics, PatchGeometry]:
    # 2x2 grid over a 20x20 image: 10x10 = 100-pixel patches.
    return CameraIntrinsics(100.0, 100.0, 9.5, 9.5, 20, 20), PatchGeometry(28, 28, 14, 2, 2)


def test_depth_edge_takes_dominant_surface() -> None:
    intr, grid = small_setup()
    depth = np.full((20, 20), 3.0, np.float32)
    depth[0:10, 0:6] = 1.0  # patch 0: 60 % foreground at 1 m, 40 % background at 3 m
    depth[0:10, 10:14] = 1.0  # patch 1: 40 % foreground -> background wins
    depth[10:20, 0:5] = 1.0  # patch 2: 50/50 -> the lower median, an actual surface
    lp = lift(depth, intr, grid)
    z = lp.points[:, 2]
    np.testing.assert_allclose(z, [1.0, 3.0, 1.0, 3.0], atol=1e-6)
    np.testing.assert_array_equal(lp.support, [60, 60, 50, 100])
    # A plain mean would float at 1.8 m / 2.2 m / 2.0 m, on neither surface.
    # Foreground point is the centroid of the foreground pixels only (cols 0-5 -> u = 2.5).
    np.testing.assert_allclose(lp.points[0], [(2.5 - 9.5) / 100, (4.5 - 9.5) / 100, 1.0], atol=1e-6)
    # depth_spread separates straddling patches from flat ones.
    assert lp.depth_spread[3] == 0.0
    assert min(lp.depth_spread[:3]) >= 0.9


def test_spurious_readings_and_holes_are_ignored() -> None:
    intr, grid = small_setup()
    rng = np.random.default_rng(0)
    depth = np.full((20, 20), 2.0, np.float32)
    r = rng.random((20, 20))
    depth[r < 0.3] = 0.0  # holes (16UC1-style)
    depth[(r >= 0.3) & (r < 0.35)] = np.nan
    depth[(r >= 0.35) & (r < 0.38)] = np.inf
    depth[(r >= 0.38) & (r < 0.41)] = -1.0
    depth[(r >= 0.41) & (r < 0.46)] = 15.0  # multipath / far flying pixels
    depth[(r >= 0.46) & (r < 0.49)] = 0.25  # dust / near flying pixels
    lp = lift(depth, intr, grid)
    assert len(lp) == 4
    np.testing.assert_allclose(lp.points[:, 2], 2.0, atol=1e-6)
    good = (r >= 0.49).reshape(2, 10, 2, 10).transpose(0, 2, 1, 3).reshape(4, -1).sum(1)
    np.testing.assert_array_equal(lp.support, good)
    # max_depth turns the 15 m readings into holes; the answer is unchanged.
    lp2 = lift(depth, intr, grid, max_depth=10.0)
    np.testing.assert_allclose(lp2.points, lp.points, atol=1e-6)


def test_min_valid_fraction_threshold() -> None:
    intr, grid = small_setup()
    depth = np.full((20, 20), np.nan, np.float32)
    depth[0:10, 0:10].flat[:25] = 1.0  # patch 0: exactly 25 % valid
    depth[0:10, 10:20].flat[:24] = 1.0  # patch 1: 24 %
    depth[10, 0] = 1.0  # patch 2: one pixel
    lp = lift(depth, intr, grid)  # default 0.25
    np.testing.assert_array_equal(lp.valid, [[True, False], [False, False]])
    lp = lift(depth, intr, grid, min_valid_fraction=0.0)
    np.testing.assert_array_equal(lp.valid, [[True, True], [True, False]])  # needs >= 1 pixel
    lp = lift(depth, intr, grid, min_valid_fraction=0.24)
    np.testing.assert_array_equal(lp.patch_index, [0, 1])


@pytest.mark.parametrize("fill", [np.nan, 0.0, np.inf, -2.0])
def test_frame_without_valid_depth_gives_no_points(fill: float) -> None:
    depth = np.full((480, 640), fill, np.float32)
    lp = lift(depth, VGA, CLIP_GRID, T_MAP_CAM, min_valid_fraction=0.0)
    check_consistent(lp, CLIP_GRID)
    assert len(lp) == 0 and lp.points.shape == (0, 3) and not lp.valid.any()


def test_input_validation() -> None:
    depth = np.full((480, 640), 1.0, np.float32)
    with pytest.raises(ValueError, match="scaled"):
        lift(depth[:240], VGA, CLIP_GRID)
    with pytest.raises(ValueError, match="same size"):
        lift(depth, VGA, CLIP_GRID, image_shape=(720, 1280, 3))
    lift(depth, VGA, CLIP_GRID, image_shape=(480, 640, 3))  # matching colour: fine
    with pytest.raises(ValueError, match="depth_to_meters"):
        lift(np.full((480, 640), 1000, np.uint16), VGA, CLIP_GRID)
    with pytest.raises(ValueError, match="H, W"):
        lift(depth[..., None], VGA, CLIP_GRID)
    bad_t = np.eye(4)
    bad_t[0, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        lift(depth, VGA, CLIP_GRID, bad_t)
    with pytest.raises(ValueError, match="min_valid_fraction"):
        lift(depth, VGA, CLIP_GRID, min_valid_fraction=1.5)
    with pytest.raises(ValueError, match="max_depth"):
        lift(depth, VGA, CLIP_GRID, max_depth=float("nan"))
    with pytest.raises(ValueError, match="too small"):
        lift(depth[:10, :10], VGA.scaled(10, 10), CLIP_GRID)


# ------------------------------------------------------------------------ torch and devices


def noisy_room_depth(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    depth = (1.0 + np.add.outer(np.arange(480), np.arange(640)) / 400.0).astype(np.float32)
    depth += rng.normal(0.0, 0.01, depth.shape).astype(np.float32)
    depth[rng.random(depth.shape) < 0.2] = np.nan
    depth[100:200, 300:400] = 0.6  # a box in front
    return depth


def test_torch_depth_gives_the_numpy_result_and_min_depth_masks_like_holes() -> None:
    depth = noisy_room_depth()
    a = lift(depth, VGA, CLIP_GRID, T_MAP_CAM)
    b = lift(torch.from_numpy(depth), VGA, CLIP_GRID, T_MAP_CAM)
    for x, y in zip(vars(a).values(), vars(b).values(), strict=True):
        np.testing.assert_array_equal(x, y)
    # min_depth: the box at 0.6 m becomes holes, exactly as if its pixels were NaN.
    holes = depth.copy()
    holes[holes < 0.7] = np.nan
    c = lift(depth, VGA, CLIP_GRID, T_MAP_CAM, min_depth=0.7)
    d = lift(holes, VGA, CLIP_GRID, T_MAP_CAM)
    np.testing.assert_array_equal(c.patch_index, d.patch_index)
    np.testing.assert_allclose(c.points, d.points, atol=1e-6)
    assert len(c) < len(a)
    with pytest.raises(ValueError, match="min_depth"):
        lift(depth, VGA, CLIP_GRID, min_depth=-1.0)
    with pytest.raises(ValueError, match="depth_to_meters"):
        lift(torch.ones(480, 640, dtype=torch.int32), VGA, CLIP_GRID)


def test_lifting_waits_for_the_device_once() -> None:
    """Masks instead of boolean indexing: the only sync is the count of lifted patches, so
    on a GPU the keyframe's points never make the host wait more than once."""
    depth = torch.from_numpy(noisy_room_depth())
    with TransferMeter() as meter:
        lp = lift_patches(depth, VGA, CLIP_GRID, T_MAP_CAM, max_depth=5.0, min_depth=0.1)
    assert len(lp) > 500
    assert meter.counts.syncs == 1, meter.counts.summary()
    assert meter.counts.h2d == meter.counts.d2h == 0


def test_lifting_on_cuda_matches_the_cpu() -> None:
    """On the GPU where there is one, else on the emulated device (placement, not kernels)."""
    depth = noisy_room_depth()
    cpu = lift(depth, VGA, CLIP_GRID, T_MAP_CAM)
    with cuda_or_emulated():
        gpu = lift(depth, VGA, CLIP_GRID, T_MAP_CAM, device="cuda")
        # The patch layout went up with the first frame of this shape; from the second:
        with TransferMeter() as meter:
            lp = lift_patches(depth, VGA, CLIP_GRID, T_MAP_CAM, device="cuda")
    assert lp.points.is_cuda and lp.patch_index.is_cuda
    assert meter.counts.d2h == 0, meter.counts.summary()  # nothing comes back to the host
    assert meter.counts.h2d <= 2, meter.counts.where  # the depth image and the pose
    assert meter.counts.syncs == 1  # the patch count
    np.testing.assert_array_equal(gpu.patch_index, cpu.patch_index)
    np.testing.assert_array_equal(gpu.support, cpu.support)
    np.testing.assert_allclose(gpu.points, cpu.points, atol=1e-5)
    np.testing.assert_allclose(gpu.depth_spread, cpu.depth_spread, atol=1e-6)


# ------------------------------------------------------------------------ loop reference


def reference_lift(
    depth: np.ndarray,
    intr: CameraIntrinsics,
    grid: PatchGeometry,
    min_valid_fraction: float,
    rel_tol: float,
    abs_tol: float,
    max_depth: float,
) -> dict[int, tuple[np.ndarray, float, int]]:
    """The documented algorithm, one patch at a time."""
    pts = unproject(np.where(np.isfinite(depth), depth, np.nan), intr).astype(np.float64)
    out = {}
    bounds = grid.patch_pixel_bounds(*depth.shape)
    for r in range(grid.grid_height):
        for c in range(grid.grid_width):
            r0, r1, c0, c1 = bounds[r, c]
            z = depth[r0:r1, c0:c1].reshape(-1).astype(np.float64)
            p = pts[r0:r1, c0:c1].reshape(-1, 3)
            ok = np.isfinite(z) & (z > 0) & (z <= max_depth)
            nv = int(ok.sum())
            if nv == 0 or nv < min_valid_fraction * z.size:
                continue
            zs = np.sort(z[ok])
            med = zs[(nv - 1) // 2]
            spread = 0.5 * (zs[(3 * (nv - 1)) // 4] - zs[(nv - 1) // 4])
            inl = ok & (np.abs(z - med) <= max(abs_tol, rel_tol * med))
            out[r * grid.grid_width + c] = (p[inl].mean(axis=0), spread, int(inl.sum()))
    return out


@pytest.mark.parametrize(
    ("h", "w", "gh", "gw"), [(97, 131, 7, 9), (480, 640, 24, 24), (50, 41, 16, 16)]
)
def test_matches_loop_reference(h: int, w: int, gh: int, gw: int) -> None:
    rng = np.random.default_rng(h * w)
    intr = CameraIntrinsics(300.0, 310.0, w / 2 - 3.2, h / 2 + 1.7, w, h)
    grid = PatchGeometry(gh * 14, gw * 14, 14, gh, gw)
    # Smooth surface + steps + noise + every kind of invalid value.
    yy, xx = np.mgrid[0:h, 0:w]
    depth = (
        2.0
        + 0.5 * np.sin(xx / 9.0)
        + (yy > h / 2) * 1.5
        + (xx > w / 3) * 0.7
        + rng.normal(0, 0.03, (h, w))
    ).astype(np.float32)
    r = rng.random((h, w))
    depth[r < 0.35] = 0.0
    depth[(r >= 0.35) & (r < 0.40)] = np.nan
    depth[(r >= 0.40) & (r < 0.42)] = np.inf
    depth[(r >= 0.42) & (r < 0.44)] = 30.0  # beyond max_depth
    depth[(r >= 0.44) & (r < 0.46)] = 9.0
    depth[: h // 5, : w // 4] = 0.0  # a large hole: those patches drop out
    frac, rel, abs_ = 0.3, 0.04, 0.05
    lp = lift(depth, intr, grid, None, frac, rel_tolerance=rel, abs_tolerance=abs_, max_depth=20.0)
    ref = reference_lift(depth, intr, grid, frac, rel, abs_, 20.0)
    check_consistent(lp, grid)
    assert 0 < len(lp) < grid.num_patches  # the hole removed some patches
    assert lp.patch_index.tolist() == sorted(ref)
    np.testing.assert_allclose(
        lp.points, np.array([ref[i][0] for i in lp.patch_index]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(lp.depth_spread, [ref[i][1] for i in lp.patch_index], atol=1e-6)
    np.testing.assert_array_equal(lp.support, [ref[i][2] for i in lp.patch_index])


def test_map_frame_is_camera_frame_moved_by_t() -> None:
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 4.0, (480, 640)).astype(np.float32)
    cam = lift(depth, VGA, CLIP_GRID)
    world = lift(depth, VGA, CLIP_GRID, T_MAP_CAM)
    np.testing.assert_array_equal(cam.patch_index, world.patch_index)
    np.testing.assert_allclose(world.points, transform_points(T_MAP_CAM, cam.points), atol=1e-5)
    # float64 and non-contiguous (a view into a bigger buffer) depth give the same answer.
    big = np.zeros((480, 1280), np.float64)
    big[:, ::2] = depth
    again = lift(big[:, ::2], VGA, CLIP_GRID)
    np.testing.assert_allclose(again.points, cam.points, atol=1e-6)


# ------------------------------------------------------------------------ real data

# Middlebury 2014 "Motorcycle", as shipped (4x down-sampled) by scikit-image; calibration
# from skimage.data.stereo_motorcycle's docstring (valid for the down-sampled images).
MB_F, MB_CX, MB_CY, MB_DOFFS, MB_BASELINE_M = 994.978, 311.193, 254.877, 31.086, 0.193001


@pytest.fixture(scope="module")
def middlebury() -> dict[str, np.ndarray | CameraIntrinsics]:
    from skimage.data import stereo_motorcycle

    _, _, disp = stereo_motorcycle()
    # Pixels without ground truth are inf in the shipped file (the docstring says NaN).
    gt = np.where(np.isfinite(disp), MB_BASELINE_M * MB_F / (disp + MB_DOFFS), np.nan)
    gt = gt.astype(np.float32)
    h, w = gt.shape
    intr = CameraIntrinsics(MB_F, MB_F, MB_CX, MB_CY, w, h)

    # A bad depth sensor: 1 % multiplicative noise, 30 % dropouts (0), 5 % NaN, 2 % far
    # multipath readings (8-20 m), 1 % near flying pixels (0.2-0.6 m). Seeded.
    rng = np.random.default_rng(0)
    noisy = gt * (1.0 + 0.01 * rng.standard_normal(gt.shape).astype(np.float32))
    r = rng.random(gt.shape)
    noisy[r < 0.30] = 0.0
    noisy[(r >= 0.30) & (r < 0.35)] = np.nan
    far = (r >= 0.35) & (r < 0.37)
    noisy[far] = rng.uniform(8.0, 20.0, int(far.sum()))
    near = (r >= 0.37) & (r < 0.38)
    noisy[near] = rng.uniform(0.2, 0.6, int(near.sum()))
    return {"gt": gt, "noisy": noisy, "intr": intr}


def surface_errors(
    points: np.ndarray, patch_index: np.ndarray, gt_pts: np.ndarray, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: distance to the nearest ground-truth point of that patch (is the point on
    the real surface?) and to the median of the patch's ground-truth points."""
    near, to_median = [], []
    for p, i in zip(points, patch_index, strict=True):
        r0, r1, c0, c1 = bounds.reshape(-1, 4)[i]
        gtp = gt_pts[r0:r1, c0:c1].reshape(-1, 3)
        gtp = gtp[np.isfinite(gtp[:, 2])]
        near.append(np.linalg.norm(gtp - p, axis=1).min())
        to_median.append(np.linalg.norm(np.median(gtp, axis=0) - p))
    return np.array(near), np.array(to_median)


def test_middlebury_lifting_beats_centre_pixel(middlebury: dict) -> None:
    gt, noisy, intr = middlebury["gt"], middlebury["noisy"], middlebury["intr"]
    assert gt.shape == (500, 741)
    assert np.nanmin(gt) > 2.0 and np.nanmax(gt) < 5.1  # the scene spans ~2.1-5.0 m
    bounds = CLIP_GRID.patch_pixel_bounds(*gt.shape)
    gt_pts = unproject(gt, intr)
    has_gt = np.array(
        [np.isfinite(gt[r0:r1, c0:c1]).any() for r0, r1, c0, c1 in bounds.reshape(-1, 4)]
    )
    assert has_gt.all()

    lp = lift(noisy, intr, CLIP_GRID)
    check_consistent(lp, CLIP_GRID)
    assert len(lp) == 576  # ~60 % valid everywhere: every patch clears min_valid_fraction
    ours_near, ours_med = surface_errors(lp.points, lp.patch_index, gt_pts, bounds)

    # LLaVA-3D style: the centre pixel of each patch, zero depth not masked (a uint16 PNG
    # stores every invalid pixel as 0, so NaN becomes 0 too).
    zero_filled = np.nan_to_num(noisy, nan=0.0)
    rc = (bounds[..., 0] + bounds[..., 1]) // 2
    cc = (bounds[..., 2] + bounds[..., 3]) // 2
    zc = zero_filled[rc, cc].astype(np.float64)
    base = np.stack([(cc - MB_CX) * zc / MB_F, (rc - MB_CY) * zc / MB_F, zc], -1).reshape(-1, 3)
    base_near, base_med = surface_errors(base, np.arange(576), gt_pts, bounds)

    # Measured (seed 0): ours nearest-surface error median 3.8 mm, p95 24 mm, max 40 mm;
    # to the patch's GT median 5.4 mm / 49 mm. Centre pixel: 29 mm / 4.46 m, 40 % of
    # patches off by > 10 cm (holes put them at the camera origin).
    assert np.median(ours_near) < 0.006
    assert np.percentile(ours_near, 95) < 0.035
    assert ours_near.max() < 0.06
    assert np.median(ours_med) < 0.008
    assert np.percentile(ours_med, 95) < 0.07
    assert np.mean(ours_near > 0.10) == 0.0

    assert np.median(base_near) > 4 * np.median(ours_near)
    assert np.percentile(base_near, 95) > 2.0
    assert np.mean(base_near > 0.10) > 0.3
    assert np.median(base_med) > 5 * np.median(ours_med)


def test_middlebury_depth_spread_flags_edge_patches(middlebury: dict) -> None:
    gt, noisy, intr = middlebury["gt"], middlebury["noisy"], middlebury["intr"]
    bounds = CLIP_GRID.patch_pixel_bounds(*gt.shape).reshape(-1, 4)
    gt_range = np.array(
        [np.nanmax(gt[r0:r1, c0:c1]) - np.nanmin(gt[r0:r1, c0:c1]) for r0, r1, c0, c1 in bounds]
    )
    lp = lift(noisy, intr, CLIP_GRID)
    spread = lp.depth_spread[np.argsort(lp.patch_index)]
    flat, edge = gt_range < 0.1, gt_range > 0.3
    assert flat.sum() > 50 and edge.sum() > 50
    # Measured: median 26 mm on flat patches (the 1 % noise), 81 mm on edge patches.
    assert np.median(spread[edge]) > 2.5 * np.median(spread[flat])
