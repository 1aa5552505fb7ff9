"""The scene pipeline: frames in (RGB, metric depth, intrinsics, camera pose), a rolling
3D patch memory inside, grounding and spatial answers out. The ROS node, the bag
evaluator and offline tools all drive this one class, so behaviour is identical.

Thread model: one ingest thread calls ``process_frame``; any number of query threads
call ``ground``/``ask_spatial`` concurrently. The memory has its own lock and queries
work on consistent copies of the voxels they need, so queries never block ingest for
longer than the copy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from llava3d_ros.core.encoders.base import GROUND, VISION, EncoderBundle
from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.grounding import Grounder, GroundingConfig, GroundingResult
from llava3d_ros.core.keyframes import KeyframePolicy, KeyframeSelector
from llava3d_ros.core.lifting import lift_patches
from llava3d_ros.core.memory import (
    IntegrateStats,
    MemoryLimits,
    SnapshotError,
    VoxelPatchMemory,
    read_snapshot,
    snapshot_section,
)
from llava3d_ros.core.objects.answers import answer_object_question
from llava3d_ros.core.objects.grounding import (
    InstanceMatch,
    ObjectGroundingConfig,
    rank_instances,
    result_box,
    result_box_of,
)
from llava3d_ros.core.objects.instances import ObjectSnapshot
from llava3d_ros.core.objects.labels import LabelVocabulary
from llava3d_ros.core.objects.object_map import ObjectConfig, ObjectMap
from llava3d_ros.core.objects.segmentation import SegmentationConfig
from llava3d_ros.core.objects.tracking import TrackingConfig
from llava3d_ros.core.objects.tsdf import GeometryConfig
from llava3d_ros.core.options import check_options, option
from llava3d_ros.core.questions import (
    COUNT,
    OBJECT_LAYER_KINDS,
    ParsedQuestion,
    SpatialAnswer,
    answer_question,
)
from llava3d_ros.core.referring import ReferringExpression, parse_expression
from llava3d_ros.core.spatial import Box3D, Viewpoint
from llava3d_ros.core.views import KeyframeView, ViewRing

# Outcome codes shared by every front end (the node maps them to action constants).
OK = "ok"
EMPTY_MEMORY = "empty_memory"
NO_MATCH = "no_match"
BAD_QUERY = "bad_query"
MODEL_UNAVAILABLE = "model_unavailable"
CANCELED = "canceled"


class FrameError(ValueError):
    """A frame that cannot be integrated; ``reason`` is the drop-counter key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MemoryConfig:
    voxel_size: float = option(0.05, "voxel edge (m) of the patch memory", 0.005, 1.0)
    max_voxels: int = option(
        100_000, "hard bound on voxels (least recently seen evicted)", 1, 50_000_000
    )
    max_radius_m: float = option(
        0.0, "evict voxels farther than this from robot_frame; 0 = off", 0.0, 1000.0
    )
    max_age_s: float = option(0.0, "evict voxels not seen for this long; 0 = off", 0.0, 1e7)
    device: str = option(
        "auto",
        "torch device of the memory (lifting, fusion, grounding, pooling); auto = the "
        "top-level device",
        choices=("auto", "cpu", "cuda"),
    )
    feature_dtype: str = option(
        "float32",
        "storage dtype of voxel features (float16 halves memory on GPUs)",
        choices=("float32", "float16", "bfloat16"),
    )


@dataclass(frozen=True)
class LiftConfig:
    min_valid_fraction: float = option(
        0.25, "patches with fewer valid depth pixels are dropped", 0.0, 1.0
    )
    min_depth_m: float = option(0.1, "depth below this is invalid", 0.0, 100.0)
    max_depth_m: float = option(
        8.0, "depth beyond this is invalid (too noisy to place patches)", 0.01, 1000.0
    )


#: Names a described region is matched against when nothing else is configured.
DEFAULT_DESCRIBE_VOCABULARY: tuple[str, ...] = (
    "mug",
    "cup",
    "bowl",
    "plate",
    "bottle",
    "can",
    "box",
    "book",
    "pan",
    "basket",
    "table",
    "chair",
    "cabinet",
    "shelf",
    "floor",
    "wall",
)


@dataclass(frozen=True)
class QueryConfig:
    max_query_chars: int = option(512, "longer queries are rejected as BAD_QUERY", 1, 100_000)
    default_max_results: int = option(5, "objects returned when a goal asks for 0", 1, 1000)
    describe_radius_m: float = option(
        0.15, "describe: a point covers the memory within this radius", 0.01, 10.0
    )
    describe_vocabulary: tuple[str, ...] = option(
        DEFAULT_DESCRIBE_VOCABULARY, "names a described region is matched against"
    )


