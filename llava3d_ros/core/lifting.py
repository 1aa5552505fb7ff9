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
cached index array per image size) into a padded (num_patches, max_patch_pixels) array,
and one row-wise sort gives all medians and quartiles. ~5 ms for VGA with a 24x24 grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from llava3d_ros.core.encoders.base import PatchGeometry
from llava3d_ros.core.geometry import CameraIntrinsics, validate_transform

__all__ = ["LiftedPatches", "lift_patches"]


@dataclass
class LiftedPatches:
    """The patches of one frame that received a 3D point.

    ``points[i]`` belongs to patch ``patch_index[i]``, a row-major flat index into the
    encoder grid (``row * grid_w + col``), so the matching features of a
    (grid_h, grid_w, C) feature map are ``features.reshape(-1, C)[patch_index]``.
    """

    points: NDArray[np.float32]  # (N, 3) in the map frame (camera optical frame if no T)
    patch_index: NDArray[np.int64]  # (N,) ascending
    valid: NDArray[np.bool_]  # (grid_h, grid_w); valid.reshape(-1)[patch_index] is all True
    depth_spread: NDArray[np.float32]  # (N,) half interquartile range of valid depths, metres
    support: NDArray[np.int32]  # (N,) pixels averaged into the point (a fusion weight)

    def __len__(self) -> int:
        return int(self.patch_index.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (int(self.valid.shape[0]), int(self.valid.shape[1]))

    @classmethod
    def empty(cls, grid_h: int, grid_w: int) -> LiftedPatches:
        return cls(
            points=np.zeros((0, 3), np.float32),
            patch_index=np.zeros((0,), np.int64),
            valid=np.zeros((grid_h, grid_w), bool),
            depth_spread=np.zeros((0,), np.float32),
            support=np.zeros((0,), np.int32),
        )


@dataclass(frozen=True)
class _PatchLayout:
    """Where each patch's pixels are, padded to the largest patch (cached per image size)."""

    gather: np.ndarray  # (M, P) flat pixel index into the image + 1 padding element
    rows: np.ndarray  # (grid_h, ph) source row of each slot row (padding clipped in range)
    cols: np.ndarray  # (grid_w, pw) source column of each slot column
    area: np.ndarray  # (M,) real pixel count of each patch


@lru_cache(maxsize=16)
def _patch_layout(height: int, width: int, geometry: PatchGeometry) -> _PatchLayout:
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
    index_dtype = np.int32 if height * width < 2**31 else np.int64
    area = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).reshape(-1)
    layout = _PatchLayout(flat.astype(index_dtype), rows, cols, area)
    for arr in (layout.gather, layout.rows, layout.cols, layout.area):
        arr.setflags(write=False)  # shared by every call through the cache
    return layout


