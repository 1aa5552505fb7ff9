"""The object layer: TSDF geometry, online instances and per-instance features.

Per keyframe (ingest thread, :meth:`ObjectMap.integrate`): the depth goes into the TSDF
(~5 ms), the keyframe's patch features and pixel samples go into a bounded store, and the
keyframe is pooled at once into the instances of the current segmentation, so a label
follows new views without waiting for the next segmentation.

Off the ingest path (the object worker, every ``update_period_s`` when something new was
integrated, :meth:`ObjectMap.update`): the fused surface is extracted, segmented into
structure, furniture and objects, matched to the previous instances (persistent ids),
features are pooled again from every stored keyframe under the new segmentation, and a
new immutable :class:`ObjectSnapshot` replaces the old one. Queries read snapshots only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.devices import is_out_of_memory, release_cached_memory
from llava3d_ros.core.encoders.base import PatchGeometry
from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.objects.colour import colour_histogram, colour_name
from llava3d_ros.core.objects.crops import CropConfig, CropRefiner
from llava3d_ros.core.objects.features import (
    LabelMap,
    ObservationStore,
    PooledFeatures,
    observe_keyframe,
    pool_features,
)
from llava3d_ros.core.objects.instances import ObjectInstance, ObjectSnapshot
from llava3d_ros.core.objects.labels import LabelVocabulary, TopLabels
from llava3d_ros.core.objects.segmentation import (
    Segmentation,
    SegmentationConfig,
    segment_surface,
)
from llava3d_ros.core.objects.tracking import InstanceTracker, Track, TrackingConfig
from llava3d_ros.core.objects.tsdf import GeometryConfig, IntegrationStats, TsdfMap
from llava3d_ros.core.options import option
from llava3d_ros.core.spatial import Box3D

__all__ = ["ObjectConfig", "ObjectMap"]


@dataclass(frozen=True)
class ObjectConfig:
    enabled: bool = option(
        True, "the object layer: TSDF geometry, online instances, instance features"
    )
    update_period_s: float = option(
        1.0, "how often the object worker re-segments (when something new came in)", 0.05, 3600.0
    )
    min_coverage: float = option(
        0.3, "a patch feeds an instance covering at least this fraction of it", 0.0, 1.0
    )
    sample_stride_px: int = option(
        4, "every n-th pixel of a keyframe is sampled to find the instances under patches", 1, 64
    )
    max_keyframes: int = option(
        300, "keyframes kept for pooling features again after re-segmentation", 1, 100_000
    )
    top_k: int = option(5, "labels per instance in the object list", 1, 100)
    label_temperature: float = option(
        0.0, "softmax temperature of labels (0 = the grounding model's own)", 0.0, 10.0
    )
    crops: bool = option(
        True, "re-encode crops of each instance's best views (small objects need them)"
    )
    crop_views: int = option(3, "views cropped per instance", 1, 20)
    crop_budget_s: float = option(
        0.5, "encoder time the object worker may spend on crops per update", 0.0, 60.0
    )
    crop_yield_s: float = option(
        0.15,
        "crops wait while keyframes come faster than this (s between them): the encoder is "
        "the ingest's first (crops then catch up when the robot slows or stops)",
        0.0,
        10.0,
    )
    crop_weight: float = option(
        0.5,
        "share of the crop features in an instance's feature (the rest: frame patches)",
        0.0,
        1.0,
    )
    vocabulary: tuple[str, ...] = option(
        (),
        "label names (empty = the grounding model's training vocabulary when it has one, "
        "else query.describe_vocabulary)",
    )


class ObjectMap:
    """Geometry + instances + instance features. Thread-safe: one ingest thread calls
    :meth:`integrate`, the worker (or :meth:`flush`) calls :meth:`update`, any thread
    reads :meth:`snapshot`."""

    def __init__(
        self,
        config: ObjectConfig,
        geometry: GeometryConfig,
        segmentation: SegmentationConfig,
        tracking: TrackingConfig,
        vocabulary: LabelVocabulary | None,
        encode_crops: Callable[[list[np.ndarray]], torch.Tensor] | None = None,
        crop_geometry: PatchGeometry | None = None,
    ) -> None:
        """``encode_crops``: RGB crops -> (B, gh, gw, D) text-aligned patch features in
        the grid ``crop_geometry`` (None: no crops)."""
        self.config = config
        self.tsdf = TsdfMap(geometry)
        self.segmentation_config = segmentation
        self.tracker = InstanceTracker(tracking)
        self.vocabulary = vocabulary
        self.store = ObservationStore(config.max_keyframes)
        self.crops: CropRefiner | None = None
        if config.crops and encode_crops is not None and crop_geometry is not None:
            self.crops = CropRefiner(
                encode_crops, crop_geometry, CropConfig(views_per_instance=config.crop_views)
            )
        self._snapshot = ObjectSnapshot()
        self._lock = threading.Lock()  # snapshot, label map, pooled sums
        self._update_lock = threading.Lock()  # one segmentation update at a time
        self._label_map: LabelMap | None = None
        self._pooled: PooledFeatures | None = None
        self._carried: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (feature, views)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_segmentation: Segmentation | None = None
        self.updates = 0
        self.update_times: list[float] = []
        self.errors = 0
        self.last_error = ""
        self._last_keyframe = -1e9  # monotonic time of the newest integrate() call

    # ------------------------------------------------------------------ ingest

    def integrate(
        self,
        rgb: np.ndarray,
        depth_m: np.ndarray,
        intrinsics: CameraIntrinsics,
        t_map_camera: np.ndarray,
        stamp: float,
        robot_position: np.ndarray | None,
        patch_features: torch.Tensor | None,
        patch_geometry: PatchGeometry,
    ) -> IntegrationStats:
        """Fuse a keyframe's depth and keep its patch features for pooling."""
        self._last_keyframe = time.monotonic()
        stats = self.tsdf.integrate(depth_m, rgb, intrinsics, t_map_camera, stamp, robot_position)
        if patch_features is not None and self.vocabulary is not None:
            obs = observe_keyframe(
                depth_m,
                intrinsics,
                t_map_camera,
                patch_geometry,
                patch_features,
                stamp,
                self.tsdf.config.voxel_size,
                stride=self.config.sample_stride_px,
                min_depth=self.tsdf.config.min_depth_m,
                max_depth=self.tsdf.config.max_depth_m,
                rgb=rgb if self.crops is not None else None,
            )
            self.store.add(obs)
            with self._lock:
                label_map, pooled = self._label_map, self._pooled
                if label_map is not None and pooled is not None and len(self._snapshot):
                    extra = pool_features(
                        [obs], label_map, len(self._snapshot), self.config.min_coverage
                    )
                    pooled.add(extra)
                    self._snapshot = self._relabel(self._snapshot, pooled)
        self._dirty.set()
        return stats

    # ------------------------------------------------------------------ worker

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llava3d_objects", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        period = self.config.update_period_s
        next_time = time.monotonic()
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                break
            delay = next_time - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_time = time.monotonic() + period
            self._dirty.clear()
            try:
                self.update()
                if self.crops is not None and self.crops.pending:
                    self._dirty.set()  # crops left over the budget: another round
            except Exception as exc:  # keep the worker alive; the owner logs the error
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if is_out_of_memory(exc):  # crops' encoder calls share the GPU
                    release_cached_memory()

    def flush(self, complete: bool = True) -> ObjectSnapshot:
        """Run an update now if anything changed since the last one (tests, evaluation,
        before saving); ``complete``: also every pending crop, whatever the budget (what
        a running node reaches after a few updates)."""
        pending = self.crops is not None and self.crops.pending > 0
        if self._dirty.is_set() or self.updates == 0 or (complete and pending):
            self._dirty.clear()
            return self.update(crop_budget_s=None if complete else self.config.crop_budget_s)
        return self.snapshot()

    # ------------------------------------------------------------------ update

    def snapshot(self) -> ObjectSnapshot:
        with self._lock:
            return self._snapshot

    def update(self, crop_budget_s: float | None = -1.0) -> ObjectSnapshot:
        """Segment, track, pool and label (see the module doc). ``crop_budget_s``: seconds
        for crops (None: all pending; negative: the configured budget)."""
        if crop_budget_s is not None and crop_budget_s < 0:
            crop_budget_s = self.config.crop_budget_s
        with self._update_lock:
            t0 = time.perf_counter()
            surface = self.tsdf.surface()
            stamp = surface.stamp_s
            if len(surface) < 50:
                snap = ObjectSnapshot(version=self.updates + 1, stamp=stamp)
                with self._lock:
                    self._snapshot, self._label_map, self._pooled = snap, None, None
                self.updates += 1
                return snap
            seg = segment_surface(surface, self.segmentation_config)
            track = self.tracker.update(seg, stamp)
            ids = [track.id_of(i.id) for i in seg.instances]
            # Voxel -> row of the new snapshot (structure and noise: -1).
            row_of_local = {inst.id: k for k, inst in enumerate(seg.instances)}
            lut = np.full(max(row_of_local, default=-1) + 2, -1, dtype=np.int32)
            for local, row in row_of_local.items():
                lut[local] = row
            labels = np.where(seg.labels >= 0, lut[np.maximum(seg.labels, 0)], -1)
            label_map = LabelMap(vk.centred_keys(surface.points, surface.voxel_size), labels)
            k = len(seg.instances)
            observations = self.store.items()
            sample_labels = [label_map.lookup(o.keys) for o in observations]
            pooled = pool_features(observations, sample_labels, k, self.config.min_coverage)
            if self.crops is not None:
                jobs = self.crops.plan(
                    ids,
                    [i.role for i in seg.instances],
                    [len(i.voxel_keys) for i in seg.instances],
                    list(pooled.views),
                    observations,
                    sample_labels,
                )
                yield_to = None
                if crop_budget_s is not None:  # a complete flush never yields
                    gap = self.config.crop_yield_s
                    yield_to = lambda: time.monotonic() - self._last_keyframe < gap  # noqa: E731
                self.crops.run(jobs, crop_budget_s, yield_to)
            features, has = self._features(pooled, ids)
            tracks = self.tracker.tracks
            instances = []
            for row, inst in enumerate(seg.instances):
                pts = surface.points[inst.indices]
                cols = surface.colors[inst.indices]
                tr = tracks.get(ids[row])
                support = 0 if inst.support is None else ids[row_of_local[inst.support]]
                instances.append(
                    ObjectInstance(
                        id=ids[row],
                        role=inst.role,
                        box=inst.box,
                        aabb=Box3D.from_min_max(inst.aabb_min, inst.aabb_max),
                        points=pts,
                        colors=cols,
                        support_id=int(support),
                        colour=colour_name(cols),
                        colour_fractions=colour_histogram(cols),
                        labels=TopLabels((), ()),
                        first_seen=tr.first_seen_s if tr else stamp,
                        last_seen=tr.last_seen_s if tr else stamp,
                        observations=int(pooled.views[row]) if len(pooled.views) else 0,
                        has_feature=bool(has[row]),
                    )
                )
            snap = ObjectSnapshot(
                instances=tuple(instances),
                features=features,
                version=self.updates + 1,
                stamp=stamp,
                floor_z=seg.floor_height,
            )
            with self._lock:
                # A keyframe integrated while this update ran went into the old rows only;
                # it is in the store, so the next update pools it under this segmentation.
                self._label_map, self._pooled = label_map, pooled
                self._snapshot = self._relabel(snap, pooled, features, has)
            self.last_segmentation = seg
            self.updates += 1
            elapsed = time.perf_counter() - t0
            self.update_times.append(elapsed)
            del self.update_times[:-200]
            with self._lock:
                self._snapshot = _replace(self._snapshot, update_time_s=elapsed)
                return self._snapshot

    def _features(self, pooled: PooledFeatures, ids: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        """Instance features from the pooled sums; instances with no stored view keep the
        feature their persistent id had."""
        k = len(ids)
        dim = self.vocabulary.prototypes.shape[1] if self.vocabulary is not None else 0
        if pooled.sums.shape[1] == 0 or k == 0:
            feats = torch.zeros(k, dim)
            has = np.zeros(k, dtype=bool)
        else:
            feats, has = pooled.means()
        if self.crops is not None and k and dim:
            crop, has_crop = self.crops.features(ids, dim)
            a = self.config.crop_weight
            both = has & has_crop
            mixed = feats.numpy().copy()
            mixed[both] = (1.0 - a) * mixed[both] + a * crop[both]
            only = has_crop & ~has
            mixed[only] = crop[only]
            norm = np.linalg.norm(mixed, axis=1, keepdims=True)
            feats = torch.from_numpy((mixed / np.maximum(norm, 1e-12)).astype(np.float32))
            has = has | has_crop
        for row, pid in enumerate(ids):
            if not has[row] and pid in self._carried:
                feats[row] = self._carried[pid][0]
                has[row] = True
        self._carried = {pid: (feats[row].clone(), 0) for row, pid in enumerate(ids) if has[row]}
        return feats, has

    def _relabel(
        self,
        snap: ObjectSnapshot,
        pooled: PooledFeatures,
        features: torch.Tensor | None = None,
        has: np.ndarray | None = None,
    ) -> ObjectSnapshot:
        """The snapshot with features, label distributions and top labels recomputed."""
        if features is None or has is None:
            features, has = self._features(pooled, [i.id for i in snap.instances])
        vocab = self.vocabulary
        if vocab is None or len(snap) == 0 or features.shape[1] == 0:
            return snap
        probs = vocab.distribution(features, [i.role for i in snap.instances])
        tops = vocab.top(probs, self.config.top_k)
        instances = tuple(
            _replace(
                inst,
                labels=tops[r] if has[r] else TopLabels((), ()),
                has_feature=bool(has[r]),
                observations=int(pooled.views[r]) if len(pooled.views) > r else inst.observations,
            )
            for r, inst in enumerate(snap.instances)
        )
        return _replace(snap, instances=instances, features=features, probabilities=probs)

    # ------------------------------------------------------------------ snapshots

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able header, tensors) of the geometry, the persistent instances and
        their features, for the pipeline's snapshot. The keyframe store is not saved (it
        is large and rebuilt as the robot looks again); instances keep their features by
        id until then."""
        tsdf_header, tsdf_arrays = self.tsdf.state()
        tensors: dict[str, torch.Tensor] = {
            f"tsdf.{k}": _to_tensor(v) for k, v in tsdf_arrays.items()
        }
        with self._update_lock:
            tracks = sorted(self.tracker.tracks.values(), key=lambda t: t.id)
            next_id = self.tracker.next_id
            snap = self.snapshot()
        keys = [t.voxel_keys.astype(np.int64) for t in tracks]
        tensors["track_keys"] = torch.from_numpy(
            np.concatenate(keys) if keys else np.zeros(0, np.int64)
        )
        rows = [i for i, inst in enumerate(snap.instances) if inst.has_feature]
        dim = int(snap.features.shape[1]) if snap.features.ndim == 2 else 0
        tensors["feature_ids"] = torch.tensor(
            [snap.instances[i].id for i in rows], dtype=torch.int64
        )
        tensors["features"] = (
            snap.features[rows].float().contiguous() if rows else torch.zeros(0, dim)
        )
        header = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "tsdf": tsdf_header,
            "tsdf_dtypes": {k: str(v.dtype) for k, v in tsdf_arrays.items()},
            "next_id": next_id,
            "tracks": [
                {
                    "id": t.id,
                    "role": t.role,
                    "first_seen_s": t.first_seen_s,
                    "last_seen_s": t.last_seen_s,
                    "observations": t.observations,
                    "missed": t.missed,
                    "support": t.support,
                    "keys": int(t.voxel_keys.size),
                    "box": [*map(float, t.box.center), *map(float, t.box.size), t.box.yaw],
                }
                for t in tracks
            ],
        }
        return header, tensors

    def prepare_state(
        self, header: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> tuple[TsdfMap, int, list[Track], dict[int, torch.Tensor]]:
        """Validate and build everything a saved state restores, without touching the
        live map (raises ValueError/KeyError/TypeError on a bad state)."""
        if header.get("format") != STATE_FORMAT or header.get("version") != STATE_VERSION:
            raise ValueError(f"not an object layer state ({header.get('format')!r})")
        dtypes = header["tsdf_dtypes"]
        arrays = {
            k[len("tsdf.") :]: _to_array(v, str(dtypes[k[len("tsdf.") :]]))
            for k, v in tensors.items()
            if k.startswith("tsdf.")
        }
        tsdf = TsdfMap.from_state(header["tsdf"], arrays, self.tsdf.config)
        keys = tensors["track_keys"].numpy().astype(np.int64)
        tracks: list[Track] = []
        start = 0
        for t in header["tracks"]:
            n = int(t["keys"])
            if n < 0 or start + n > len(keys):
                raise ValueError("track voxel keys do not add up")
            c, z, yaw = t["box"][:3], t["box"][3:6], float(t["box"][6])
            tracks.append(
                Track(
                    int(t["id"]),
                    str(t["role"]),
                    float(t["first_seen_s"]),
                    float(t["last_seen_s"]),
                    int(t["observations"]),
                    np.sort(keys[start : start + n]),
                    Box3D(c, z, yaw),
                    None if t["support"] is None else int(t["support"]),
                    int(t["missed"]),
                )
            )
            start += n
        feats = tensors["features"].float()
        ids = tensors["feature_ids"].tolist()
        if feats.ndim != 2 or len(ids) != feats.shape[0] or not torch.isfinite(feats).all():
            raise ValueError("instance features are malformed")
        dim = self.vocabulary.prototypes.shape[1] if self.vocabulary is not None else 0
        carried = {int(i): f for i, f in zip(ids, feats, strict=True) if f.shape[0] == dim}
        return tsdf, int(header["next_id"]), tracks, carried

    def apply_state(
        self, prepared: tuple[TsdfMap, int, list[Track], dict[int, torch.Tensor]]
    ) -> None:
        """Swap a prepared state in; the next update segments the loaded geometry and
        matches it to the saved tracks (same ids), with the saved features."""
        tsdf, next_id, tracks, carried = prepared
        with self._update_lock:
            self.tsdf = tsdf
            self.store.clear()
            if self.crops is not None:
                self.crops.clear()
            self.tracker.restore(next_id, tracks)
            with self._lock:
                self._snapshot = ObjectSnapshot()
                self._label_map, self._pooled = None, None
                self._carried = {i: (f, 0) for i, f in carried.items()}
        self._dirty.set()

    # ------------------------------------------------------------------ admin

    def clear(self) -> None:
        with self._update_lock:
            self.tsdf.clear()
            self.store.clear()
            self.tracker.reset()
            if self.crops is not None:
                self.crops.clear()
            with self._lock:
                self._snapshot = ObjectSnapshot()
                self._label_map, self._pooled, self._carried = None, None, {}
            self.updates = 0

    def stats(self) -> Mapping[str, Any]:
        snap = self.snapshot()
        times = sorted(self.update_times)
        return {
            "objects": sum(1 for i in snap.instances if i.role == "object"),
            "furniture": sum(1 for i in snap.instances if i.role == "furniture"),
            "updates": self.updates,
            "update_p50_ms": 1e3 * times[len(times) // 2] if times else 0.0,
            "tsdf_blocks": self.tsdf.num_blocks,
            "stored_keyframes": len(self.store),
            "pending_crops": self.crops.pending if self.crops is not None else 0,
            "crops_encoded": self.crops.encoded if self.crops is not None else 0,
        }


STATE_FORMAT = "llava3d_ros.object_layer"
STATE_VERSION = 1


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """numpy -> torch for safetensors (unsigned 16-bit travels as signed, same bits)."""
    if a.dtype == np.uint16:
        a = a.view(np.int16)
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_array(t: torch.Tensor, dtype: str) -> np.ndarray:
    a = t.numpy()
    if dtype == "uint16":
        if a.dtype != np.int16:
            raise ValueError(f"expected int16 storage for uint16, got {a.dtype}")
        return a.view(np.uint16)
    if str(a.dtype) != dtype:
        raise ValueError(f"expected {dtype}, got {a.dtype}")
    return a


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)
