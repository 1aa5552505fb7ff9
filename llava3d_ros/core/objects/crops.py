"""Re-encoding crops of an instance's best views (OpenMask3D's multi-scale crops, online).

A whole frame at 224 px gives a 9 cm butter package 2 m away a fraction of one 40 x 30 px
patch, so its pooled feature is mostly table and wall. For each instance, the keyframes
that saw most of it are cropped around its pixels (a square with a margin), the crop is
resized to the encoder's input and encoded, and the crop patches the instance covers
(from the keyframe's own pixel samples, so occlusion is respected) are pooled into a crop
feature. The instance's feature blends the crop features with the frame-pooled one.

Crops are expensive (one encoder call each), so they run off the ingest path in the
object worker under a time budget per update, most needed first: instances without a crop,
objects before furniture, fewer pooled views first. Results are cached per (instance id,
keyframe stamp) and dropped when the instance's size changes a lot (a merge or a split).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from llava3d_ros.core.encoders.base import PatchGeometry
from llava3d_ros.core.objects.features import KeyframeObservation

__all__ = [
    "CropConfig",
    "CropFeature",
    "CropRefiner",
    "crop_box",
    "crop_input",
    "crop_patch_weights",
]


@dataclass(frozen=True)
class CropConfig:
    views_per_instance: int = 3
    min_samples: int = 4  # sampled pixels of the instance in a view for a crop
    margin: float = 0.3  # crop side = (1 + 2 margin) x the larger side of the pixel box
    min_side_px: int = 64
    min_coverage: float = 0.5  # crop patches the instance covers this much are pooled
    max_size_change: float = 2.0  # a cached crop is dropped when voxels change by this factor
    mask_tolerance: float = 0.05  # ... and made again when its pixel mask changed more
    batch: int = 1  # crops per encoder call: short calls keep keyframes from waiting


@dataclass
class CropFeature:
    feature: NDArray[np.float32]  # (D,) unit
    weight: float
    voxels: int  # the instance's voxel count when cropped
    samples: float = 0.0  # its sampled pixels in that view when cropped (the mask's size)


@dataclass(order=True)
class _Job:
    priority: tuple[float, ...]
    instance_id: int = field(compare=False)
    obs: KeyframeObservation = field(compare=False)
    mask: NDArray[np.bool_] = field(compare=False)  # which of obs' samples are the instance
    voxels: int = field(compare=False)
    samples: float = field(compare=False, default=0.0)


def crop_box(
    pixels: NDArray[np.floating], width: int, height: int, stride: int, cfg: CropConfig
) -> tuple[int, int, int] | None:
    """(u0, v0, side) of a square crop around pixel samples (N, 2), inside the image."""
    if len(pixels) == 0:
        return None
    lo = pixels.min(axis=0) - stride / 2.0
    hi = pixels.max(axis=0) + stride / 2.0
    side = max(float((hi - lo).max()) * (1.0 + 2.0 * cfg.margin), float(cfg.min_side_px))
    side = round(min(side, width, height))
    centre = (lo + hi) / 2.0
    u0 = round(np.clip(centre[0] - side / 2.0, 0, width - side))
    v0 = round(np.clip(centre[1] - side / 2.0, 0, height - side))
    return u0, v0, side


def crop_input(rgb: np.ndarray, box: tuple[int, int, int], geometry: PatchGeometry) -> np.ndarray:
    """The square ``box`` (u0, v0, side) of an (H, W, 3) image resized to the encoder's
    input, as the object layer encodes it (the default head is trained on the same)."""
    u0, v0, side = box
    crop = np.ascontiguousarray(rgb[v0 : v0 + side, u0 : u0 + side])
    interp = cv2.INTER_AREA if side > geometry.input_width else cv2.INTER_CUBIC
    return cv2.resize(crop, (geometry.input_width, geometry.input_height), interpolation=interp)


def crop_patch_weights(coverage: NDArray[np.floating], min_coverage: float) -> NDArray[np.float64]:
    """Pooling weight of each crop patch: its coverage by the instance where that reaches
    ``min_coverage`` (else where it reaches half the best patch's), 0 elsewhere."""
    use = coverage >= min_coverage
    if not use.any():
        use = coverage >= 0.5 * coverage.max() if coverage.max() > 0 else use
    return np.where(use, coverage, 0.0).astype(np.float64)


class CropRefiner:
    """Plans, runs and caches crop features for the instances of the object layer."""

    def __init__(
        self,
        encode: Callable[[list[np.ndarray]], torch.Tensor],
        geometry: PatchGeometry,
        config: CropConfig | None = None,
    ) -> None:
        self.encode = encode  # RGB crops -> (B, gh, gw, D) text-aligned patch features
        self.geometry = geometry
        self.config = config or CropConfig()
        self.cache: dict[int, dict[float, CropFeature]] = {}
        self.chosen: dict[int, set[float]] = {}  # the views the latest plan wants per id
        self.pending = 0
        self.encoded = 0

    def clear(self) -> None:
        self.cache.clear()
        self.chosen.clear()
        self.pending = 0

    def plan(
        self,
        ids: Sequence[int],
        roles: Sequence[str],
        voxels: Sequence[int],
        views: Sequence[int],
        observations: Sequence[KeyframeObservation],
        labels: Sequence[NDArray[np.int32]],
    ) -> list[_Job]:
        """Crops still missing for the current instances, most needed first.

        ``labels[v]``: the instance row of each sample of ``observations[v]`` (-1: none)."""
        cfg = self.config
        k = len(ids)
        # Drop the cache of instances that are gone or changed a lot, and crops of views
        # that left the keyframe store: those can never be chosen again (without this the
        # cache grew with every view a long run chose).
        live = dict(zip(ids, voxels, strict=True))
        in_store = {obs.stamp for obs in observations}
        for iid in list(self.cache):
            if iid not in live:
                del self.cache[iid]
                continue
            for stamp, cf in list(self.cache[iid].items()):
                ratio = max(live[iid], 1) / max(cf.voxels, 1)
                changed = ratio > cfg.max_size_change or ratio < 1.0 / cfg.max_size_change
                if changed or stamp not in in_store:
                    del self.cache[iid][stamp]
        if k == 0 or not observations:
            self.pending = 0
            return []
        visible = np.zeros((len(observations), k))
        for v, (obs, lab) in enumerate(zip(observations, labels, strict=True)):
            inst = lab >= 0
            if inst.any():
                visible[v] = np.bincount(lab[inst], weights=obs.count[inst], minlength=k)
        jobs: list[_Job] = []
        for row in range(k):
            iid = int(ids[row])
            order = np.argsort(-visible[:, row], kind="stable")
            chosen = [
                int(v)
                for v in order[: cfg.views_per_instance]
                if visible[v, row] >= cfg.min_samples and observations[v].image
            ]
            done = self.cache.setdefault(iid, {})
            # Only the current best views count: an instance's features then depend on
            # the map, not on when the worker happened to crop it.
            self.chosen[iid] = {observations[v].stamp for v in chosen}
            have = sum(1 for st in done if st in self.chosen[iid])
            for rank, v in enumerate(chosen):
                obs = observations[v]
                cached = done.get(obs.stamp)
                # A crop whose pixel mask has changed (the instance grew or shrank in
                # that view since) is made again: features follow the current map.
                if cached is not None and abs(cached.samples - visible[v, row]) <= (
                    cfg.mask_tolerance * max(visible[v, row], 1.0)
                ):
                    continue
                # Most needed first: no crop yet, objects, few pooled views, best view.
                priority = (
                    float(have > 0),
                    float(roles[row] != "object"),
                    float(views[row]),
                    float(rank),
                )
                jobs.append(
                    _Job(priority, iid, obs, labels[v] == row, int(voxels[row]), visible[v, row])
                )
        jobs.sort()
        self.pending = len(jobs)
        return jobs

    def run(
        self,
        jobs: list[_Job],
        budget_s: float | None,
        yield_to: Callable[[], bool] | None = None,
    ) -> int:
        """Encode crops until the budget (seconds; None = all) runs out or ``yield_to()``
        says the encoder is wanted for keyframes; returns how many."""
        cfg = self.config
        t0 = time.perf_counter()
        done = 0
        for start in range(0, len(jobs), cfg.batch):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
            if yield_to is not None and yield_to():
                break
            batch = jobs[start : start + cfg.batch]
            crops, metas = [], []
            for job in batch:
                made = self._crop(job)
                if made is not None:
                    crops.append(made[0])
                    metas.append((job, made[1]))
                else:  # nothing to crop: remember, so it is not planned again
                    self.cache.setdefault(job.instance_id, {})[job.obs.stamp] = CropFeature(
                        np.zeros(0, np.float32), 0.0, job.voxels, job.samples
                    )
            if crops:
                feats = self.encode(crops).float().cpu().numpy()
                for (job, coverage), grid in zip(metas, feats, strict=True):
                    self._store(job, coverage, grid.reshape(-1, grid.shape[-1]))
                    done += 1
        self.encoded += done
        self.pending = max(0, len(jobs) - done)
        return done

    def _crop(self, job: _Job) -> tuple[np.ndarray, NDArray[np.float64]] | None:
        """(crop resized to the encoder input, per-crop-patch coverage of the instance)."""
        cfg, obs = self.config, job.obs
        intr = obs.intrinsics
        if intr is None or not obs.image:
            return None
        pix = obs.pixel.astype(np.float64)
        box = crop_box(pix[job.mask], intr.width, intr.height, obs.sample_stride, cfg)
        if box is None:
            return None
        u0, v0, side = box
        img = cv2.imdecode(np.frombuffer(obs.image, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            return None
        g = self.geometry
        crop = crop_input(img[..., ::-1], box, g)
        # Coverage of each crop patch: instance samples / all samples in it.
        rel = (pix - [u0, v0]) * (g.grid_width / side, g.grid_height / side)
        inside = (rel[:, 0] >= 0) & (rel[:, 0] < g.grid_width)
        inside &= (rel[:, 1] >= 0) & (rel[:, 1] < g.grid_height)
        cell = rel[inside].astype(np.int64)
        flat = cell[:, 1] * g.grid_width + cell[:, 0]
        w = obs.count[inside].astype(np.float64)
        total = np.bincount(flat, weights=w, minlength=g.num_patches)
        mine = np.bincount(flat, weights=w * job.mask[inside], minlength=g.num_patches)
        coverage = np.where(total > 0, mine / np.maximum(total, 1e-9), 0.0)
        return crop, coverage

    def _store(self, job: _Job, coverage: NDArray[np.float64], feats: NDArray[np.float32]) -> None:
        w = crop_patch_weights(coverage, self.config.min_coverage)
        weight = float(w.sum())
        if weight <= 0:
            feature = np.zeros(0, np.float32)
        else:
            mean = (w[:, None] * feats).sum(axis=0) / weight
            feature = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        self.cache.setdefault(job.instance_id, {})[job.obs.stamp] = CropFeature(
            feature, weight, job.voxels, job.samples
        )

    def features(
        self, ids: Sequence[int], dim: int
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """(K, D) mean crop feature per instance (unit) and which instances have one."""
        out = np.zeros((len(ids), dim), np.float32)
        has = np.zeros(len(ids), dtype=bool)
        for row, iid in enumerate(ids):
            want = self.chosen.get(int(iid))
            feats = [
                c.feature
                for st, c in self.cache.get(int(iid), {}).items()
                if c.weight > 0 and (want is None or st in want)
            ]
            if feats and feats[0].shape[0] == dim:
                mean = np.mean(feats, axis=0)
                out[row] = mean / max(float(np.linalg.norm(mean)), 1e-12)
                has[row] = True
        return out, has