@dataclass(frozen=True)
class LmmConfig:
    pool_voxel_size: float = option(
        0.2, "scene tokens: memory pooled per voxel of this size (LLaVA-3D: 0.2 m)", 0.01, 5.0
    )
    max_scene_tokens: int = option(
        2560, "cap on scene tokens (deterministic, spatially fair)", 1, 100_000
    )
    max_new_tokens: int = option(256, "generated tokens when a goal asks for 0", 1, 8192)
    object_context: int = option(
        0,
        "open questions carry the object layer's list (label, centre, size) as text, at "
        "most this many objects, Chat-Scene style (0 = off; unverified with real weights)",
        0,
        500,
    )
    scene_frame: str = option(
        "auto",
        "auto: scene tokens, clicks and answer boxes go through the frame LLaVA-3D was "
        "trained in (floor at z 0, xy centred, floor normal up; fitted per question); "
        "off: map coordinates as they are",
        choices=("auto", "off"),
    )


@dataclass(frozen=True)
class ViewConfig:
    ring_size: int = option(
        8, "keyframe images kept for view questions (colour + depth + pose each)", 1, 1000
    )
    frame_choice: str = option(
        "latest",
        "which kept keyframe a view question is asked about: latest, or facing (the one "
        "that sees the object the question grounds to most squarely; latest when none)",
        choices=("latest", "facing"),
    )
    max_new_tokens: int = option(
        256, "generated tokens for a view answer when a goal asks for 0", 1, 8192
    )


@dataclass
class LmmOutcome:
    code: str
    message: str
    text: str = ""
    boxes: list[Box3D] = field(default_factory=list)
    num_tokens: int = 0
    scene_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""  # the checkpoint that answered
    view_stamp_ns: int = 0  # view answers: the stamp of the keyframe asked about


#: Configuration section name -> dataclass: the ``<section>.<field>`` parameters.
PIPELINE_SECTIONS: dict[str, type] = {
    "memory": MemoryConfig,
    "lifting": LiftConfig,
    "keyframes": KeyframePolicy,
    "grounding": GroundingConfig,
    "query": QueryConfig,
    "lmm": LmmConfig,
    "view": ViewConfig,
    "objects": ObjectConfig,
    "object_grounding": ObjectGroundingConfig,
    "geometry": GeometryConfig,
    "segmentation": SegmentationConfig,
    "tracking": TrackingConfig,
}


