"""Language grounding in the 3D patch memory: text embedding -> voxel scores -> 3D boxes.

Pipeline of :meth:`Grounder.ground` (inputs decoupled from the memory class):

1. similarity: cosine of every voxel's "ground" feature with the query and with a few
   negative prompts ("object", "things", "floor", "wall", ...), in row chunks so the
   temporaries stay small; no (M, M) anything.
2. calibration: per-voxel relevancy ``sigmoid((cos_query - max_k cos_neg_k) / T)``.
3. selection: voxels scoring >= max(floor, relative x best), capped in number.
4. clustering: connected components of the selected voxels on the voxel grid
   (26-neighbourhood by default), from sorted int64 voxel keys + ``searchsorted``.
5. boxes: robust-percentile box per surviving cluster, a robust cluster score, top-k.

Score calibration (why this one): the relevancy is LERF's pairwise softmax against
canonical negatives, ``min_k softmax([q, n_k] / T)[0]``, which equals
``sigmoid((cos_q - max_k cos_n_k) / T)``. It is in [0, 1]; 0.5 means "the query
explains this voxel exactly as well as the best background prompt", for any temperature,
so ``min_score = 0.5`` has a fixed meaning across queries and models ("beats every
negative"). A full softmax over the query and K negatives would instead shrink with K
(K equal negatives cap it at 1/(K+1)), and raw cosines are not comparable across queries
(CLIP-like text embeddings differ in how similar they are to images at all). T defaults
to 0.01, CLIP's learned logit scale (100): the model was trained to read cosine gaps on
that scale, so the sigmoid is its own two-way probability. Without negatives the score
falls back to ``sigmoid((cos_q - fallback_bias) / T)``, which is model-specific; give
negatives.

Device: similarity and selection run where the features live (CPU or GPU); only the
selected subset moves to the CPU for clustering and boxes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.options import option
from llava3d_ros.core.spatial import Box3D

if TYPE_CHECKING:
    from llava3d_ros.core.encoders.base import TextEncoder

__all__ = [
    "DEFAULT_NEGATIVE_PROMPTS",
    "Grounder",
    "GroundingConfig",
    "GroundingResult",
    "connected_voxel_components",
]

# LERF's canonical phrases plus the large surfaces every indoor map is full of.
DEFAULT_NEGATIVE_PROMPTS: tuple[str, ...] = (
    "object",
    "things",
    "stuff",
    "texture",
    "floor",
    "wall",
    "ceiling",
)

# Result codes (the ROS node maps "empty_memory" to EMPTY_MEMORY, the others to NO_MATCH).
OK = "ok"
EMPTY_MEMORY = "empty_memory"
NO_VALID_VOXELS = "no_valid_voxels"
BELOW_MIN_SCORE = "below_min_score"
NO_CLUSTER = "no_cluster"


@dataclass
class GroundingConfig:
    """Tunables of :class:`Grounder` (all have defaults; ROS parameters map 1:1)."""

    temperature: float = option(
        0.01, "T of sigmoid((cos_q - max cos_neg) / T); CLIP's logit scale 100", 1e-4, 1.0
    )
    min_score: float = option(
        0.5, "cluster score below which nothing matches (0.5 = beats every negative)", 0.0, 1.0
    )
    fallback_bias: float = option(
        0.2, "cosine read as relevancy 0.5 when there are no negative prompts", -1.0, 1.0
    )
    negative_prompts: tuple[str, ...] = option(
        DEFAULT_NEGATIVE_PROMPTS, "background phrases every query must beat"
    )
    negative_dedup_cosine: float = option(
        0.9, 'ignore negatives this close to the query ("wall" for "the wall")', 0.0, 1.0
    )
    select_relative: float = option(
        0.5, "keep voxels scoring >= this x the best voxel ...", 0.0, 1.0
    )
    select_floor: float = option(
        0.3, "... and >= this (lowered to min_score if that is lower)", 0.0, 1.0
    )
    max_selected_voxels: int = option(
        200_000, "cap on clustered voxels (top scores kept)", 1, 100_000_000
    )
    link_radius_voxels: int = option(
        1, "voxels within this Chebyshev radius connect (1 = 26-neighbourhood)", 1, 3
    )
    min_cluster_voxels: int = option(3, "smaller clusters are noise", 1, 100_000)
    box_percentile: float = option(
        2.0, "a box spans the [p, 100 - p] percentiles of its voxels", 0.0, 49.9
    )
    box_padding_voxels: float = option(
        0.5, "boxes grow by this many voxels on every side", 0.0, 10.0
    )
    oriented: bool = option(False, "allow yaw-oriented boxes where they are tighter")
    oriented_min_gain: float = option(
        0.15, "... when they cut the footprint area by at least this fraction", 0.0, 1.0
    )
    score_top_fraction: float = option(
        0.5, "cluster score: weighted mean of its best members (this fraction)", 0.01, 1.0
    )
    chunk_rows: int = option(
        262_144, "rows per similarity chunk (bounds temporaries)", 1, 100_000_000
    )

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError("min_score must be in [0, 1]")
        if not 0.0 <= self.select_relative <= 1.0 or not 0.0 <= self.select_floor <= 1.0:
            raise ValueError("select_relative and select_floor must be in [0, 1]")
        if self.link_radius_voxels < 1 or self.link_radius_voxels > 3:
            raise ValueError("link_radius_voxels must be 1, 2 or 3")
        if self.min_cluster_voxels < 1 or self.max_selected_voxels < 1 or self.chunk_rows < 1:
            raise ValueError("min_cluster_voxels, max_selected_voxels, chunk_rows must be >= 1")
        if not 0.0 <= self.box_percentile < 50.0:
            raise ValueError("box_percentile must be in [0, 50)")
        if self.box_padding_voxels < 0.0:
            raise ValueError("box_padding_voxels must be >= 0")
        if not 0.0 < self.score_top_fraction <= 1.0:
            raise ValueError("score_top_fraction must be in (0, 1]")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroundingConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown grounding config keys: {sorted(unknown)}")
        kw = dict(d)
        if "negative_prompts" in kw:
            kw["negative_prompts"] = tuple(kw["negative_prompts"])
        return cls(**kw)


@dataclass
class GroundingResult:
    """Outcome of one query. ``boxes`` are best first; empty when ``no_match``."""

    boxes: list[Box3D]
    voxel_scores: torch.Tensor  # (M,) float32 relevancy in [0, 1]; 0 for invalid voxels
    voxel_cluster: torch.Tensor  # (M,) int64: index into ``boxes``, -1 elsewhere
    no_match: bool
    code: str = OK  # OK, EMPTY_MEMORY, NO_VALID_VOXELS, NO_CLUSTER, BELOW_MIN_SCORE
    reason: str = ""  # human-readable why, when no_match
    max_voxel_score: float = 0.0
    best_cluster_score: float = 0.0  # best cluster, even when rejected by min_score
    num_selected: int = 0
    num_clusters: int = 0  # clusters of >= min_cluster_voxels before the min_score cut
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def empty_memory(self) -> bool:
        return self.code == EMPTY_MEMORY


# --------------------------------------------------------------------------- voxel graph


def _half_offsets(radius: int) -> NDArray[np.int64]:
    """Neighbour offsets within a Chebyshev radius, one of each +- pair (undirected)."""
    r = np.arange(-radius, radius + 1)
    off = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    lex_positive = (off[:, 0] > 0) | (
        (off[:, 0] == 0) & ((off[:, 1] > 0) | ((off[:, 1] == 0) & (off[:, 2] > 0)))
    )
    return off[lex_positive]


def connected_voxel_components(
    coords: NDArray[np.int64], radius: int = 1
) -> tuple[int, NDArray[np.int64]]:
    """Connected components of occupied voxels (N, 3 int) -> (count, labels (N,)).

    Voxels connect when their coords differ by at most ``radius`` on every axis (radius 1
    = the 26-neighbourhood). Duplicate coords share a component. Vectorised: sort the
    packed keys once, then one ``searchsorted`` per neighbour offset; O(N log N)."""
    n = len(coords)
    if n == 0:
        return 0, np.zeros(0, dtype=np.int64)
    c = np.asarray(coords, dtype=np.int64)
    if not vk.in_range(c, margin=radius).all():
        raise ValueError("voxel coordinates beyond the packable range (core/voxel_keys.py)")
    uniq, inv = np.unique(vk.pack(c), return_inverse=True)
    u = len(uniq)
    rows: list[NDArray[np.int64]] = []
    cols: list[NDArray[np.int64]] = []
    idx = np.arange(u, dtype=np.int64)
    for off in _half_offsets(radius):
        nk = uniq + vk.key_delta(off)
        pos = np.searchsorted(uniq, nk)
        pos_c = np.minimum(pos, u - 1)
        hit = uniq[pos_c] == nk
        if hit.any():
            rows.append(idx[hit])
            cols.append(pos_c[hit])
    if rows:
        r = np.concatenate(rows)
        c = np.concatenate(cols)
        graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(u, u)).tocsr()
    else:
        graph = coo_matrix((u, u), dtype=np.int8).tocsr()
    ncomp, lab = connected_components(graph, directed=False)
    return int(ncomp), lab.astype(np.int64)[inv.reshape(-1)]


# --------------------------------------------------------------------------- grounder


class Grounder:
    """Grounds text embeddings in voxel features. Stateless per query; thread-compatible
    (one query at a time per instance if negatives are being replaced concurrently)."""

    def __init__(
        self, config: GroundingConfig | None = None, negatives: torch.Tensor | None = None
    ) -> None:
        self.config = config or GroundingConfig()
        self.config.validate()
        self.negatives: torch.Tensor | None = None
        if negatives is not None:
            self.set_negatives(negatives)

    @classmethod
    def from_text_encoder(
        cls, text_encoder: TextEncoder, config: GroundingConfig | None = None
    ) -> Grounder:
        """A grounder whose default negatives are ``config.negative_prompts`` encoded once."""
        cfg = config or GroundingConfig()
        neg = text_encoder.encode_text(list(cfg.negative_prompts)) if cfg.negative_prompts else None
        return cls(cfg, neg)

    def set_negatives(self, negatives: torch.Tensor | None) -> None:
        """Default negative embeddings (K, D) used when ``ground`` gets none."""
        self.negatives = None if negatives is None else _as_2d("negatives", negatives)

    # -- main entry ---------------------------------------------------------------------

    def ground(
        self,
        text_embedding: torch.Tensor,
        centroids: torch.Tensor,
        features: torch.Tensor,
        counts: torch.Tensor,
        voxel_size: float,
        max_results: int = 5,
        min_score: float | None = None,
        negatives: torch.Tensor | None = None,
        *,
        voxel_coords: torch.Tensor | None = None,
        label: str = "",
    ) -> GroundingResult:
        """Find the objects a text embedding refers to.

        text_embedding: (D,) query in the "ground" feature space (normalised here anyway).
        centroids: (M, 3) voxel centroids in the map frame. features: (M, D) voxel ground
        features (any norm; NaN / zero rows are ignored). counts: (M,) observations.
        voxel_size: voxel edge (m). negatives: (K, D) background prompt embeddings;
        default: those given to the constructor. voxel_coords: (M, 3) integer voxel
        indices if the memory has them (else ``floor(centroid / voxel_size)``).
        label: copied onto the boxes (e.g. the query text).
        """
        cfg = self.config
        min_score = cfg.min_score if min_score is None else float(min_score)
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if max_results < 1:
            raise ValueError(f"max_results must be >= 1, got {max_results}")
        voxel_size = float(voxel_size)
        if not (math.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"voxel_size must be finite and > 0, got {voxel_size!r}")
        q, centroids, features, counts, negs = self._check_inputs(
            text_embedding,
            centroids,
            features,
            counts,
            self.negatives if negatives is None else negatives,
        )
        m = features.shape[0]
        dev = features.device
        timings: dict[str, float] = {}

        def empty(code: str, reason: str) -> GroundingResult:
            return GroundingResult(
                [],
                torch.zeros(m, device=dev),
                torch.full((m,), -1, dtype=torch.int64, device=dev),
                True,
                code,
                reason,
                timings=timings,
            )

        if m == 0:
            return empty(EMPTY_MEMORY, "the memory holds no voxels yet")

        # 1-2. similarity + calibration ----------------------------------------------------
        t0 = time.perf_counter()
        scores, n_valid = self._relevancy(q, features, counts, negs)
        _sync(dev)
        t1 = time.perf_counter()
        timings["similarity"] = t1 - t0

        # 3. selection -------------------------------------------------------------------
        if n_valid == 0:
            timings["selection"] = time.perf_counter() - t1
            return empty(NO_VALID_VOXELS, "no voxel has a usable (finite, non-zero) feature")
        max_score = float(scores.max())
        if max_score < min_score:
            # A cluster score is a mean of member scores, so none can reach min_score.
            timings["selection"] = time.perf_counter() - t1
            res = empty(
                BELOW_MIN_SCORE, f"best voxel score {max_score:.2f} < min_score {min_score:.2f}"
            )
            res.voxel_scores, res.max_voxel_score = scores, max_score
            return res
        floor = min(cfg.select_floor, min_score)
        thr = max(floor, cfg.select_relative * max_score)
        sel = torch.nonzero(scores >= thr).reshape(-1)
        if sel.numel() > cfg.max_selected_voxels:
            sel = torch.topk(scores, cfg.max_selected_voxels).indices
        sel_scores = scores[sel].to("cpu", torch.float64).numpy()
        sel_cent = centroids[sel.to(centroids.device)].to("cpu", torch.float64).numpy()
        sel_counts = counts[sel].to("cpu", torch.float64).numpy()
        if voxel_coords is not None:
            vc = torch.as_tensor(voxel_coords)
            if vc.shape != (m, 3):
                raise ValueError(f"voxel_coords must be ({m}, 3), got {tuple(vc.shape)}")
            sel_coords = vc[sel.to(vc.device)].to("cpu", torch.int64).numpy()
        else:
            sel_coords = np.floor(sel_cent / voxel_size).astype(np.int64)
        t2 = time.perf_counter()
        timings["selection"] = t2 - t1

        # 4. clustering ------------------------------------------------------------------
        _, labels = connected_voxel_components(sel_coords, cfg.link_radius_voxels)
        t3 = time.perf_counter()
        timings["clustering"] = t3 - t2

        # 5. cluster scores + boxes ------------------------------------------------------
        result = self._boxes(
            labels, sel_scores, sel_cent, sel_counts, voxel_size, max_results, min_score, label
        )
        order_clusters, boxes, best, nclusters = result
        voxel_cluster = torch.full((m,), -1, dtype=torch.int64)
        if boxes:
            lab_to_box = np.full(labels.max() + 1, -1, dtype=np.int64)
            lab_to_box[order_clusters] = np.arange(len(order_clusters))
            voxel_cluster[sel.cpu()] = torch.from_numpy(lab_to_box[labels])
        timings["boxes"] = time.perf_counter() - t3
        timings["total"] = time.perf_counter() - t0

        common: dict[str, Any] = {
            "voxel_scores": scores,
            "voxel_cluster": voxel_cluster.to(dev),
            "max_voxel_score": max_score,
            "best_cluster_score": best,
            "num_selected": int(sel.numel()),
            "num_clusters": nclusters,
            "timings": timings,
        }
        if nclusters == 0:
            return GroundingResult(
                [],
                no_match=True,
                code=NO_CLUSTER,
                reason=f"no group of >= {cfg.min_cluster_voxels} adjacent "
                f"voxels scored >= {thr:.2f}",
                **common,
            )
        if not boxes:
            return GroundingResult(
                [],
                no_match=True,
                code=BELOW_MIN_SCORE,
                reason=f"best object score {best:.2f} < min_score {min_score:.2f}",
                **common,
            )
        return GroundingResult(boxes, no_match=False, **common)

    # -- stages -------------------------------------------------------------------------

    def _check_inputs(
        self,
        text_embedding: torch.Tensor,
        centroids: torch.Tensor,
        features: torch.Tensor,
        counts: torch.Tensor,
        negatives: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        features = torch.as_tensor(features)
        if features.ndim != 2:
            raise ValueError(f"features must be (M, D), got shape {tuple(features.shape)}")
        m, d = features.shape
        dev = features.device
        q = torch.as_tensor(text_embedding).reshape(-1)
        if q.shape[0] != d:
            raise ValueError(
                f"text embedding has dimension {q.shape[0]} but voxel features "
                f"have {d}: the text encoder and the ground features must share "
                "one embedding space"
            )
        q = q.to(dev, torch.float32)
        qn = torch.linalg.vector_norm(q)
        if not torch.isfinite(qn) or qn <= 0:
            raise ValueError("text embedding must be finite and non-zero")
        q = q / qn
        centroids = torch.as_tensor(centroids)
        if centroids.shape != (m, 3):
            raise ValueError(f"centroids must be ({m}, 3), got {tuple(centroids.shape)}")
        counts = torch.as_tensor(counts).reshape(-1)
        if counts.shape[0] != m:
            raise ValueError(f"counts must have {m} entries, got {counts.shape[0]}")
        negs = None
        if negatives is not None:
            negs = _as_2d("negatives", negatives)
            if negs.shape[1] != d:
                raise ValueError(f"negatives have dimension {negs.shape[1]}, features {d}")
            negs = negs.to(dev, torch.float32)
            negs = negs / torch.linalg.vector_norm(negs, dim=1, keepdim=True).clamp_min(1e-12)
            # A query that *is* a background word ("the wall") must not compete with itself.
            negs = negs[(negs @ q) < self.config.negative_dedup_cosine]
            if negs.shape[0] == 0:
                negs = None
        return q, centroids, features, counts.to(dev), negs

    def _relevancy(
        self,
        q: torch.Tensor,
        features: torch.Tensor,
        counts: torch.Tensor,
        negs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, int]:
        """(M,) float32 calibrated scores (0 where the feature is NaN/zero or count <= 0)
        and the number of valid voxels."""
        cfg = self.config
        m = features.shape[0]
        prompts = q[None] if negs is None else torch.cat([q[None], negs], dim=0)  # (P, D)
        out = torch.empty(m, dtype=torch.float32, device=features.device)
        inv_t = 1.0 / cfg.temperature
        n_bad = torch.zeros((), dtype=torch.int64, device=features.device)
        for s in range(0, m, cfg.chunk_rows):
            f = features[s : s + cfg.chunk_rows].to(torch.float32)
            dots = f @ prompts.T  # (c, P): one pass over the chunk for every prompt
            norm = torch.linalg.vector_norm(f, dim=1)
            if negs is None:
                margin = dots[:, 0] / norm.clamp_min(1e-12) - cfg.fallback_bias
            else:
                # cos_q - max cos_neg = (dot_q - max dot_neg) / |f|: one division per row.
                margin = (dots[:, 0] - dots[:, 1:].amax(dim=1)) / norm.clamp_min(1e-12)
            r = torch.sigmoid(margin * inv_t)
            bad = ~torch.isfinite(r) | (norm <= 1e-12) | (counts[s : s + cfg.chunk_rows] <= 0)
            out[s : s + cfg.chunk_rows] = r.masked_fill(bad, 0.0)
            n_bad += bad.sum()
        return out, m - int(n_bad)

    def _boxes(
        self,
        labels: NDArray[np.int64],
        scores: NDArray[np.float64],
        cent: NDArray[np.float64],
        counts: NDArray[np.float64],
        voxel_size: float,
        max_results: int,
        min_score: float,
        label: str,
    ) -> tuple[NDArray[np.int64], list[Box3D], float, int]:
        """-> (cluster ids of the returned boxes, boxes, best cluster score, #clusters)."""
        cfg = self.config
        if len(labels) == 0:
            return np.zeros(0, dtype=np.int64), [], 0.0, 0
        nlab = int(labels.max()) + 1
        sizes = np.bincount(labels, minlength=nlab)
        # Robust cluster score: observation-weighted mean of the top fraction of members.
        # log1p(count) weights trust often-seen voxels more, without letting a voxel seen
        # 1000 times by a parked robot outvote the rest of the object.
        order = np.lexsort((-scores, labels))
        lab_sorted = labels[order]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.arange(len(labels)) - starts[lab_sorted]
        keep_n = np.maximum(np.ceil(cfg.score_top_fraction * sizes).astype(np.int64), 1)
        top = order[rank < keep_n[lab_sorted]]
        w = np.log1p(np.maximum(counts[top], 1.0))
        num = np.bincount(labels[top], weights=w * scores[top], minlength=nlab)
        den = np.bincount(labels[top], weights=w, minlength=nlab)
        cscore = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)

        valid = np.nonzero(sizes >= cfg.min_cluster_voxels)[0]
        if len(valid) == 0:
            return np.zeros(0, dtype=np.int64), [], 0.0, 0
        # Best score first; ties go to the better-supported cluster.
        ranked = valid[np.lexsort((-sizes[valid], -cscore[valid]))]
        best = float(cscore[ranked[0]])
        chosen = [int(c) for c in ranked if cscore[c] >= min_score][:max_results]
        if not chosen:
            return np.zeros(0, dtype=np.int64), [], best, len(valid)
        members_sorted = order  # grouped by label
        boxes = []
        for c in chosen:
            mem = members_sorted[starts[c] : starts[c] + sizes[c]]
            boxes.append(
                self._fit_box(cent[mem], voxel_size, float(cscore[c]), int(sizes[c]), label)
            )
        return np.asarray(chosen, dtype=np.int64), boxes, best, len(valid)

    def _fit_box(
        self, pts: NDArray[np.float64], voxel_size: float, score: float, n: int, label: str
    ) -> Box3D:
        """Percentile box of member centroids, grown by ``box_padding_voxels`` per side:
        centroids are means of surface samples inside each voxel, so the outermost ones sit
        up to about half a voxel inside the object's true extent."""
        p = self.config.box_percentile
        half = voxel_size * self.config.box_padding_voxels
        lo, hi = np.percentile(pts, [p, 100.0 - p], axis=0)
        aabb = Box3D.from_min_max(lo - half, hi + half, label=label, score=score, num_voxels=n)
        if not self.config.oriented or n < 5:
            return aabb
        xy = pts[:, :2] - pts[:, :2].mean(axis=0)
        cov = xy.T @ xy / max(n - 1, 1)
        evals, evecs = np.linalg.eigh(cov)
        major = evecs[:, int(np.argmax(evals))]
        yaw = math.atan2(major[1], major[0])
        # Canonical yaw in [-pi/2, pi/2): a box is symmetric under a half turn.
        yaw = (yaw + math.pi / 2.0) % math.pi - math.pi / 2.0
        c, s = math.cos(yaw), math.sin(yaw)
        local = pts[:, :2] @ np.array([[c, -s], [s, c]])  # rotate into the box frame
        llo, lhi = np.percentile(local, [p, 100.0 - p], axis=0)
        llo, lhi = llo - half, lhi + half
        area_obb = float(np.prod(lhi - llo))
        if area_obb > (1.0 - self.config.oriented_min_gain) * aabb.footprint_area:
            return aabb
        mid = (llo + lhi) / 2.0
        center_xy = np.array([c * mid[0] - s * mid[1], s * mid[0] + c * mid[1]])
        return Box3D(
            center=np.array([center_xy[0], center_xy[1], aabb.center[2]]),
            size=np.array([lhi[0] - llo[0], lhi[1] - llo[1], aabb.size[2]]),
            yaw=yaw,
            label=label,
            score=score,
            num_voxels=n,
        )


def _as_2d(name: str, x: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be (K, D), got shape {tuple(t.shape)}")
    return t


def _sync(dev: torch.device) -> None:
    # Stage timings are only honest on a GPU once its queue has drained.
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
