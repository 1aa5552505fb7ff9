"""Persistent instance ids across successive segmentations.

Each :meth:`InstanceTracker.update` takes a new :class:`Segmentation` (ids local to it) and
maps every instance to a persistent track id:

1. Overlap: the number of shared voxel keys between every new instance and every live
   track (both are disjoint voxel sets, so one sort-merge of the keys counts all pairs).
2. One-to-one matching: Hungarian assignment (``scipy.optimize.linear_sum_assignment``)
   maximising the shared voxels over pairs whose overlap covers at least ``min_overlap``
   of the smaller of the two. A matched instance keeps the track's id; growing views
   (an instance that gains voxels) keep their id because the smaller side's coverage
   stays high.
3. Merges: an instance that holds at least ``merge_fraction`` of several tracks' voxels
   becomes one track; the id of the matched (largest-overlap) track is kept, the others
   are reported as merged into it (ties go to the older track).
4. Splits: a track whose voxels went to several instances, each mostly (``merge_fraction``
   of the instance) made of that track: the matched (biggest) part keeps the id, the
   other parts get new ids and are reported as split off it.
5. Unmatched instances are new tracks; tracks not seen for more than ``max_missed``
   updates are removed (a flicker in one segmentation does not lose an id or its
   features).

Events (:class:`TrackEvent`: ``new``, ``merged``, ``split``, ``removed``) tell the caller
how to move per-instance feature accumulators: ``merged`` (``others`` -> ``track_id``: add
theirs to its), ``split`` (``others`` came off ``track_id``: start them from a copy or
empty), ``removed``. Each track keeps first/last seen stamps, the number of segmentations
it appeared in, its role, box, voxel keys and support (a persistent id, None = floor).
:meth:`InstanceTracker.update` returns the persistent id of every instance by local id.

Measured (``benchmarks/segmentation.py``, 36 rooms, a segmentation every 10 of 100
frames): ~0.8 ms per update; the instance of a ground-truth object kept its id in 99.5 %
(clean) / 99.2 % (noisy depth) of consecutive updates that found it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from llava3d_ros.core.objects.segmentation import Instance, Segmentation
from llava3d_ros.core.objects.tsdf import validate_config
from llava3d_ros.core.options import option
from llava3d_ros.core.spatial import Box3D

__all__ = [
    "EVENT_KINDS",
    "InstanceTracker",
    "Track",
    "TrackEvent",
    "TrackingConfig",
    "TrackingUpdate",
]

EVENT_NEW = "new"
EVENT_MERGED = "merged"
EVENT_SPLIT = "split"
EVENT_REMOVED = "removed"
EVENT_KINDS = (EVENT_NEW, EVENT_MERGED, EVENT_SPLIT, EVENT_REMOVED)


@dataclass(frozen=True)
class TrackingConfig:
    """Matching thresholds. Field metadata (``help``, ``min``, ``max``) feeds node params."""

    min_overlap: float = option(
        0.3,
        "an instance matches a track when their shared voxels cover this much of the "
        "smaller of the two",
        0.01,
        1.0,
    )
    merge_fraction: float = option(
        0.5,
        "tracks an instance holds this much of are merged into it; instances made this "
        "much of one track split off it",
        0.01,
        1.0,
    )
    max_missed: int = option(2, "segmentations a track may go unseen before it is removed", 0, 1000)

    def __post_init__(self) -> None:
        validate_config(self)


@dataclass
class Track:
    """A persistent instance."""

    id: int
    role: str
    first_seen_s: float
    last_seen_s: float
    observations: int  # segmentations it appeared in
    voxel_keys: NDArray[np.int64]  # from its latest segmentation
    box: Box3D
    support: int | None = None  # persistent id of the instance it rests on
    missed: int = 0  # consecutive updates without a match

    @property
    def num_voxels(self) -> int:
        return int(self.voxel_keys.size)


@dataclass(frozen=True)
class TrackEvent:
    """``new``: ``track_id`` appeared. ``merged``: ``others`` were merged into
    ``track_id``. ``split``: ``others`` split off ``track_id`` (which lives on).
    ``removed``: ``track_id`` is gone."""

    kind: str
    track_id: int
    others: tuple[int, ...] = ()
    stamp_s: float = 0.0


@dataclass(frozen=True)
class TrackingUpdate:
    ids: NDArray[np.int64]  # persistent id of each instance of the segmentation (by local id)
    events: list[TrackEvent]

    def id_of(self, local_id: int) -> int:
        return int(self.ids[local_id])


def _overlaps(new: list[NDArray[np.int64]], old: list[NDArray[np.int64]]) -> NDArray[np.int64]:
    """Shared voxels (len(new), len(old)); each side's sets are disjoint."""
    out = np.zeros((len(new), len(old)), dtype=np.int64)
    if not new or not old:
        return out
    nk = np.concatenate(new)
    ni = np.repeat(np.arange(len(new)), [k.size for k in new])
    ok = np.concatenate(old)
    oi = np.repeat(np.arange(len(old)), [k.size for k in old])
    # Instances of one segmentation are disjoint, but be safe: unique keys per side.
    nk, first_n = np.unique(nk, return_index=True)
    ok, first_o = np.unique(ok, return_index=True)
    _, a, b = np.intersect1d(nk, ok, assume_unique=True, return_indices=True)
    np.add.at(out, (ni[first_n][a], oi[first_o][b]), 1)
    return out


