"""Give every encoder patch one 3D point from the depth pixels it covers.

LLaVA-3D reads the depth of a single pixel per patch and keeps zero depth, so a hole
puts the patch at the camera origin and a patch on an object boundary may land on
either surface (or on a flying pixel between them). Here each patch uses all the
valid depth pixels of its source rectangle:

1. pixels with NaN / inf / <= 0 depth (and beyond ``max_depth``) are ignored; a patch
   with fewer than ``min_valid_fraction`` valid pixels gets no point;
2. the patch depth is the *lower median* of its valid depths - always an actual sample,
   so on a 50/50 edge it sits on one surface instead of in the gap between them;
3. the point is the mean of the 3D points of the valid pixels whose depth is within
   ``max(abs_tolerance, rel_tolerance * median)`` of that median: the dominant surface
   only, averaged for noise, while outliers (spurious far / near readings) and the other
   side of a depth edge are excluded. On a planar patch the mean of the points lies on
   the plane exactly.

Why not simpler statistics: a masked mean of all valid pixels is dragged by every
spurious reading and lands between surfaces on edges; the median depth alone, put on
the patch-centre ray, is robust but keeps the single-sample noise of one depth value
and puts edge patches on the centre ray even when the dominant surface is off it. On a
real frame with a bad simulated sensor (tests/unit/test_lifting.py, Middlebury
motorcycle, 24x24 grid) the nearest-surface error is 3.8 mm median / 24 mm p95 here,
5.3 / 34 mm for median-on-centre-ray, 179 / 453 mm for the masked mean, and 29 mm /
4.5 m for LLaVA-3D's centre pixel.

The computation is vectorised over patches: every patch's pixels are gathered (one
cached index tensor per image size and device) into a padded (num_patches,
max_patch_pixels) tensor, and one row-wise sort gives all medians and quartiles. It is
torch on the memory's device, so on a GPU the depth goes up once and the points stay
there for fusion; the only host sync is the count of patches that got a point. VGA with a
24x24 grid: ~4 ms on this 2-core CPU (the numpy version it replaced took ~5 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from llava3d_ros.core.encoders.base import PatchGeometry
from llava3d_ros.core.geometry import CameraIntrinsics, validate_transform

__all__ = ["LiftedPatches", "lift_patches"]


@dataclass
class LiftedPatches:
    """The patches of one frame that received a 3D point (torch tensors, one device).

    ``points[i]`` belongs to patch ``patch_index[i]``, a row-major flat index into the
    encoder grid (``row * grid_w + col``), so the matching features of a
    (grid_h, grid_w, C) feature map are ``features.reshape(-1, C)[patch_index]``.
    """

    points: torch.Tensor  # (N, 3) float32 in the map frame (camera optical frame if no T)
    patch_index: torch.Tensor  # (N,) int64, ascending
    valid: torch.Tensor  # (grid_h, grid_w) bool; valid.reshape(-1)[patch_index] is all True
    depth_spread: torch.Tensor  # (N,) float32: half interquartile range of valid depths, m
    support: torch.Tensor  # (N,) int32: pixels averaged into the point (a fusion weight)

    def __len__(self) -> int:
        return int(self.patch_index.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (int(self.valid.shape[0]), int(self.valid.shape[1]))

    @property
    def device(self) -> torch.device:
        return self.points.device

    @classmethod
    def empty(cls, grid_h: int, grid_w: int, device: torch.device | None = None) -> LiftedPatches:
        return cls(
            points=torch.zeros((0, 3), dtype=torch.float32, device=device),
            patch_index=torch.zeros((0,), dtype=torch.int64, device=device),
            valid=torch.zeros((grid_h, grid_w), dtype=torch.bool, device=device),
            depth_spread=torch.zeros((0,), dtype=torch.float32, device=device),
            support=torch.zeros((0,), dtype=torch.int32, device=device),
        )


@dataclass(frozen=True)
class _PatchLayout:
    """Where each patch's pixels are, padded to the largest patch (cached per image size
    and device)."""

    gather: torch.Tensor  # (M, P) flat pixel index into the image + 1 padding element
    rows: torch.Tensor  # (M, ph) source row of each slot row of each patch (padding clipped)
    cols: torch.Tensor  # (M, pw) source column of each slot column of each patch
    area: torch.Tensor  # (M,) real pixel count of each patch


@lru_cache(maxsize=16)
def _patch_layout(
    height: int, width: int, geometry: PatchGeometry, device: torch.device
) -> _PatchLayout:
    bounds = geometry.patch_pixel_bounds(height, width)
    r0, r1 = bounds[:, 0, 0], bounds[:, 0, 1]
    c0, c1 = bounds[0, :, 2], bounds[0, :, 3]
    ph, pw = int((r1 - r0).max()), int((c1 - c0).max())
    ro, co = np.arange(ph), np.arange(pw)
    row_ok = ro[None, :] < (r1 - r0)[:, None]  # (gh, ph)
    col_ok = co[None, :] < (c1 - c0)[:, None]  # (gw, pw)
    rows = np.minimum(r0[:, None] + ro[None, :], height - 1)
    cols = np.minimum(c0[:, None] + co[None, :], width - 1)
    flat = rows[:, None, :, None] * width + cols[None, :, None, :]  # (gh, gw, ph, pw)
    slot_ok = row_ok[:, None, :, None] & col_ok[None, :, None, :]
    # Padding slots read element height*width, a 0 (= invalid) appended to the depth.
    flat = np.where(slot_ok, flat, height * width).reshape(geometry.num_patches, ph * pw)
    area = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).reshape(-1)
    gh, gw = geometry.grid_height, geometry.grid_width
    patch_rows = np.repeat(rows, gw, axis=0)  # patch m = (m // gw, m % gw)
    patch_cols = np.tile(cols, (gh, 1))
    return _PatchLayout(
        *(
            torch.as_tensor(a, dtype=torch.int64, device=device)
            for a in (flat, patch_rows, patch_cols, area)
        )
    )


def lift_patches(
    depth_m: np.ndarray | torch.Tensor,
    intrinsics: CameraIntrinsics,
    geometry: PatchGeometry,
    T_map_camera: np.ndarray | None = None,  # noqa: N803 - frame-suffix naming of transforms
    min_valid_fraction: float = 0.25,
    *,
    rel_tolerance: float = 0.05,
    abs_tolerance: float = 0.02,
    max_depth: float | None = None,
    min_depth: float | None = None,
    image_shape: tuple[int, ...] | None = None,
    device: torch.device | str | None = None,
) -> LiftedPatches:
    """Lift the patches of one frame to 3D.

    Args:
        depth_m: (H, W) z-depth in metres, NaN (or inf / <= 0) where invalid, registered
            to and the same size as the colour image the encoder saw; numpy or torch.
        intrinsics: pinhole intrinsics of that (H, W) image.
        geometry: the encoder's patch grid; patch (r, c) covers
            ``geometry.patch_pixel_bounds(H, W)[r, c]`` (resize or centre crop).
        T_map_camera: optional 4x4 ``map <- camera_optical`` transform; points come out in
            the map frame if given, in the camera optical frame otherwise.
        min_valid_fraction: a patch needs at least this fraction of its pixels with valid
            depth to get a point (and at least one).
        rel_tolerance, abs_tolerance: pixels within ``max(abs, rel * median)`` metres of
            the patch's median depth are averaged into its point. 5 % / 2 cm is several
            sigma of RGB-D sensor noise (1-2 % of depth) and keeps most of a slanted
            surface; depth steps larger than that (10 cm at 2 m) are split, smaller ones
            are averaged over, which moves the point by less than the step.
        max_depth, min_depth: optional range in metres; readings outside are invalid.
        image_shape: shape of the colour image, if the caller wants that checked too.
        device: where to compute and return the tensors (default: the depth tensor's
            device, or the CPU for a numpy depth).

    Returns:
        LiftedPatches with N <= grid_h * grid_w points (N = 0 if no patch has enough
        valid depth; that is not an error).
    """
    if isinstance(depth_m, torch.Tensor):
        if not depth_m.is_floating_point():
            raise ValueError(_not_metres(depth_m.dtype))
        dev = torch.device(device) if device is not None else depth_m.device
        depth = depth_m.to(dev, torch.float32)
    else:
        arr = np.asarray(depth_m)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(_not_metres(arr.dtype))
        dev = torch.device(device) if device is not None else torch.device("cpu")
        depth = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(dev)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an (H, W) array in metres, got shape {tuple(depth.shape)}")
    h, w = depth.shape
    if image_shape is not None and tuple(image_shape[:2]) != (h, w):
        raise ValueError(
            f"depth ({w}x{h}) and colour ({image_shape[1]}x{image_shape[0]}) must be the "
            "same size for lifting; resize the depth (nearest neighbour) first"
        )
    if intrinsics.shape != (h, w):
        raise ValueError(
            f"depth is {w}x{h} but the intrinsics are for {intrinsics.width}x"
            f"{intrinsics.height}; use CameraIntrinsics.scaled() to match them"
        )
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise ValueError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
    if not (rel_tolerance >= 0.0 and abs_tolerance >= 0.0):
        raise ValueError("rel_tolerance and abs_tolerance must be non-negative")
    if max_depth is not None and not max_depth > 0.0:
        raise ValueError(f"max_depth must be positive (metres), got {max_depth}")
    if min_depth is not None and not min_depth >= 0.0:
        raise ValueError(f"min_depth must be >= 0 (metres), got {min_depth}")
    transform = None if T_map_camera is None else validate_transform(T_map_camera, "T_map_camera")

    gh, gw = geometry.grid_height, geometry.grid_width
    if h < gh or w < gw:
        raise ValueError(f"a {w}x{h} image is too small for a {gw}x{gh} patch grid")
    layout = _patch_layout(h, w, geometry, dev)
    m = gh * gw
    ph, pw = layout.rows.shape[1], layout.cols.shape[1]

    # Invalid depth is encoded as 0 from here on (not NaN): float ops on 0 stay cheap and
    # branch-free (z * mask), and valid depths are > 0, so 0 is unambiguous. Masks, not
    # boolean indexing: nothing here waits for the device until the final count.
    flat = torch.zeros(h * w + 1, dtype=torch.float32, device=dev)  # + the padding element
    d = torch.nan_to_num(depth.reshape(-1), nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)
    if max_depth is not None:
        d.masked_fill_(d > max_depth, 0.0)
    if min_depth is not None:
        d.masked_fill_(d < min_depth, 0.0)
    flat[:-1] = d

    z = flat[layout.gather]  # (M, P), patch-major; padding slots read 0
    count = torch.count_nonzero(z, dim=1)
    keep = (count > 0) & (count >= min_valid_fraction * layout.area)

    # One row-wise sort gives the lower median and the quartiles of the valid depths, which
    # follow the (P - count) leading zeros. Rows without valid depth give junk, dropped below.
    zs = _sort_rows(z)
    first = z.shape[1] - count  # index of the smallest valid depth
    last = count - 1

    def order_stat(offset: torch.Tensor) -> torch.Tensor:
        pos = (first + offset).clamp_(0, z.shape[1] - 1)
        return zs.gather(1, pos[:, None])[:, 0]

    med = order_stat(torch.div(last, 2, rounding_mode="floor"))
    # depth_spread: half the interquartile range, a robust spread like the MAD (equal to it
    # for symmetric noise) that comes free from the sort; large when a patch straddles an edge.
    q3 = order_stat(torch.div(3 * last, 4, rounding_mode="floor"))
    spread = 0.5 * (q3 - order_stat(torch.div(last, 4, rounding_mode="floor")))

    tol = torch.clamp_min(rel_tolerance * med, abs_tolerance)
    lo = torch.clamp_min(med - tol, float(np.finfo(np.float32).tiny))  # never admit 0s
    hi = med + tol
    inlier = (z >= lo[:, None]) & (z <= hi[:, None])  # the median pixel always passes
    support = torch.count_nonzero(inlier, dim=1)
    zi = (z * inlier).reshape(m, ph, pw)

    # Mean of the inlier points. X = z * (u - cx) / fx is separable, so sum X over a patch
    # = sum over its columns of (column sum of z) * (u - cx) / fx; likewise for Y with rows.
    # The sums of 20-30 depths are float32 (1e-7 relative); float64 from there on, where
    # the arrays are small, so points far from the map origin keep their precision.
    xf = (torch.arange(w, dtype=torch.float64, device=dev) - intrinsics.cx) / intrinsics.fx
    yf = (torch.arange(h, dtype=torch.float64, device=dev) - intrinsics.cy) / intrinsics.fy
    col_sums = zi.sum(dim=1).double()  # (M, pw)
    row_sums = zi.sum(dim=2).double()  # (M, ph)
    pts = torch.stack(
        [
            (col_sums * xf[layout.cols]).sum(dim=1),
            (row_sums * yf[layout.rows]).sum(dim=1),
            col_sums.sum(dim=1),
        ],
        dim=1,
    )
    pts = pts / support.clamp_min(1)[:, None]
    if transform is not None:
        t = torch.as_tensor(transform, dtype=torch.float64, device=dev)
        pts = pts @ t[:3, :3].T + t[:3, 3]

    idx = torch.nonzero(keep).squeeze(1)  # the one host sync: how many patches got a point
    if idx.numel() == 0:
        return LiftedPatches.empty(gh, gw, dev)
    return LiftedPatches(
        points=pts[idx].to(torch.float32),
        patch_index=idx,
        valid=keep.reshape(gh, gw),
        depth_spread=spread[idx],
        support=support[idx].to(torch.int32),
    )


def _sort_rows(z: torch.Tensor) -> torch.Tensor:
    if z.device.type == "cpu":
        # numpy's vectorised sort is ~14x faster than torch's on the CPU (VGA, 24x24 grid:
        # 0.4 vs 5 ms on this machine); zero-copy both ways.
        return torch.from_numpy(np.sort(z.numpy(), axis=1))
    return torch.sort(z, dim=1).values


def _not_metres(dtype: object) -> str:
    return (
        f"depth must be float metres, got dtype {dtype}; decode it with "
        "geometry.depth_to_meters() first"
    )
