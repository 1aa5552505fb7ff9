"""Rolling 3D patch memory: patch features lifted to the map frame, fused in a voxel hash.

Every voxel keeps the running mean of each feature kind, an observation count, the
running mean of the points that fell in it (centroid), the stamp it was last seen and
its integer coordinate. The memory is bounded by a voxel count (least recently seen,
then least observed, go first), a radius around the robot and an age relative to the
newest frame; evictions are counted by reason.

Cost of :meth:`VoxelPatchMemory.integrate` follows the N points of the frame, not the
memory size: voxels are looked up by their voxel key (``core/voxel_keys.py``) in a
vectorised open-addressing hash table on the memory's device (:mod:`.hash_table`). Bound
checks scan the
memory only when they can fire (a lower bound on the oldest stamp and an upper bound on
the distance to the robot are kept up to date from the new points alone), and every
eviction frees a small headroom so the scans and sorts run once per many frames.

Rows returned by the read accessors are in storage-slot order: consistent between
accessors while the memory is not modified, *not* stable across ``integrate``/``evict``
(slots are reused). Use ``coords`` as a voxel's identity.

Snapshots: :meth:`VoxelPatchMemory.save` / :meth:`~VoxelPatchMemory.from_snapshot` in the
checked file format of :mod:`.snapshot_format`; scene tokens for the language model:
:meth:`VoxelPatchMemory.pool` with :mod:`.pooling`. Torch and numpy only; no ROS imports.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.memory.hash_table import VoxelHashTable
from llava3d_ros.core.memory.pooling import pool_cells
from llava3d_ros.core.memory.snapshot_format import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    MemoryLimits,
    SnapshotError,
    checked_limits,
    read_snapshot,
    write_snapshot,
)

# Eviction reasons, in the order they are reported.
EVICT_MAX_VOXELS = "max_voxels"
EVICT_RADIUS = "radius"
EVICT_AGE = "age"
EVICT_REASONS = (EVICT_MAX_VOXELS, EVICT_RADIUS, EVICT_AGE)

# Voxels are indexed by their voxel key (core/voxel_keys.py): the map spans +-2^20 voxels
# per axis (+-52 km at 5 cm); points beyond are rejected.

_POOL_CHUNK = 16384  # rows per chunk when pooling, bounds the temporary memory

ArrayLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class EvictStats:
    """Voxels removed by each bound in one call."""

    max_voxels: int = 0
    radius: int = 0
    age: int = 0

    @property
    def total(self) -> int:
        return self.max_voxels + self.radius + self.age


@dataclass(frozen=True)
class IntegrateStats:
    """What one :meth:`VoxelPatchMemory.integrate` call did."""

    points: int  # rows received
    points_accepted: int
    rejected_nonfinite: int  # NaN/inf in the point or any feature channel
    rejected_out_of_range: int  # beyond the +-2^20 voxel coordinate range
    new_voxels: int  # voxels created (and still present after the bounds)
    updated_voxels: int  # existing voxels that received points
    evicted: EvictStats

    @property
    def points_rejected(self) -> int:
        return self.rejected_nonfinite + self.rejected_out_of_range


@dataclass(frozen=True)
class MemoryStats:
    """Lifetime counters and current size (what ``~/memory_stats`` publishes)."""

    num_voxels: int
    max_voxels: int
    voxel_size: float
    feature_dims: dict[str, int]
    memory_bytes: int  # bytes reserved by every tensor (storage for max_voxels + hash table)
    frames_integrated: int
    points_received: int
    points_rejected_nonfinite: int
    points_rejected_out_of_range: int
    evictions: dict[str, int]  # reason -> voxels evicted since construction
    newest_stamp: float | None

    @property
    def points_rejected(self) -> int:
        return self.points_rejected_nonfinite + self.points_rejected_out_of_range

    @property
    def voxels_evicted(self) -> int:
        return sum(self.evictions.values())


@dataclass(frozen=True)
class MemoryView:
    """Dense copies of the active voxels (row i of every tensor is the same voxel)."""

    coords: torch.Tensor  # (M, 3) int64 voxel index: floor(point / voxel_size)
    centroids: torch.Tensor  # (M, 3) float32, mean of the points in the voxel
    counts: torch.Tensor  # (M,) int64 observations
    last_seen: torch.Tensor  # (M,) float64 stamp (s) of the newest observation
    features: dict[str, torch.Tensor]  # kind -> (M, C) running means
    voxel_size: float

    def __len__(self) -> int:
        return int(self.counts.shape[0])


class VoxelPatchMemory:
    """Rolling voxel memory of patch features in the map frame.

    Args:
        feature_dims: feature kinds and their channels, e.g. ``{"vision": 1024, "ground": 384}``
            (kinds as in ``encoders.base``: VISION, GROUND). Stored as one concatenated
            (slots, sum C) tensor; each kind is a column range of it.
        voxel_size: voxel edge in metres; voxel i along an axis covers [i*s, (i+1)*s).
        max_voxels: hard bound on voxels held, also sizes the hash table (2x, power of two).
        max_radius: evict voxels whose centroid is farther than this (3D, metres) from the
            robot position passed to ``integrate``/``evict``; None disables.
        max_age_s: evict voxels not seen for longer than this relative to the newest frame
            stamp (or the ``now`` given to ``evict``); None disables.
        device: torch device of every tensor (hashing runs there too).
        feature_dtype: storage dtype of the feature means (float32, float16, bfloat16);
            updates are computed in float32.
        evict_headroom: hysteresis of every bound, so the O(M) scans and the O(M log M)
            victim sort run once per many frames instead of every frame: when the voxel
            bound is hit, this fraction of ``max_voxels`` more is evicted; when a voxel is
            found beyond ``max_age_s`` / ``max_radius``, voxels beyond (1 - headroom) of
            that bound go too. The bounds themselves always hold. 0 = evict exactly.

    Thread safety: every public method takes an internal re-entrant lock, so a query
    thread may read while the ingest thread integrates.
    """

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        voxel_size: float = 0.05,
        max_voxels: int = 200_000,
        max_radius: float | None = None,
        max_age_s: float | None = None,
        device: str | torch.device = "cpu",
        feature_dtype: torch.dtype = torch.float32,
        evict_headroom: float = 0.05,
    ) -> None:
        if not feature_dims:
            raise ValueError("feature_dims must name at least one feature kind")
        for kind, dim in feature_dims.items():
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"feature kind names must be non-empty strings, got {kind!r}")
            if int(dim) != dim or int(dim) <= 0:
                raise ValueError(f"feature kind {kind!r}: dimension must be a positive int")
        if not (math.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"voxel_size must be a positive finite number, got {voxel_size}")
        if int(max_voxels) < 1:
            raise ValueError(f"max_voxels must be >= 1, got {max_voxels}")
        if max_radius is not None and not (max_radius > 0):
            raise ValueError(f"max_radius must be positive or None, got {max_radius}")
        if max_age_s is not None and not (max_age_s > 0):
            raise ValueError(f"max_age_s must be positive or None, got {max_age_s}")
        if not 0.0 <= evict_headroom <= 0.5:
            raise ValueError(f"evict_headroom must be in [0, 0.5], got {evict_headroom}")
        if feature_dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise ValueError(f"feature_dtype must be a floating dtype, got {feature_dtype}")

        self.feature_dims: dict[str, int] = {k: int(v) for k, v in feature_dims.items()}
        self._slices: dict[str, tuple[int, int]] = {}
        start = 0
        for kind, dim in self.feature_dims.items():
            self._slices[kind] = (start, dim)
            start += dim
        self.feature_dim_total = start
        self.voxel_size = float(voxel_size)
        self.max_voxels = int(max_voxels)
        self.max_radius = None if max_radius is None else float(max_radius)
        self.max_age_s = None if max_age_s is None else float(max_age_s)
        self.evict_headroom = float(evict_headroom)
        self.device = torch.device(device)
        self.feature_dtype = feature_dtype
        self._acc_dtype = torch.float64 if feature_dtype == torch.float64 else torch.float32
        self._lock = threading.RLock()

        self._table = VoxelHashTable(self.max_voxels, self.device)

        self._frames = 0
        self._points_received = 0
        self._rejected_nonfinite = 0
        self._rejected_range = 0
        self._evictions = dict.fromkeys(EVICT_REASONS, 0)
        self._reset_storage()

    # ------------------------------------------------------------------ storage

    def _reset_storage(self) -> None:
        self._alloc_storage()
        self._table.clear()
        self._n_used = 0  # slots ever handed out (high-water mark)
        self._n_free = 0  # freed slots on the stack, reused first
        self._n_live = 0
        self._newest: float | None = None
        self._age_floor = math.inf  # <= last_seen of every live voxel
        self._anchor: torch.Tensor | None = None  # robot position at the last radius scan
        self._reach = 0.0  # >= distance of every live centroid from _anchor

    def _alloc_storage(self) -> None:
        """Reserve every slot up front. ``torch.empty`` does not touch the pages, so on the
        CPU they are committed only as slots get used (RSS follows the high-water mark);
        on CUDA the whole budget is reserved at once. Either way nothing is copied or
        reallocated while mapping, so no frame pays for growth."""
        d, cap = self.device, self.max_voxels
        self._keys = torch.empty(cap, dtype=torch.long, device=d)
        self._coords = torch.empty(cap, 3, dtype=torch.long, device=d)
        self._feat = torch.empty(cap, self.feature_dim_total, dtype=self.feature_dtype, device=d)
        self._centroid = torch.empty(cap, 3, dtype=torch.float32, device=d)
        self._count = torch.empty(cap, dtype=torch.long, device=d)
        self._last_seen = torch.empty(cap, dtype=torch.float64, device=d)
        self._tpos = torch.empty(cap, dtype=torch.long, device=d)  # slot -> table position
        self._active = torch.zeros(cap, dtype=torch.bool, device=d)
        self._free = torch.empty(cap, dtype=torch.long, device=d)  # stack of freed slots

    def _storage(self) -> tuple[torch.Tensor, ...]:
        """Every per-slot tensor."""
        return (
            self._keys,
            self._coords,
            self._feat,
            self._centroid,
            self._count,
            self._last_seen,
            self._tpos,
            self._active,
            self._free,
        )

    def _alloc_slots(self, k: int) -> torch.Tensor:
        take = min(k, self._n_free)
        reused = self._free[self._n_free - take : self._n_free].clone()
        self._n_free -= take
        rest = k - take  # callers keep live + k <= max_voxels, so this fits
        fresh = torch.arange(self._n_used, self._n_used + rest, device=self.device)
        self._n_used += rest
        return torch.cat([reused, fresh])

    def _release(self, slots: torch.Tensor) -> int:
        """Remove live voxels (unique slot indices); returns how many."""
        k = int(slots.numel())
        if k == 0:
            return 0
        self._active[slots] = False
        self._table.erase(self._tpos[slots])
        self._free[self._n_free : self._n_free + k] = slots
        self._n_free += k
        self._n_live -= k
        if self._n_live == 0:
            self._age_floor = math.inf
            self._anchor = None
        if self._table.needs_rebuild(self._n_live):
            self._rebuild_table()
        return k

    def _live_slots(self) -> torch.Tensor:
        return torch.nonzero(self._active[: self._n_used]).squeeze(1)

    # --------------------------------------------------------------- hash table

    def _insert(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Index unique keys known to be absent, stored in ``slots``."""
        self._tpos[slots] = self._table.insert(keys, slots)

    def _rebuild_table(self) -> None:
        """Drop tombstones: O(table + live), run after >= 1/8 of the table was evicted."""
        self._table.clear()
        live = self._live_slots()
        if live.numel():
            self._insert(self._keys[live], live)

    # --------------------------------------------------------------- integrate

    def _to_points(self, points: ArrayLike) -> torch.Tensor:
        pts = torch.as_tensor(points)
        if pts.ndim < 1 or pts.shape[-1] != 3:
            raise ValueError(f"points must have shape (N, 3), got {tuple(pts.shape)}")
        return pts.reshape(-1, 3).to(device=self.device, dtype=torch.float64)

    def _to_features(self, features: Mapping[str, ArrayLike], n: int) -> torch.Tensor:
        missing = set(self.feature_dims) - set(features)
        extra = set(features) - set(self.feature_dims)
        if missing or extra:
            raise ValueError(
                f"features must have exactly the kinds {sorted(self.feature_dims)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        parts = []
        for kind, dim in self.feature_dims.items():
            f = torch.as_tensor(features[kind])
            if f.ndim < 1 or f.shape[-1] != dim:
                raise ValueError(f"features[{kind!r}]: expected (N, {dim}), got {tuple(f.shape)}")
            f = f.reshape(-1, dim)
            if f.shape[0] != n:
                raise ValueError(f"features[{kind!r}] has {f.shape[0]} rows, points have {n}")
            parts.append(f.to(device=self.device, dtype=self._acc_dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    @staticmethod
    def _finite_rows(x: torch.Tensor) -> torch.Tensor:
        """Rows without NaN/inf. A row sum is non-finite whenever an element is, and a
        reduction is ~40x cheaper than an elementwise isfinite on CPU; the few rows whose
        sum is non-finite are checked exactly (finite values can overflow a sum)."""
        ok = torch.isfinite(x.sum(dim=1))
        if not bool(ok.all()):
            suspect = torch.nonzero(~ok).squeeze(1)
            ok[suspect] = torch.isfinite(x[suspect]).all(dim=1)
        return ok

    def _to_position(self, position: ArrayLike | None) -> torch.Tensor | None:
        if position is None:
            return None
        p = torch.as_tensor(position).reshape(-1).to(device=self.device, dtype=torch.float64)
        if p.numel() != 3 or not bool(torch.isfinite(p).all()):
            raise ValueError(f"robot_position must be 3 finite numbers, got {position!r}")
        return p

    def integrate(
        self,
        points: ArrayLike,
        features: Mapping[str, ArrayLike],
        stamp: float,
        robot_position: ArrayLike | None = None,
    ) -> IntegrateStats:
        """Fuse one frame: points (N, 3) in the map frame with features {kind: (N, C)}.

        Rows with a non-finite point or feature, or beyond the coordinate range, are
        rejected and counted. Points sharing a voxel are aggregated first, then each voxel's
        means are updated as if its points had arrived one by one. The bounds are applied
        afterwards (radius only when ``robot_position`` is given)."""
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f"stamp must be finite, got {stamp}")
        with self._lock:
            pts = self._to_points(points)
            n = int(pts.shape[0])
            feats = self._to_features(features, n)
            robot = self._to_position(robot_position)

            finite = torch.isfinite(pts).all(dim=1) & self._finite_rows(feats)
            vox = torch.floor(pts / self.voxel_size)
            in_range = vk.in_range(vox) & finite
            n_finite = int(finite.sum())
            n_ok = int(in_range.sum())
            self._frames += 1
            self._points_received += n
            self._rejected_nonfinite += n - n_finite
            self._rejected_range += n_finite - n_ok
            if n_ok < n:
                pts, feats, vox = pts[in_range], feats[in_range], vox[in_range]
            self._newest = stamp if self._newest is None else max(self._newest, stamp)

            evicted = dict.fromkeys(EVICT_REASONS, 0)
            n_new = n_updated = 0
            if n_ok:
                n_new, n_updated = self._fuse(pts, feats, vox, stamp, robot, evicted)
            self._apply_age(self._newest, evicted)
            self._apply_radius(robot, evicted)
            for reason, k in evicted.items():
                self._evictions[reason] += k
            return IntegrateStats(
                points=n,
                points_accepted=n_ok,
                rejected_nonfinite=n - n_finite,
                rejected_out_of_range=n_finite - n_ok,
                new_voxels=n_new,
                updated_voxels=n_updated,
                evicted=EvictStats(**evicted),
            )

    def _fuse(
        self,
        pts: torch.Tensor,
        feats: torch.Tensor,
        vox: torch.Tensor,
        stamp: float,
        robot: torch.Tensor | None,
        evicted: dict[str, int],
    ) -> tuple[int, int]:
        keys = vk.pack(vox.to(torch.long))
        uniq, inv, cnt = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
        u = int(uniq.numel())
        single = u == keys.numel()
        if single:
            # Usual case at 5 cm: every patch lands in its own voxel, nothing to sum.
            uniq, cnt, fsum, psum = keys, torch.ones_like(keys), feats, pts
        else:
            fsum = torch.zeros(u, self.feature_dim_total, dtype=self._acc_dtype, device=self.device)
            fsum.index_add_(0, inv, feats)
            psum = torch.zeros(u, 3, dtype=torch.float64, device=self.device)
            psum.index_add_(0, inv, pts)

        slots = self._table.lookup(uniq)
        found = slots >= 0
        n_updated = int(found.sum())
        if n_updated:
            s = slots[found]
            c_old = self._count[s]
            c_new = c_old + cnt[found]
            # mean' = mean * n/(n+k) + sum/(n+k): the exact running mean, in one step
            inv_new = 1.0 / c_new.to(self._acc_dtype)[:, None]
            old = self._feat[s].to(self._acc_dtype)
            upd = old * (c_old.to(self._acc_dtype)[:, None] * inv_new) + fsum[found] * inv_new
            self._feat[s] = upd.to(self.feature_dtype)
            inv_c = 1.0 / c_new.double()[:, None]
            cen = (
                self._centroid[s].double() * (c_old.double()[:, None] * inv_c) + psum[found] * inv_c
            )
            self._centroid[s] = cen.float()
            self._count[s] = c_new
            self._last_seen[s] = torch.clamp_min(self._last_seen[s], stamp)
            self._extend_reach(self._centroid[s])
        k = u - n_updated
        if k == 0:
            return 0, n_updated

        # New voxels are tracked as row indices into this frame's voxels, so the wide
        # feature rows are gathered once, after every filter.
        rows = torch.nonzero(~found).squeeze(1)
        nk, ncnt = uniq[rows], cnt[rows]
        nc = (psum[rows] / ncnt.double()[:, None]).float()  # stored centroid precision

        # Voxels the bounds would remove at once are never inserted (counted as evicted).
        too_old = self.max_age_s is not None and stamp < self._newest_or(stamp) - self.max_age_s
        if too_old:
            evicted[EVICT_AGE] += k
            return 0, n_updated
        if self.max_radius is not None and robot is not None:
            inside = torch.linalg.vector_norm(nc.double() - robot, dim=1) <= self.max_radius
            n_in = int(inside.sum())
            if n_in < k:
                evicted[EVICT_RADIUS] += k - n_in
                rows, nk, ncnt, nc = rows[inside], nk[inside], ncnt[inside], nc[inside]
                k = n_in
                if k == 0:
                    return 0, n_updated
        if k > self.max_voxels:
            # A frame alone overflows the memory: keep its best-observed voxels.
            by_key = torch.argsort(nk)  # ties: smaller key first, whatever the input order
            best = torch.sort(ncnt[by_key], descending=True, stable=True).indices
            order = torch.sort(by_key[best[: self.max_voxels]]).values
            evicted[EVICT_MAX_VOXELS] += k - self.max_voxels
            rows, nk, ncnt, nc = rows[order], nk[order], ncnt[order], nc[order]
            k = self.max_voxels
        overflow = self._n_live + k - self.max_voxels
        if overflow > 0:
            extra = int(self.evict_headroom * self.max_voxels)
            evicted[EVICT_MAX_VOXELS] += self._evict_lru(min(self._n_live, overflow + extra))

        nf = fsum if k == u else fsum.index_select(0, rows)
        if not single:
            nf = nf / ncnt.to(self._acc_dtype)[:, None]
        new_slots = self._alloc_slots(k)
        self._keys[new_slots] = nk
        self._coords[new_slots] = vk.unpack(nk)
        self._feat[new_slots] = nf.to(self.feature_dtype)
        self._centroid[new_slots] = nc
        self._count[new_slots] = ncnt
        self._last_seen[new_slots] = stamp
        self._active[new_slots] = True
        self._n_live += k
        self._insert(nk, new_slots)
        self._age_floor = min(self._age_floor, stamp)
        self._extend_reach(nc)
        return k, n_updated

    # ------------------------------------------------------------------ bounds

    def _newest_or(self, default: float) -> float:
        return default if self._newest is None else self._newest

    def _extend_reach(self, centroids: torch.Tensor) -> None:
        if self._anchor is not None and centroids.numel():
            d = torch.linalg.vector_norm(centroids.double() - self._anchor, dim=1)
            self._reach = max(self._reach, float(d.max()))

    def _apply_age(self, reference: float | None, evicted: dict[str, int]) -> None:
        if self.max_age_s is None or reference is None or self._n_live == 0:
            return
        if self._age_floor >= reference - self.max_age_s:
            return  # nothing can be older: no scan
        # Scan, and evict down to (1 - headroom) of the bound so the next scan is due only
        # after headroom * max_age_s more seconds, not at the next frame.
        cut = reference - self.max_age_s * (1.0 - self.evict_headroom)
        live = self._live_slots()
        ls = self._last_seen[live]
        old = ls < cut
        evicted[EVICT_AGE] += self._release(live[old])
        rest = ls[~old]
        self._age_floor = float(rest.min()) if rest.numel() else math.inf

    def _apply_radius(self, robot: torch.Tensor | None, evicted: dict[str, int]) -> None:
        if self.max_radius is None or robot is None or self._n_live == 0:
            return
        if self._anchor is not None:
            moved = float(torch.linalg.vector_norm(robot - self._anchor))
            if self._reach + moved <= self.max_radius:
                return  # triangle inequality: every centroid is still inside
        # Scan, evicting down to (1 - headroom) of the radius: the robot can then move
        # headroom * max_radius before the next scan (when new points stay inside that).
        live = self._live_slots()
        d = torch.linalg.vector_norm(self._centroid[live].double() - robot, dim=1)
        far = d > self.max_radius * (1.0 - self.evict_headroom)
        evicted[EVICT_RADIUS] += self._release(live[far])
        rest = d[~far]
        if rest.numel():
            self._anchor = robot.clone()
            self._reach = float(rest.max())

    def _evict_lru(self, n: int) -> int:
        """Evict n voxels: least recently seen first, ties broken by fewest observations."""
        if n <= 0:
            return 0
        live = self._live_slots()
        order = torch.sort(self._count[live], stable=True).indices
        order = order[torch.sort(self._last_seen[live][order], stable=True).indices]
        return self._release(live[order[:n]])

    def evict(
        self, now: float | None = None, robot_position: ArrayLike | None = None
    ) -> EvictStats:
        """Apply the age bound relative to ``now`` (default: the newest frame stamp) and the
        radius bound around ``robot_position`` (skipped when None). For a timer that ages
        the memory out while no frames arrive."""
        with self._lock:
            evicted = dict.fromkeys(EVICT_REASONS, 0)
            ref = self._newest if now is None else float(now)
            self._apply_age(ref, evicted)
            self._apply_radius(self._to_position(robot_position), evicted)
            for reason, k in evicted.items():
                self._evictions[reason] += k
            return EvictStats(**evicted)

    def clear(self) -> int:
        """Drop every voxel (and the newest stamp); lifetime counters are kept. Returns the
        number of voxels dropped."""
        with self._lock:
            n = self._n_live
            self._reset_storage()
            return n

    def __len__(self) -> int:
        return self._n_live

    def __repr__(self) -> str:
        return (
            f"VoxelPatchMemory({len(self)}/{self.max_voxels} voxels, voxel_size="
            f"{self.voxel_size}, features={self.feature_dims}, device={self.device})"
        )

    # ------------------------------------------------------------------ reading

    def snapshot_view(self, kinds: Sequence[str] | None = None) -> MemoryView:
        """Copies of all active voxels as dense tensors, consistent with each other, taken
        under the lock. ``kinds`` limits which feature kinds are copied (default: all);
        grounding needs only GROUND, and copying 200k x 1024 vision means costs ~1 GB."""
        wanted = list(self._slices) if kinds is None else list(kinds)
        spans = {k: self._slice(k) for k in wanted}
        with self._lock:
            live = self._live_slots()
            return MemoryView(
                coords=self._coords.index_select(0, live),
                centroids=self._centroid.index_select(0, live),
                counts=self._count.index_select(0, live),
                last_seen=self._last_seen.index_select(0, live),
                features={
                    k: self._feat[:, a : a + c].index_select(0, live) for k, (a, c) in spans.items()
                },
                voxel_size=self.voxel_size,
            )

    @property
    def centroids(self) -> torch.Tensor:
        with self._lock:
            return self._centroid.index_select(0, self._live_slots())

    @property
    def counts(self) -> torch.Tensor:
        with self._lock:
            return self._count.index_select(0, self._live_slots())

    @property
    def last_seen(self) -> torch.Tensor:
        with self._lock:
            return self._last_seen.index_select(0, self._live_slots())

    @property
    def coords(self) -> torch.Tensor:
        with self._lock:
            return self._coords.index_select(0, self._live_slots())

    def features(self, kind: str) -> torch.Tensor:
        """(M, C) running means of one feature kind (contiguous copy)."""
        a, c = self._slice(kind)
        with self._lock:
            return self._feat[:, a : a + c].index_select(0, self._live_slots())

    def _slice(self, kind: str) -> tuple[int, int]:
        if kind not in self._slices:
            raise KeyError(f"unknown feature kind {kind!r}; this memory has {list(self._slices)}")
        return self._slices[kind]

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Axis-aligned (min, max) of the centroids, or None when empty."""
        with self._lock:
            if self._n_live == 0:
                return None
            c = self.centroids
            return c.amin(dim=0), c.amax(dim=0)

    def stats(self) -> MemoryStats:
        with self._lock:
            tensors = (*self._table.tensors(), *self._storage())
            return MemoryStats(
                num_voxels=self._n_live,
                max_voxels=self.max_voxels,
                voxel_size=self.voxel_size,
                feature_dims=dict(self.feature_dims),
                memory_bytes=sum(t.numel() * t.element_size() for t in tensors),
                frames_integrated=self._frames,
                points_received=self._points_received,
                points_rejected_nonfinite=self._rejected_nonfinite,
                points_rejected_out_of_range=self._rejected_range,
                evictions=dict(self._evictions),
                newest_stamp=self._newest,
            )

    # ------------------------------------------------------------------ pooling

    def pool(
        self, kind: str = "vision", voxel_size: float = 0.2, max_tokens: int = 2560
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene tokens for the LMM: one per ``voxel_size`` cell (LLaVA-3D pools at 0.2 m).

        A cell's feature is the count-weighted mean of its member voxels' means (= the mean
        of every patch observation in it) and its position the count-weighted mean of their
        centroids. Above ``max_tokens`` cells, farthest-point sampling over the cell
        positions, seeded at the cell with the smallest key, picks a spatially even subset
        (LLaVA-3D takes a random subset). Output rows are sorted by cell key, so the same
        memory always gives the same tokens (bit-exact on CPU; on CUDA the float sums use
        atomics and may differ in the last bits).

        Returns positions (T, 3) float32 and features (T, C) float32."""
        if not (math.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"pool voxel_size must be positive, got {voxel_size}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        a, c = self._slice(kind)
        with self._lock:
            live = self._live_slots()
            cen = self._centroid.index_select(0, live).double()
            w = self._count.index_select(0, live).double()
            m = int(live.numel())
            if m == 0:
                return (
                    torch.zeros(0, 3, device=self.device),
                    torch.zeros(0, c, device=self.device),
                )
            target, pos, wsum = pool_cells(cen, w, voxel_size, max_tokens)
            member = target >= 0
            if not bool(member.all()):
                live, target, w = live[member], target[member], w[member]
            t = int(pos.shape[0])
            # Only member voxels of kept cells are read, in chunks, to bound temporaries.
            feat = torch.zeros(t, c, dtype=torch.float32, device=self.device)
            wf = w.float()
            for lo in range(0, int(live.numel()), _POOL_CHUNK):
                hi = lo + _POOL_CHUNK
                f = self._feat[live[lo:hi], a : a + c].float() * wf[lo:hi, None]
                feat.index_add_(0, target[lo:hi], f)
        return pos.float(), feat / wsum[:, None].float()

    # ---------------------------------------------------------------- snapshots

    def _header(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "feature_dims": [[k, d] for k, d in self.feature_dims.items()],
            "feature_dtype": str(self.feature_dtype).removeprefix("torch."),
            "voxel_size": self.voxel_size,
            "bounds": {
                "max_voxels": self.max_voxels,
                "max_radius": self.max_radius,
                "max_age_s": self.max_age_s,
                "evict_headroom": self.evict_headroom,
            },
            "num_voxels": self._n_live,
            "newest_stamp": self._newest,
            "counters": {
                "frames_integrated": self._frames,
                "points_received": self._points_received,
                "points_rejected_nonfinite": self._rejected_nonfinite,
                "points_rejected_out_of_range": self._rejected_range,
                "evictions": dict(self._evictions),
            },
        }

    def save(
        self,
        path: str | os.PathLike[str],
        sections: Mapping[str, tuple[dict[str, Any], Mapping[str, torch.Tensor]]] | None = None,
    ) -> int:
        """Write the active voxels and configuration to a safetensors file; returns its size.

        ``sections``: other state saved in the same file and under the same checksum
        (the object layer's): name -> (JSON-able header, tensors); tensors are stored as
        ``<name>/<tensor>``. The file is written next to the target and renamed into
        place, so a crash never leaves a half-written snapshot under ``path``."""
        with self._lock:
            live = self._live_slots()
            tensors = {
                "coords": self._coords.index_select(0, live).cpu().contiguous(),
                "centroids": self._centroid.index_select(0, live).cpu().contiguous(),
                "counts": self._count.index_select(0, live).cpu().contiguous(),
                "last_seen": self._last_seen.index_select(0, live).cpu().contiguous(),
                "features": self._feat.index_select(0, live).cpu().contiguous(),
            }
            header = self._header()
        return write_snapshot(path, header, tensors, sections)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        limits: MemoryLimits | None = None,
    ) -> VoxelPatchMemory:
        """Read a snapshot written by :meth:`save` into a *new* memory on ``device``.

        Raises SnapshotError (never anything else for a bad file) on a missing file, a
        truncated or corrupt file, a checksum mismatch, another format or version. The
        caller's current memory is untouched: swap it only when this returns.
        ``limits``: the configuration the memory must live within (see
        :meth:`from_snapshot`)."""
        header, tensors = read_snapshot(path)
        return cls.from_snapshot(header, tensors, device, limits, where=str(path))

    @classmethod
    def from_snapshot(
        cls,
        header: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        device: str | torch.device = "cpu",
        limits: MemoryLimits | None = None,
        where: str = "snapshot",
    ) -> VoxelPatchMemory:
        """A memory from a validated snapshot (:func:`read_snapshot`).

        With ``limits`` (the node's configuration) the snapshot must have the configured
        voxel size and feature widths, and fit within the configured ``max_voxels``; the
        memory keeps the configured bounds, never the file's (a crafted header asking for
        5e7 voxels allocates nothing). Without, the file's own bounds are used."""
        torch.empty(0, device=device)  # an unusable device is the caller's error, raised as is
        own = {k: v for k, v in tensors.items() if "/" not in k}
        try:
            return cls._from_snapshot(header, own, device, limits)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise SnapshotError(f"{where}: {exc}") from exc

    @classmethod
    def _from_snapshot(
        cls,
        header: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        device: str | torch.device,
        limits: MemoryLimits | None = None,
    ) -> VoxelPatchMemory:
        max_voxels, max_radius, max_age, dtype, tensors = checked_limits(header, tensors, limits)
        bounds = header["bounds"]
        dims = {str(k): int(d) for k, d in header["feature_dims"]}
        voxel_size = float(header["voxel_size"])
        m = int(header["num_voxels"])
        mem = cls(
            dims,
            voxel_size=voxel_size,
            max_voxels=max_voxels,
            max_radius=max_radius,
            max_age_s=max_age,
            device=device,
            feature_dtype=dtype,
            evict_headroom=float(bounds["evict_headroom"]),
        )
        coords, cen = tensors["coords"], tensors["centroids"]
        counts, ls, feats = tensors["counts"], tensors["last_seen"], tensors["features"]
        expect = {
            "coords": ((m, 3), torch.long),
            "centroids": ((m, 3), torch.float32),
            "counts": ((m,), torch.long),
            "last_seen": ((m,), torch.float64),
            "features": ((m, mem.feature_dim_total), dtype),
        }
        for name, (shape, dt) in expect.items():
            t = tensors[name]
            if tuple(t.shape) != shape or t.dtype != dt:
                raise ValueError(f"{name}: expected {shape} {dt}, got {tuple(t.shape)} {t.dtype}")
        if m and bool((counts < 1).any()):
            raise ValueError("voxel counts must be >= 1")
        if m and not bool(vk.in_range(coords).all()):
            raise ValueError("voxel coordinates out of range")
        keys = vk.pack(coords)
        if m and int(torch.unique(keys).numel()) != m:
            raise ValueError("duplicate voxel coordinates")

        d = mem.device
        slots = torch.arange(m, device=d)
        mem._keys[:m] = keys.to(d)
        mem._coords[:m] = coords.to(d)
        mem._centroid[:m] = cen.to(d)
        mem._count[:m] = counts.to(d)
        mem._last_seen[:m] = ls.to(d)
        mem._feat[:m] = feats.to(d)
        mem._active[:m] = True
        mem._n_used = mem._n_live = m
        if m:
            mem._insert(mem._keys[:m], slots)
            mem._age_floor = float(ls.min())
        mem._newest = header["newest_stamp"]
        counters = header["counters"]
        mem._frames = int(counters["frames_integrated"])
        mem._points_received = int(counters["points_received"])
        mem._rejected_nonfinite = int(counters["points_rejected_nonfinite"])
        mem._rejected_range = int(counters["points_rejected_out_of_range"])
        mem._evictions = {r: int(counters["evictions"].get(r, 0)) for r in EVICT_REASONS}
        return mem