class InstanceTracker:
    """Assigns persistent ids to the instances of successive segmentations."""

    def __init__(self, config: TrackingConfig | None = None) -> None:
        self.config = config or TrackingConfig()
        self._tracks: dict[int, Track] = {}
        self._next_id = 1

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def tracks(self) -> dict[int, Track]:
        """Live tracks by id (including ones missed for up to ``max_missed`` updates)."""
        return dict(self._tracks)

    def reset(self) -> None:
        self._tracks.clear()
        self._next_id = 1

    def _new_track(self, inst: Instance, stamp: float) -> Track:
        t = Track(self._next_id, inst.role, stamp, stamp, 1, inst.voxel_keys, inst.box)
        self._next_id += 1
        self._tracks[t.id] = t
        return t

    def update(self, seg: Segmentation, stamp_s: float | None = None) -> TrackingUpdate:
        cfg = self.config
        stamp = float(seg.stamp_s if stamp_s is None else stamp_s)
        insts = seg.instances
        old_ids = sorted(self._tracks)
        old = [self._tracks[i] for i in old_ids]
        inter = _overlaps([i.voxel_keys for i in insts], [t.voxel_keys for t in old])
        n_new = np.array([i.voxel_keys.size for i in insts], dtype=np.float64)
        n_old = np.array([t.voxel_keys.size for t in old], dtype=np.float64)
        ids = np.full(len(insts), -1, dtype=np.int64)
        events: list[TrackEvent] = []
        matched_old: set[int] = set()
        if insts and old:
            smaller = np.minimum(n_new[:, None], n_old[None, :])
            cover = inter / np.maximum(smaller, 1.0)
            ok = (inter > 0) & (cover >= cfg.min_overlap)
            # Hungarian on shared voxels; ties towards older tracks (lower id).
            score = np.where(ok, inter - 1e-6 * np.arange(len(old))[None, :], 0.0)
            r, c = linear_sum_assignment(-score)
            for i, j in zip(r.tolist(), c.tolist(), strict=True):
                if ok[i, j]:
                    ids[i] = old[j].id
                    matched_old.add(j)
            frac_old = inter / np.maximum(n_old[None, :], 1.0)  # share of a track in i
            frac_new = inter / np.maximum(n_new[:, None], 1.0)  # share of i from a track
            assigned = {old.index(self._tracks[int(t)]): i for i, t in enumerate(ids) if t >= 0}
            # Merges: instance i holds most of one or more tracks besides its own match
            # (tracks matched to another instance stay with that one).
            for i in range(len(insts)):
                holders = [
                    j
                    for j in np.flatnonzero(frac_old[i] >= cfg.merge_fraction).tolist()
                    if assigned.get(j, i) == i
                ]
                if ids[i] < 0:
                    if len(holders) < 2:
                        continue
                    best = max(holders, key=lambda j: (inter[i, j], -old[j].id))
                    ids[i] = old[best].id
                    matched_old.add(best)
                    assigned[best] = i
                gone = tuple(sorted(old[j].id for j in holders if old[j].id != ids[i]))
                if not gone:
                    continue
                events.append(TrackEvent(EVENT_MERGED, int(ids[i]), gone, stamp))
                keeper = self._tracks[int(ids[i])]
                for j in holders:
                    matched_old.add(j)
                    assigned[j] = i
                for tid in gone:
                    t = self._tracks.pop(tid)
                    keeper.first_seen_s = min(keeper.first_seen_s, t.first_seen_s)
                    keeper.observations = max(keeper.observations, t.observations)
            # Splits: track j is most of several instances; the matched one keeps the id.
            for j in range(len(old)):
                parts = np.flatnonzero(frac_new[:, j] >= cfg.merge_fraction)
                if parts.size < 2 or old[j].id not in self._tracks:
                    continue
                if not any(ids[i] == old[j].id for i in parts.tolist()):
                    continue
                off = []
                for i in parts.tolist():
                    if ids[i] < 0:
                        t = self._new_track(insts[i], stamp)
                        t.first_seen_s = old[j].first_seen_s
                        ids[i] = t.id
                        off.append(t.id)
                if off:
                    events.append(TrackEvent(EVENT_SPLIT, old[j].id, tuple(off), stamp))
        # New tracks.
        for i, inst in enumerate(insts):
            if ids[i] < 0:
                t = self._new_track(inst, stamp)
                ids[i] = t.id
                events.append(TrackEvent(EVENT_NEW, t.id, (), stamp))
        # Update matched tracks.
        seen = set(ids.tolist())
        split_new = {o for e in events if e.kind == EVENT_SPLIT for o in e.others}
        new_ids = {e.track_id for e in events if e.kind == EVENT_NEW} | split_new
        for i, inst in enumerate(insts):
            t = self._tracks[int(ids[i])]
            if t.id not in new_ids:
                t.observations += 1
            t.last_seen_s = stamp
            t.role = inst.role
            t.voxel_keys = inst.voxel_keys
            t.box = inst.box
            t.missed = 0
        for i, inst in enumerate(insts):
            self._tracks[int(ids[i])].support = (
                None if inst.support is None else int(ids[inst.support])
            )
        # Missed / removed.
        for tid in list(self._tracks):
            if tid in seen:
                continue
            t = self._tracks[tid]
            t.missed += 1
            if t.missed > cfg.max_missed:
                del self._tracks[tid]
                events.append(TrackEvent(EVENT_REMOVED, tid, (), stamp))
        return TrackingUpdate(ids=ids, events=events)

    def restore(self, next_id: int, tracks: list[Track]) -> None:
        """Replace the tracks with saved ones (a loaded snapshot): the next segmentation
        matches its instances to them, so persistent ids survive save and load."""
        if next_id < 1 or any(t.id < 1 or t.id >= next_id for t in tracks):
            raise ValueError("track ids must be in [1, next_id)")
        if len({t.id for t in tracks}) != len(tracks):
            raise ValueError("duplicate track ids")
        self._tracks = {t.id: t for t in tracks}
        self._next_id = int(next_id)