def lift_patches(
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics,
    geometry: PatchGeometry,
    T_map_camera: np.ndarray | None = None,  # noqa: N803 - frame-suffix naming of transforms
    min_valid_fraction: float = 0.25,
    *,
    rel_tolerance: float = 0.05,
    abs_tolerance: float = 0.02,
    max_depth: float | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> LiftedPatches:
    """Lift the patches of one frame to 3D.

    Args:
        depth_m: (H, W) z-depth in metres, NaN (or inf / <= 0) where invalid, registered
            to and the same size as the colour image the encoder saw.
        intrinsics: pinhole intrinsics of that (H, W) image.
        geometry: the encoder's patch grid; the image was resized (not cropped) to the
            network input, so patch (r, c) covers ``geometry.patch_pixel_bounds(H, W)[r, c]``.
        T_map_camera: optional 4x4 ``map <- camera_optical`` transform; points come out in
            the map frame if given, in the camera optical frame otherwise.
        min_valid_fraction: a patch needs at least this fraction of its pixels with valid
            depth to get a point (and at least one).
        rel_tolerance, abs_tolerance: pixels within ``max(abs, rel * median)`` metres of
            the patch's median depth are averaged into its point. 5 % / 2 cm is several
            sigma of RGB-D sensor noise (1-2 % of depth) and keeps most of a slanted
            surface; depth steps larger than that (10 cm at 2 m) are split, smaller ones
            are averaged over, which moves the point by less than the step.
        max_depth: optional cut-off in metres; farther readings are treated as invalid.
        image_shape: shape of the colour image, if the caller wants that checked too.

    Returns:
        LiftedPatches with N <= grid_h * grid_w points (N = 0 if no patch has enough
        valid depth; that is not an error).
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an (H, W) array in metres, got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(
            f"depth must be float metres, got dtype {depth.dtype}; decode it with "
            "geometry.depth_to_meters() first"
        )
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
    transform = None if T_map_camera is None else validate_transform(T_map_camera, "T_map_camera")

    gh, gw = geometry.grid_height, geometry.grid_width
    if h < gh or w < gw:
        raise ValueError(f"a {w}x{h} image is too small for a {gw}x{gh} patch grid")
    layout = _patch_layout(h, w, geometry)
    m = gh * gw
    ph, pw = layout.rows.shape[1], layout.cols.shape[1]

    # Invalid depth is encoded as 0 from here on (not NaN): float ops on 0 stay cheap and
    # branch-free (z * mask), and valid depths are > 0, so 0 is unambiguous. fmax maps NaN
    # and negatives to 0; the range check catches +inf and readings beyond max_depth.
    upper = np.float32(np.finfo(np.float32).max if max_depth is None else max_depth)
    flat = np.zeros(h * w + 1, dtype=np.float32)  # + the padding element
    np.fmax(depth.reshape(-1), np.float32(0.0), out=flat[:-1])
    flat[flat > upper] = 0.0

    z = np.take(flat, layout.gather)  # (M, P), patch-major; padding slots read 0
    count = np.count_nonzero(z, axis=1)
    keep = (count > 0) & (count >= min_valid_fraction * layout.area)
    if not keep.any():
        return LiftedPatches.empty(gh, gw)
    idx = np.flatnonzero(keep)
    if idx.size < m:  # statistics only for the patches that get a point
        z, count = z[idx], count[idx]
    n = idx.size

    # One row-wise sort gives the lower median and the quartiles of the valid depths, which
    # follow the (P - count) leading zeros. For rows of a few hundred values a full sort
    # costs about what np.partition does, and partition needs one kth for every row.
    zs = np.sort(z, axis=1)
    first = z.shape[1] - count  # index of the smallest valid depth
    last = count - 1

    def order_stat(offset: np.ndarray) -> np.ndarray:
        return np.take_along_axis(zs, (first + offset)[:, None], axis=1)[:, 0]

    med = order_stat(last // 2)
    # depth_spread: half the interquartile range, a robust spread like the MAD (equal to it
    # for symmetric noise) that comes free from the sort; large when a patch straddles an edge.
    spread = 0.5 * (order_stat((3 * last) // 4) - order_stat(last // 4))

    tol = np.maximum(np.float32(abs_tolerance), np.float32(rel_tolerance) * med)
    lo = np.maximum(med - tol, np.float32(np.finfo(np.float32).tiny))  # never admit 0s
    hi = med + tol
    inlier = (z >= lo[:, None]) & (z <= hi[:, None])  # the median pixel always passes
    support = np.count_nonzero(inlier, axis=1)
    zi = np.multiply(z, inlier, out=z).reshape(n, ph, pw)  # in place: z is done with

    # Mean of the inlier points. X = z * (u - cx) / fx is separable, so sum X over a patch
    # = sum over its columns of (column sum of z) * (u - cx) / fx; likewise for Y with rows.
    xf = (np.arange(w, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    yf = (np.arange(h, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    pr, pc = np.divmod(idx, gw)
    col_sums = zi.sum(axis=1, dtype=np.float64)  # (n, pw)
    row_sums = zi.sum(axis=2, dtype=np.float64)  # (n, ph)
    pts = np.empty((n, 3), dtype=np.float64)
    pts[:, 0] = (col_sums * xf[layout.cols[pc]]).sum(axis=1)
    pts[:, 1] = (row_sums * yf[layout.rows[pr]]).sum(axis=1)
    pts[:, 2] = col_sums.sum(axis=1)
    pts /= support[:, None]
    if transform is not None:
        pts = pts @ transform[:3, :3].T + transform[:3, 3]

    valid = np.zeros(m, dtype=bool)
    valid[idx] = True
    return LiftedPatches(
        points=pts.astype(np.float32),
        patch_index=idx.astype(np.int64),
        valid=valid.reshape(gh, gw),
        depth_spread=spread.astype(np.float32),
        support=support.astype(np.int32),
    )
