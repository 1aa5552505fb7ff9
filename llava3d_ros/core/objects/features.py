"""Per-instance features pooled from keyframe patches (Chat-3D / OpenMask3D style).

A patch of 40 x 30 VGA pixels covers a mug *and* the table under it; written at one 3D
point and averaged per voxel (the patch memory), its feature leaks into the table and the
mug gets table in return. Here each keyframe keeps, for a subsample of its valid pixels,
the fine-voxel key of the surface the pixel sees and the patch it belongs to. Given a
segmentation (voxel key -> instance), a patch contributes its feature to an instance
only when the instance covers at least ``min_coverage`` of the patch's valid pixels, with
weight = coverage (purer patches count more). An instance that never reaches the
coverage threshold in any view (a small object seen from afar) falls back to its best
patches at any coverage, weighted by coverage squared.

The pixels are the keyframe's own observed surfaces, so occlusion needs no z-buffer: a
mug hidden behind a box in a view simply has no pixels in it.

Keyframes are kept in a bounded store (oldest dropped first) so features can be pooled
again whenever the segmentation changes; an instance whose views have all been dropped
keeps the feature it had (the caller carries it over by persistent id).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.encoders.base import PatchGeometry
from llava3d_ros.core.geometry import CameraIntrinsics

__all__ = [
    "KeyframeObservation",
    "LabelMap",
    "ObservationStore",
    "PooledFeatures",
    "observe_keyframe",
    "pool_features",
]


@dataclass
class KeyframeObservation:
    """What the object layer keeps of one keyframe."""

    stamp: float
    keys: NDArray[np.int64]  # (M,) unique (voxel, patch) pairs: the voxel key ...
    patch: NDArray[np.int32]  # (M,) ... and the patch index (row-major in the grid)
    count: NDArray[np.int32]  # (M,) sampled pixels of that pair
    pixel: NDArray[np.uint16]  # (M, 2) their mean pixel (u, v)
    patch_valid: NDArray[np.int32]  # (P,) valid sampled pixels per patch
    features: NDArray[np.float16]  # (P, C): the keyframe's patch features
    image: bytes = b""  # the RGB frame as JPEG (for re-encoding crops); b"" = not kept
    t_map_camera: NDArray[np.float64] | None = None
    intrinsics: CameraIntrinsics | None = None
    sample_stride: int = 4

    @property
    def nbytes(self) -> int:
        arrays = (self.keys, self.patch, self.count, self.pixel, self.patch_valid, self.features)
        return int(sum(a.nbytes for a in arrays) + len(self.image))


def observe_keyframe(
    depth_m: NDArray[np.floating],
    intrinsics: CameraIntrinsics,
    t_map_camera: NDArray[np.floating],
    geometry: PatchGeometry,
    features: torch.Tensor,
    stamp: float,
    voxel_size: float,
    stride: int = 4,
    min_depth: float = 0.1,
    max_depth: float = 8.0,
    rgb: NDArray[np.uint8] | None = None,
    jpeg_quality: int = 90,
) -> KeyframeObservation:
    """Sample every ``stride``-th pixel of a keyframe: its surface voxel and its patch.

    ``features``: (grid_h, grid_w, C) or (P, C) patch features of the frame; ``rgb``:
    the frame, kept as JPEG for re-encoding object crops (None: not kept)."""
    h, w = depth_m.shape
    rows = np.arange(stride // 2, h, stride)
    cols = np.arange(stride // 2, w, stride)
    z = np.asarray(depth_m, dtype=np.float32)[np.ix_(rows, cols)]
    valid = np.isfinite(z) & (z >= min_depth) & (z <= max_depth)
    bounds = geometry.patch_pixel_bounds(h, w)
    row_edges, col_edges = bounds[:, 0, 1], bounds[0, :, 3]  # exclusive ends
    prow = np.searchsorted(row_edges, rows, side="right")
    pcol = np.searchsorted(col_edges, cols, side="right")
    patch_grid = prow[:, None] * geometry.grid_width + pcol[None, :]
    zz = z[valid]
    vv, uu = np.nonzero(valid)
    x = (cols[uu].astype(np.float32) - np.float32(intrinsics.cx)) / np.float32(intrinsics.fx) * zz
    y = (rows[vv].astype(np.float32) - np.float32(intrinsics.cy)) / np.float32(intrinsics.fy) * zz
    cam = np.stack([x, y, zz], axis=1).astype(np.float64)
    t = np.asarray(t_map_camera, dtype=np.float64)
    world = cam @ t[:3, :3].T + t[:3, 3]
    keys = vk.centred_keys(world, voxel_size)
    patches = patch_grid[valid].astype(np.int64)
    uv = np.stack([cols[uu], rows[vv]], axis=1).astype(np.float64)
    n_patches = geometry.num_patches
    patch_valid = np.bincount(patches, minlength=n_patches).astype(np.int32)
    # Unique (key, patch) pairs with counts and mean pixels: nearby pixels share a voxel.
    order = np.lexsort((patches, keys))
    keys, patches, uv = keys[order], patches[order], uv[order]
    if len(keys):
        new = np.ones(len(keys), dtype=bool)
        new[1:] = (keys[1:] != keys[:-1]) | (patches[1:] != patches[:-1])
        starts = np.flatnonzero(new)
        count = np.diff(np.append(starts, len(keys))).astype(np.int32)
        pixel = (np.add.reduceat(uv, starts, axis=0) / count[:, None]).round().astype(np.uint16)
        keys, patches = keys[starts], patches[starts]
    else:
        count = np.zeros(0, dtype=np.int32)
        pixel = np.zeros((0, 2), dtype=np.uint16)
    # Cast before the copy: on a GPU half the bytes cross to the host (the store is fp16).
    feats = features.reshape(-1, features.shape[-1]).detach().to(torch.float16).cpu().numpy()
    if feats.shape[0] != n_patches:
        raise ValueError(f"{feats.shape[0]} patch features for a {n_patches}-patch grid")
    image = b""
    if rgb is not None:
        import cv2

        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        )
        image = buf.tobytes() if ok else b""
    return KeyframeObservation(
        stamp=float(stamp),
        keys=keys,
        patch=patches.astype(np.int32),
        count=count,
        pixel=pixel,
        patch_valid=patch_valid,
        features=np.ascontiguousarray(feats),
        image=image,
        t_map_camera=np.asarray(t_map_camera, dtype=np.float64),
        intrinsics=intrinsics,
        sample_stride=stride,
    )


class ObservationStore:
    """Bounded, thread-safe list of keyframe observations (oldest dropped first)."""

    def __init__(self, max_keyframes: int) -> None:
        if max_keyframes < 1:
            raise ValueError("max_keyframes must be >= 1")
        self._items: deque[KeyframeObservation] = deque(maxlen=max_keyframes)
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, obs: KeyframeObservation) -> None:
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(obs)

    def items(self) -> list[KeyframeObservation]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes for o in self.items())


class LabelMap:
    """Voxel key -> instance index (0..K-1; -1 = structure), with a tolerance of one
    voxel: the neighbours of every labelled voxel get its label where they have none, so a
    noisy depth sample just off the fused surface still finds its instance."""

    def __init__(
        self, keys: NDArray[np.int64], labels: NDArray[np.integer], dilate: bool = True
    ) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int32)
        if keys.shape != labels.shape:
            raise ValueError("keys and labels must have the same length")
        if dilate and len(keys):
            steps = [vk.key_delta(axis) for axis in np.eye(3, dtype=np.int64)]
            extra = [keys + s for s in steps] + [keys - s for s in steps]
            all_keys = np.concatenate([keys, *extra])
            all_labels = np.tile(labels, 7)
        else:
            all_keys, all_labels = keys, labels
        # First occurrence wins: a voxel's own label beats a neighbour's.
        uniq, first = np.unique(all_keys, return_index=True)
        self.keys = uniq
        self.labels = all_labels[first]

    def lookup(self, keys: NDArray[np.int64]) -> NDArray[np.int32]:
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int32)
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        hit = self.keys[pos] == keys
        return np.where(hit, self.labels[pos], -1).astype(np.int32)


@dataclass
class PooledFeatures:
    """Weighted sums of patch features per instance (divide to get the mean).

    numpy, not torch: these are many small products per update, where torch's thread
    pool costs more than the arithmetic on a busy 2-core CPU (measured 27 ms per keyframe
    with torch, ~1 ms with numpy)."""

    sums: NDArray[np.float32]  # (K, C)
    weights: NDArray[np.float64]  # (K,)
    soft_sums: NDArray[np.float32]  # (K, C): any-coverage fallback, weight coverage^2
    soft_weights: NDArray[np.float64]  # (K,)
    views: NDArray[np.int64]  # (K,) keyframes that gave the instance a patch >= coverage

    @classmethod
    def zeros(cls, k: int, c: int) -> PooledFeatures:
        return cls(
            np.zeros((k, c), np.float32),
            np.zeros(k),
            np.zeros((k, c), np.float32),
            np.zeros(k),
            np.zeros(k, np.int64),
        )

    def add(self, other: PooledFeatures) -> None:
        self.sums += other.sums
        self.weights += other.weights
        self.soft_sums += other.soft_sums
        self.soft_weights += other.soft_weights
        self.views += other.views

    def means(self) -> tuple[torch.Tensor, NDArray[np.bool_]]:
        """(K, C) unit-length features and which instances have any."""
        hard = self.weights > 0
        w = np.where(hard, self.weights, self.soft_weights)
        s = np.where(hard[:, None], self.sums, self.soft_sums)
        has = w > 0
        mean = s / np.maximum(w, 1e-12)[:, None]
        norm = np.linalg.norm(mean, axis=1, keepdims=True)
        unit = (mean / np.maximum(norm, 1e-12)).astype(np.float32)
        return torch.from_numpy(unit), has


def pool_features(
    observations: Sequence[KeyframeObservation],
    labels: LabelMap | Sequence[NDArray[np.int32]],
    num_instances: int,
    min_coverage: float = 0.3,
    soft_min_coverage: float = 0.05,
) -> PooledFeatures:
    """Pool every observation's patch features into the instances: ``labels`` is the
    label map, or each observation's sample labels already looked up in it."""
    if not observations:
        return PooledFeatures.zeros(num_instances, 0)
    c = observations[0].features.shape[1]
    out = PooledFeatures.zeros(num_instances, c)
    k = num_instances
    if k == 0:
        return out
    if isinstance(labels, LabelMap):
        labels = [labels.lookup(o.keys) for o in observations]
    for obs, lab in zip(observations, labels, strict=True):
        inst = lab >= 0
        if not inst.any():
            continue
        p = obs.patch_valid.shape[0]
        cell = obs.patch[inst].astype(np.int64) * k + lab[inst]
        counts = np.bincount(cell, weights=obs.count[inst], minlength=p * k).reshape(p, k)
        cover = counts / np.maximum(obs.patch_valid, 1)[:, None]
        soft = np.where(cover >= soft_min_coverage, cover * cover, 0.0)
        rows = np.flatnonzero(soft.any(axis=1))
        if len(rows) == 0:
            continue
        cover, soft = cover[rows], soft[rows]
        hard = np.where(cover >= min_coverage, cover, 0.0)
        feats = obs.features[rows].astype(np.float32)
        out.soft_sums += (soft.T @ feats).astype(np.float32)
        out.soft_weights += soft.sum(axis=0)
        if hard.any():
            out.sums += (hard.T @ feats).astype(np.float32)
            out.weights += hard.sum(axis=0)
            out.views += (hard > 0).any(axis=0)
    return out