@dataclass(frozen=True)
class PipelineConfig:
    encoder: Mapping[str, Any] = field(default_factory=dict)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    lifting: LiftConfig = field(default_factory=LiftConfig)
    keyframes: KeyframePolicy = field(default_factory=KeyframePolicy)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    lmm: LmmConfig = field(default_factory=LmmConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    objects: ObjectConfig = field(default_factory=ObjectConfig)
    object_grounding: ObjectGroundingConfig = field(default_factory=ObjectGroundingConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        for name in PIPELINE_SECTIONS:
            check_options(getattr(self, name), name)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineConfig:
        """Nested dict (e.g. from YAML) -> config; unknown keys are errors, not ignored."""
        known = {"encoder", *PIPELINE_SECTIONS}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown pipeline config sections {sorted(unknown)}; known {sorted(known)}"
            )
        kwargs: dict[str, Any] = {"encoder": dict(d.get("encoder", {}))}
        for name, section in PIPELINE_SECTIONS.items():
            kwargs[name] = _dataclass_from(section, d.get(name, {}), name)
        return cls(**kwargs)


def _dataclass_from(cls: type, values: Mapping[str, Any], where: str) -> Any:
    names = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known {sorted(names)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        try:
            if isinstance(default, tuple):
                out[key] = tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise TypeError("expected true or false")
                out[key] = value
            else:
                out[key] = type(default)(value) if default is not None else value
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}.{key}: cannot use {value!r}: {exc}") from exc
    return cls(**out)


@dataclass
class FrameOutcome:
    keyframe: str | None  # why the frame was integrated, None if skipped
    patches: int = 0  # patches lifted to 3D
    integrate: IntegrateStats | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class GroundOutcome:
    code: str
    message: str
    boxes: list[Box3D]
    memory_voxels: int
    timings: dict[str, float] = field(default_factory=dict)
    result: GroundingResult | None = None  # per-voxel scores, for visualisation
    instance_ids: list[int] = field(default_factory=list)  # per box; 0 = not an instance
    matches: list[InstanceMatch] = field(default_factory=list)  # instance answers


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ScenePipeline:
    def __init__(
        self, config: PipelineConfig, bundle: EncoderBundle, lmm: Any = None, view: Any = None
    ):
        """``lmm``: an optional ``core.lmm.Llava3DChat`` for open questions; its scene
        features are the memory's VISION kind, so their widths must agree. ``view``: an
        optional ``core.lmm.ViewAnswerer`` (a 2D model) for questions about the latest
        keyframes' images, which are then kept in a ring (``view.ring_size``)."""
        self.config = config
        self.bundle = bundle
        self.lmm = lmm
        self.view = view
        self.views: ViewRing | None = ViewRing(config.view.ring_size) if view is not None else None
        if lmm is not None:
            want = int(lmm.model.config.mm_hidden_size)
            have = bundle.image.feature_dims.get(VISION)
            if have != want:
                raise ValueError(
                    f"the language model expects {want}-d scene features but the encoder "
                    f"gives {have}-d '{VISION}' features; use the vision tower it was "
                    "trained with (LLaVA-3D: CLIP ViT-L/14-336, backend hf_clip)"
                )
        mc = config.memory
        self.memory = VoxelPatchMemory(
            feature_dims=bundle.image.feature_dims,
            voxel_size=mc.voxel_size,
            max_voxels=mc.max_voxels,
            max_radius=mc.max_radius_m or None,
            max_age_s=mc.max_age_s or None,
            device=_resolve_device(mc.device),
            feature_dtype=getattr(torch, mc.feature_dtype),
        )
        self.grounder: Grounder | None = None
        if bundle.can_ground and bundle.text is not None:
            self.grounder = Grounder.from_text_encoder(bundle.text, config.grounding)
        self.keyframes = KeyframeSelector(config.keyframes)
        self._text_lock = threading.Lock()  # text encoders are not re-entrant
        self._ingest_lock = threading.Lock()
        self._encoder_lock = threading.Lock()  # ingest and crops: one encoder call at a time
        if view is not None and view.tower is bundle.image:
            view.tower_lock = self._encoder_lock  # the view tier shares the memory's CLIP
        self.vocabulary: LabelVocabulary | None = None
        self.objects: ObjectMap | None = None
        if config.objects.enabled:
            self.vocabulary = self._label_vocabulary()
            can_crop = self.vocabulary is not None and GROUND in bundle.image.feature_dims
            self.objects = ObjectMap(
                config.objects,
                config.geometry,
                config.segmentation,
                config.tracking,
                self.vocabulary,
                self._encode_crops if can_crop else None,
                bundle.image.geometry,
            )
        self._known_phrases = self._vocabulary_phrases()

    def _label_vocabulary(self) -> LabelVocabulary | None:
        """Class prototypes for instance labels: the configured names, else the grounding
        model's training vocabulary, else the describe vocabulary."""
        bundle, oc = self.bundle, self.config.objects
        if not bundle.can_ground or bundle.text is None:
            return None
        classes: dict[str, tuple[str, ...]]
        if oc.vocabulary:
            classes = {name: (name,) for name in oc.vocabulary}
        elif bundle.label_vocabulary:
            classes = dict(bundle.label_vocabulary)
        else:
            classes = {name: (name,) for name in self.config.query.describe_vocabulary}
        temperature = oc.label_temperature
        if temperature <= 0:
            scale = bundle.logit_scale or 1.0 / self.config.grounding.temperature
            temperature = 1.0 / scale
        roles = bundle.label_roles if not oc.vocabulary else None
        return LabelVocabulary(
            bundle.text, classes, temperature, bundle.label_templates, roles=roles
        )

    def _encode_crops(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Object crops -> (B, gh, gw, D) grounding features (the object worker's calls).

        One encoder call at a time: two concurrent onnxruntime runs, each with a thread
        per core and spinning idle threads, halved the keyframe rate on a 2-core CPU
        (node encode p50 52 -> 100 ms); serialised, a crop only delays a keyframe."""
        with self._encoder_lock:
            return self.bundle.image.encode(crops)[GROUND]

    def _vocabulary_phrases(self) -> tuple[str, ...]:
        """Multi-word names the expression parser must not split ("macaroni and cheese")."""
        names: set[str] = set(self.config.query.describe_vocabulary)
        if self.bundle.label_vocabulary:
            for group in self.bundle.label_vocabulary.values():
                names.update(group)
        names.update(self.config.objects.vocabulary)
        return tuple(sorted(n for n in names if " " in n))

    # ------------------------------------------------------------------ workers

    def start(self) -> None:
        """Start background work (the object layer's segmentation worker)."""
        if self.objects is not None:
            self.objects.start()

    def stop(self) -> None:
        if self.objects is not None:
            self.objects.stop()

    def flush(self) -> None:
        """Bring the object layer up to date with everything integrated (synchronous)."""
        if self.objects is not None:
            self.objects.flush()

    # ------------------------------------------------------------------ ingest

    def process_frame(
        self,
        rgb: np.ndarray,
        depth_m: np.ndarray,
        intrinsics: CameraIntrinsics,
        t_map_camera: np.ndarray,
        stamp_s: float,
        robot_position: np.ndarray | None = None,
        force: bool = False,
        stamp_ns: int | None = None,
    ) -> FrameOutcome:
        """Integrate one RGB-D frame if it is a keyframe (or ``force``). ``stamp_ns``: the
        exact header stamp, reported by view answers (default: from ``stamp_s``)."""
        if rgb.shape[:2] != depth_m.shape[:2]:
            raise FrameError(
                "size_mismatch",
                f"colour is {rgb.shape[1]}x{rgb.shape[0]} but depth is "
                f"{depth_m.shape[1]}x{depth_m.shape[0]}; register depth to colour",
            )
        if (intrinsics.height, intrinsics.width) != tuple(depth_m.shape[:2]):
            raise FrameError(
                "intrinsics_mismatch",
                f"camera info is {intrinsics.width}x{intrinsics.height} but the images are "
                f"{depth_m.shape[1]}x{depth_m.shape[0]}",
            )
        if not np.all(np.isfinite(t_map_camera)):
            raise FrameError("bad_pose", "camera pose has non-finite values")
        with self._ingest_lock:
            reason = "forced" if force else self.keyframes.check(t_map_camera, stamp_s)
            if reason is None:
                return FrameOutcome(keyframe=None)
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            lc = self.config.lifting
            # On the memory's device: the depth goes up once and the points stay there.
            lifted = lift_patches(
                depth_m,
                intrinsics,
                self.bundle.image.geometry,
                t_map_camera,
                min_valid_fraction=lc.min_valid_fraction,
                min_depth=lc.min_depth_m,
                max_depth=lc.max_depth_m,
                device=self.memory.device,
            )
            timings["lift"] = time.perf_counter() - t0
            if len(lifted) == 0:
                # Nothing to place (all depth invalid): not a keyframe, so a later
                # frame from the same pose still gets its chance.
                raise FrameError("no_valid_depth", "no patch has enough valid depth pixels")
            t0 = time.perf_counter()
            with self._encoder_lock:
                # Waiting for an object crop's encoder call, timed on its own.
                timings["encoder_wait"] = time.perf_counter() - t0
                encoded = self.bundle.image.encode([rgb])
            timings["encode"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            feats = {}
            for kind, grid in encoded.items():
                flat = grid[0].reshape(-1, grid.shape[-1])
                idx = lifted.patch_index.to(flat.device)
                feats[kind] = flat.index_select(0, idx).to(self.memory.device)
            stats = self.memory.integrate(
                lifted.points,
                feats,
                stamp=stamp_s,
                robot_position=robot_position,
            )
            timings["fuse"] = time.perf_counter() - t0
            if self.objects is not None or self.views is not None:
                # The object layer and the view ring keep host depth, NaN outside the range.
                depth = np.where(
                    (depth_m >= lc.min_depth_m) & (depth_m <= lc.max_depth_m), depth_m, np.nan
                ).astype(np.float32)
            if self.objects is not None:
                t0 = time.perf_counter()
                ground = encoded.get(GROUND)
                self.objects.integrate(
                    rgb,
                    depth,
                    intrinsics,
                    t_map_camera,
                    stamp_s,
                    robot_position,
                    ground[0] if ground is not None else None,
                    self.bundle.image.geometry,
                )
                timings["objects"] = time.perf_counter() - t0
            if self.views is not None:
                exact = stamp_ns if stamp_ns is not None else round(stamp_s * 1e9)
                self.views.add(exact, rgb, depth, intrinsics, t_map_camera)
            self.keyframes.accept(t_map_camera, stamp_s)
            return FrameOutcome(reason, len(lifted), stats, timings)

    # ------------------------------------------------------------------ queries

    def check_query(self, text: str) -> str | None:
        """Why ``text`` is not a usable query, or None."""
        stripped = text.strip()
        if not stripped:
            return "the query is empty"
        limit = self.config.query.max_query_chars
        if len(stripped) > limit:
            return f"the query has {len(stripped)} characters; the limit is {limit}"
        return None

    def encode_text(self, text: str) -> torch.Tensor:
        if self.bundle.text is None:
            raise RuntimeError("no text encoder is configured")
        with self._text_lock:
            return self.bundle.text.encode_text([text])[0]

    def parse(self, query: str) -> ReferringExpression:
        """The expression's target, relations and anchors (raises ValueError)."""
        return parse_expression(query, self._known_phrases)

    def ground(
        self,
        query: str,
        max_results: int = 0,
        min_score: float = 0.0,
        cancel: Callable[[], bool] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        viewpoint: Viewpoint | None = None,
        instance_min_score: float | None = None,
    ) -> GroundOutcome:
        """Text -> 3D boxes. ``max_results``/``min_score`` <= 0 use the configured defaults;
        ``instance_min_score`` overrides the threshold for object instances only (questions
        use a lower one: they presuppose their objects).

        With the object layer: the expression is parsed into target + relations + anchors
        and object instances are ranked (:mod:`llava3d_ros.core.objects.grounding`);
        boxes are instance extents with their ids. Voxel relevancy of the target phrase is
        the fallback when no instance explains the query (no instances yet, or a part of
        furniture)."""
        voxels = len(self.memory)
        bad = self._bad_goal(query, min_score, voxels)
        if bad is not None:
            return bad
        if self.grounder is None:
            return GroundOutcome(
                MODEL_UNAVAILABLE,
                f"encoder backend {self.config.encoder.get('backend', '?')!r} has no "
                "text-aligned features; configure a grounding model",
                [],
                voxels,
            )
        if voxels == 0:
            return GroundOutcome(EMPTY_MEMORY, "nothing has been integrated yet", [], 0)
        try:
            expr = self.parse(query)
        except ValueError as exc:
            return GroundOutcome(BAD_QUERY, str(exc), [], voxels)
        max_results = max_results if max_results > 0 else self.config.query.default_max_results
        stage = on_stage or (lambda _s, _p: None)
        timings: dict[str, float] = {}
        if self.objects is not None and self.vocabulary is not None:
            stage("ranking_objects", 0.2)
            t0 = time.perf_counter()
            snap = self.objects.snapshot()
            og = self.config.object_grounding
            threshold = min_score if min_score > 0 else og.min_score
            if instance_min_score is not None:
                threshold = instance_min_score
            matches = self._matches(expr, snap, viewpoint, threshold)[:max_results]
            timings["objects"] = time.perf_counter() - t0
            if matches:
                label = expr.target.text
                boxes = [result_box(m, og, m.instance.label or label) for m in matches]
                ids = [m.instance.id for m in matches]
                stage("done", 1.0)
                return GroundOutcome(OK, "", boxes, voxels, timings, None, ids, matches)
            if len(snap) and self._names_an_object(expr.target.head or expr.target.text):
                # The instances are the authority on objects the model knows: voxel
                # relevancy would answer with the most similar blob (a false positive for
                # an absent object); it stays for parts and phrases outside the labels.
                return GroundOutcome(
                    NO_MATCH,
                    f"no object matches {query.strip()!r} (no instance scores >= {threshold:g})",
                    [],
                    voxels,
                    timings,
                )
        if cancel is not None and cancel():
            return GroundOutcome(CANCELED, "cancelled", [], voxels, timings)
        return self._ground_voxels(
            expr.target.text or query.strip(), max_results, min_score, cancel, stage, timings
        )

    def _bad_goal(self, query: str, min_score: float, voxels: int) -> GroundOutcome | None:
        """BAD_QUERY for a query or threshold no grounding can serve, else None."""
        problem = self.check_query(query)
        if problem:
            return GroundOutcome(BAD_QUERY, problem, [], voxels)
        if not (min_score <= 1.0):  # also NaN
            return GroundOutcome(BAD_QUERY, f"min_score must be <= 1, got {min_score}", [], voxels)
        return None

    def _matches(
        self,
        expr: ReferringExpression,
        snap: ObjectSnapshot,
        viewpoint: Viewpoint | None,
        threshold: float = float("-inf"),
    ) -> list[InstanceMatch]:
        """Instances ranked for an expression (best first) scoring at least ``threshold``."""
        assert self.vocabulary is not None
        og = self.config.object_grounding
        ranked = rank_instances(expr, snap, self.vocabulary, viewpoint, og)
        return [m for m in ranked if m.score >= threshold]

    def _names_an_object(self, phrase: str) -> bool:
        """Whether a phrase names a label class that is an object or furniture (not a
        background class like "wall", not a part or an unknown word)."""
        vocab = self.vocabulary
        if vocab is None or not phrase:
            return False
        own = vocab.owned_classes(vocab.embed(phrase))
        return bool((own & ~vocab.background).any())

    def _ground_voxels(
        self,
        phrase: str,
        max_results: int,
        min_score: float,
        cancel: Callable[[], bool] | None,
        stage: Callable[[str, float], None],
        timings: dict[str, float],
    ) -> GroundOutcome:
        """Voxel relevancy of one phrase -> clusters -> boxes (no instance ids)."""
        assert self.grounder is not None
        voxels = len(self.memory)
        stage("encoding_text", 0.3)
        t0 = time.perf_counter()
        text = self.encode_text(phrase)
        timings["text"] = time.perf_counter() - t0
        if cancel is not None and cancel():
            return GroundOutcome(CANCELED, "cancelled", [], voxels, timings)
        stage("scoring", 0.5)
        t0 = time.perf_counter()
        view = self.memory.snapshot_view([GROUND])
        timings["snapshot"] = time.perf_counter() - t0
        if len(view) == 0:
            return GroundOutcome(EMPTY_MEMORY, "the memory was cleared", [], 0, timings)
        if cancel is not None and cancel():
            return GroundOutcome(CANCELED, "cancelled", [], len(view), timings)
        result = self.grounder.ground(
            text.to(view.centroids.device),
            view.centroids,
            view.features[GROUND],
            view.counts,
            view.voxel_size,
            max_results=max_results,
            min_score=min_score if min_score > 0 else None,
            voxel_coords=view.coords,
            label=phrase,
        )
        timings.update({f"ground_{k}": v for k, v in result.timings.items()})
        stage("clustering", 0.9)
        if result.no_match:
            code = EMPTY_MEMORY if result.empty_memory else NO_MATCH
            return GroundOutcome(code, result.reason, [], len(view), timings, result)
        boxes = list(result.boxes)
        return GroundOutcome(OK, "", boxes, len(view), timings, result, [0] * len(boxes))

    def can_answer(self, parsed: ParsedQuestion) -> bool:
        """Whether :meth:`ask_spatial` answers this question (object-list questions need
        the object layer; without it they are open questions for the language model)."""
        if parsed.kind in OBJECT_LAYER_KINDS:
            return self.objects is not None and self.vocabulary is not None
        return True

    def _instance_rows(
        self,
        phrase: str,
        snap: ObjectSnapshot,
        viewpoint: Viewpoint | None,
        threshold: float,
        at_least_best: float | None = None,
    ) -> list[int]:
        """Snapshot rows matching a phrase (which may carry relations), best first.

        ``at_least_best``: when no row reaches ``threshold`` but the best one reaches
        this, the best one is returned (a count is never below what ``ground`` finds:
        "how many ramekins" answered 0 while "the ramekin" got a box)."""
        assert self.vocabulary is not None
        try:
            expr = self.parse(phrase)
        except ValueError:
            return []
        ranked = self._matches(expr, snap, viewpoint)
        rows = [m.index for m in ranked if m.score >= threshold]
        if not rows and ranked and at_least_best is not None and ranked[0].score >= at_least_best:
            rows = [ranked[0].index]
        return rows

    def ask_spatial(
        self,
        parsed: ParsedQuestion,
        viewpoint: Viewpoint | None,
        cancel: Callable[[], bool] | None = None,
    ) -> tuple[str, SpatialAnswer | None, str]:
        """Ground every phrase of a parsed spatial question, then answer exactly.

        -> (code, answer or None, message)."""
        og = self.config.object_grounding
        objects = self.objects if self.vocabulary is not None else None
        if parsed.kind in OBJECT_LAYER_KINDS:
            if objects is None:
                return MODEL_UNAVAILABLE, None, "this question needs the object layer"
            if len(self.memory) == 0:
                return EMPTY_MEMORY, None, "nothing has been integrated yet"
            snap = objects.snapshot()
            answer = answer_object_question(
                parsed,
                snap,
                lambda ph: self._instance_rows(ph, snap, viewpoint, og.question_min_score),
                viewpoint,
                og.oriented,
            )
            return (NO_MATCH, answer, answer.text) if answer.missing else (OK, answer, "")
        boxes: dict[str, list[Box3D]] = {}
        for i, phrase in enumerate(parsed.phrases):
            if phrase in boxes:
                continue
            if parsed.kind == COUNT and i == 0 and objects is not None and len(self.memory):
                # Counting needs every instance of the phrase, not the best few.
                snap = objects.snapshot()
                rows = self._instance_rows(
                    phrase, snap, viewpoint, og.count_min_score, at_least_best=og.min_score
                )
                boxes[phrase] = [result_box_of(snap.instances[r], og.oriented) for r in rows]
                continue
            outcome = self.ground(
                phrase,
                cancel=cancel,
                viewpoint=viewpoint,
                instance_min_score=og.question_min_score,
            )
            if outcome.code in (OK, NO_MATCH):
                boxes[phrase] = outcome.boxes
            else:
                return outcome.code, None, outcome.message
        answer = answer_question(parsed, boxes, viewpoint)
        if answer.missing:
            return NO_MATCH, answer, answer.text
        return OK, answer, ""

    def describe_region(self, point: np.ndarray, size: np.ndarray) -> tuple[str, str, list[Box3D]]:
        """Caption the memory at a point (size all zero) or inside an axis-aligned box,
        from geometry and, with a grounding model, the closest vocabulary names.

        -> (code, caption, [box of the described voxels])."""
        qc = self.config.query
        view = self.memory.snapshot_view([GROUND] if self.grounder is not None else [])
        if len(view) == 0:
            return EMPTY_MEMORY, "nothing has been integrated yet", []
        centroids = view.centroids.double().cpu().numpy()
        half = np.asarray(size, dtype=np.float64) / 2.0
        if np.all(half == 0):
            inside = np.linalg.norm(centroids - point, axis=1) <= qc.describe_radius_m
            where = f"within {qc.describe_radius_m:.2f} m of {_fmt(point)}"
        else:
            inside = np.all(np.abs(centroids - point) <= half + 1e-9, axis=1)
            where = f"inside the box at {_fmt(point)}"
        if not inside.any():
            return NO_MATCH, f"the memory holds nothing {where}", []
        pts = centroids[inside]
        counts = view.counts.cpu().numpy()[inside]
        box = Box3D.from_min_max(
            pts.min(axis=0) - self.memory.voxel_size / 2,
            pts.max(axis=0) + self.memory.voxel_size / 2,
            label="region",
            score=1.0,
            num_voxels=int(inside.sum()),
        )
        s = box.size
        caption = (
            f"A region about {s[0]:.2f} x {s[1]:.2f} x {s[2]:.2f} m centred at "
            f"{_fmt(box.center)} ({int(inside.sum())} voxels, {int(counts.sum())} observations)"
        )
        names = list(qc.describe_vocabulary)
        if self.grounder is not None and names and self.bundle.text is not None:
            feats = view.features[GROUND][torch.as_tensor(inside)].float()
            weights = torch.as_tensor(counts, dtype=torch.float32, device=feats.device)
            mean = (feats * weights[:, None]).sum(0) / weights.sum()
            with self._text_lock:
                text = self.bundle.text.encode_text(names).to(mean.device)
            sims = torch.nn.functional.cosine_similarity(text, mean[None], dim=1)
            order = torch.argsort(sims, descending=True)[:3].tolist()
            ranked = ", ".join(f"{names[i]} ({float(sims[i]):.2f})" for i in order)
            box = Box3D(
                box.center, box.size, 0.0, names[order[0]], float(sims[order[0]]), int(inside.sum())
            )
            caption += f"; it looks most like: {ranked}"
        return OK, caption + ".", [box]

    def ask_open(
        self,
        question: str,
        *,
        location: np.ndarray | None = None,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        on_text: Callable[[str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> LmmOutcome:
        """An open question (or, with ``location``, a caption) from the language model,
        fed with pooled scene tokens from the memory (no image is re-encoded)."""
        if self.lmm is None:
            return LmmOutcome(
                MODEL_UNAVAILABLE,
                "an open question needs the LLaVA-3D language model; set lmm.checkpoint",
            )
        problem = self.check_query(question)
        if problem:
            return LmmOutcome(BAD_QUERY, problem)
        if len(self.memory) == 0:
            return LmmOutcome(EMPTY_MEMORY, "nothing has been integrated yet")
        lc = self.config.lmm
        t0 = time.perf_counter()
        positions, features = self.memory.pool(VISION, lc.pool_voxel_size, lc.max_scene_tokens)
        timings = {"pool": time.perf_counter() - t0}
        frame = None
        if lc.scene_frame == "auto":
            # Imported with the language model only (the lmm package pulls transformers).
            from llava3d_ros.core.lmm.scene_frame import fit_scene_frame

            t1 = time.perf_counter()
            frame = fit_scene_frame(torch.as_tensor(positions).detach().cpu().numpy())
            timings["scene_frame"] = time.perf_counter() - t1
        text = question.strip()
        if lc.object_context > 0 and self.objects is not None:
            from llava3d_ros.core.lmm.prompt import object_context

            listed = [
                (o.label, o.aabb.center, o.aabb.size)
                for o in self.objects.snapshot().instances
                if o.has_feature
            ][: lc.object_context]
            context = object_context(listed, frame.to_scene if frame is not None else None)
            if context:
                text = f"{context}\n{text}"
        answer = self.lmm.answer(
            text,
            positions,
            features,
            location=location,
            max_new_tokens=max_new_tokens if max_new_tokens > 0 else lc.max_new_tokens,
            temperature=float(temperature),
            top_p=top_p if top_p > 0 else None,
            on_text=on_text,
            cancel=cancel,
            frame=frame,
        )
        timings.update(prefill=answer.prefill_s, total=time.perf_counter() - t0)
        boxes = [Box3D(np.asarray(b.center), np.asarray(b.size)) for b in answer.boxes]
        return _model_outcome(answer, boxes, timings, model=str(getattr(self.lmm, "name", "")))

    def ask_view(
        self,
        question: str,
        *,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        on_text: Callable[[str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> LmmOutcome:
        """A question about what the camera sees, answered by the 2D model from one kept
        keyframe image (the latest, or with ``view.frame_choice: facing`` the one that
        best sees the object the question grounds to). The outcome names the keyframe's
        stamp and the model."""
        if self.view is None or self.views is None:
            return LmmOutcome(
                MODEL_UNAVAILABLE,
                "a view question needs a LLaVA-1.5-family model; set view.checkpoint",
            )
        problem = self.check_query(question)
        if problem:
            return LmmOutcome(BAD_QUERY, problem)
        t0 = time.perf_counter()
        chosen, note = self._view_for(question)
        if chosen is None:
            return LmmOutcome(EMPTY_MEMORY, "no keyframe has been integrated yet")
        timings = {"choose_view": time.perf_counter() - t0}
        vc = self.config.view
        answer, encode_s = self.view.answer(
            question.strip(),
            chosen.rgb,
            max_new_tokens=max_new_tokens if max_new_tokens > 0 else vc.max_new_tokens,
            temperature=float(temperature),
            top_p=top_p if top_p > 0 else None,
            on_text=on_text,
            cancel=cancel,
        )
        # Boxes the model wrote ([x1, y1, x2, y2], normalised) framed on the kept depth.
        h, w = chosen.rgb.shape[:2]
        lifted = [chosen.lift_box(r) for r in self.view.pixel_boxes(answer.text, h, w)]
        timings.update(encode=encode_s, prefill=answer.prefill_s, total=time.perf_counter() - t0)
        return _model_outcome(
            answer,
            [b for b in lifted if b is not None],
            timings,
            model=str(self.view.name),
            note=note,
            view_stamp_ns=chosen.stamp_ns,
        )

    def _view_for(self, question: str) -> tuple[KeyframeView | None, str]:
        """(the kept keyframe to ask about, a note on the choice)."""
        assert self.views is not None
        latest = self.views.latest()
        if latest is None or self.config.view.frame_choice == "latest":
            return latest, ""
        target = self.ground(question, 1, 0.0)
        if target.code != OK or not target.boxes:
            return latest, "no object grounded: asked about the latest keyframe"
        facing = self.views.facing(target.boxes[0].center)
        if facing is None:
            return latest, (
                f"no kept keyframe sees the {target.boxes[0].label}: asked about the latest"
            )
        return facing, ""

    # ------------------------------------------------------------------ memory admin

    def segment(
        self,
        query: str,
        max_results: int = 0,
        min_score: float = 0.0,
        viewpoint: Viewpoint | None = None,
    ) -> GroundOutcome:
        """Expression -> matching object instances (with their points in ``matches``);
        instances only: a query no instance explains is NO_MATCH."""
        voxels = len(self.memory)
        bad = self._bad_goal(query, min_score, voxels)
        if bad is not None:
            return bad
        if self.objects is None or self.vocabulary is None:
            return GroundOutcome(
                MODEL_UNAVAILABLE,
                "segmentation needs the object layer (objects.enabled) and a grounding model",
                [],
                voxels,
            )
        if voxels == 0:
            return GroundOutcome(EMPTY_MEMORY, "nothing has been integrated yet", [], 0)
        try:
            expr = self.parse(query)
        except ValueError as exc:
            return GroundOutcome(BAD_QUERY, str(exc), [], voxels)
        snap = self.objects.snapshot()
        if len(snap) == 0:
            return GroundOutcome(EMPTY_MEMORY, "no object has been segmented yet", [], voxels)
        og = self.config.object_grounding
        threshold = min_score if min_score > 0 else og.min_score
        limit = max_results if max_results > 0 else self.config.query.default_max_results
        t0 = time.perf_counter()
        ranked = self._matches(expr, snap, viewpoint)
        matches = [m for m in ranked if m.score >= threshold][:limit]
        timings = {"objects": time.perf_counter() - t0}
        if not matches:
            best = f" (best {ranked[0].score:.2f})" if ranked else ""
            return GroundOutcome(
                NO_MATCH, f"no object matches {query.strip()!r}{best}", [], voxels, timings
            )
        boxes = [result_box(m, og, m.instance.label) for m in matches]
        ids = [m.instance.id for m in matches]
        return GroundOutcome(OK, "", boxes, voxels, timings, None, ids, matches)

    def clear(self) -> int:
        with self._ingest_lock:
            self.keyframes.reset()
            if self.views is not None:
                self.views.clear()
            if self.objects is not None:
                self.objects.clear()
            return self.memory.clear()

    def save(self, path: str) -> int:
        """Write the memory and the object layer (geometry, instance ids and features) to
        one snapshot file (atomic); returns its size."""
        sections = {}
        if self.objects is not None:
            self.objects.flush(complete=False)
            sections["objects"] = self.objects.state()
        return self.memory.save(path, sections)

    def _limits(self) -> MemoryLimits:
        mc = self.config.memory
        return MemoryLimits(
            voxel_size=mc.voxel_size,
            feature_dims=dict(self.memory.feature_dims),
            max_voxels=mc.max_voxels,
            max_radius=mc.max_radius_m or None,
            max_age_s=mc.max_age_s or None,
            feature_dtype=getattr(torch, mc.feature_dtype),
        )

    def load(self, path: str) -> int:
        """Replace the memory (and the object layer) with a snapshot. The snapshot must
        have this configuration's voxel size and feature widths and fit its bounds (the
        configuration is never replaced by the file's); on any error nothing changes."""
        header, tensors = read_snapshot(path)
        loaded = VoxelPatchMemory.from_snapshot(
            header, tensors, self.memory.device, self._limits(), where=f"snapshot {path}"
        )
        objects_state = snapshot_section(header, tensors, "objects")
        restore = None
        if self.objects is not None and objects_state is not None:
            try:
                restore = self.objects.prepare_state(*objects_state)
            except (KeyError, TypeError, ValueError) as exc:
                raise SnapshotError(f"snapshot {path}: object layer: {exc}") from exc
        with self._ingest_lock:
            self.memory = loaded
            self.keyframes.reset()
            if self.objects is not None:
                if restore is not None:
                    self.objects.apply_state(restore)
                else:
                    self.objects.clear()
        return len(loaded)


def _model_outcome(
    answer: Any,
    boxes: list[Box3D],
    timings: dict[str, float],
    *,
    model: str,
    note: str = "",
    view_stamp_ns: int = 0,
) -> LmmOutcome:
    """A language model's answer (``core.lmm.LmmAnswer``) as an outcome; its boxes labelled
    "answer", at least 1 mm on a side (a flat box is still a valid BoundingBox3D)."""
    labelled = [
        Box3D(b.center, np.maximum(b.size, 1e-3), 0.0, "answer", 1.0, b.num_voxels) for b in boxes
    ]
    return LmmOutcome(
        CANCELED if answer.cancelled else OK,
        "cancelled" if answer.cancelled else note,
        answer.text,
        labelled,
        answer.num_tokens,
        int(answer.scene_tokens),
        timings,
        model=model,
        view_stamp_ns=view_stamp_ns,
    )


def _fmt(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in p) + ")"
