"""Training data for the default alignment head: rendered RGB-D views of composed rooms,
DINOv2 patch features and per-patch class labels from the instance masks.

What is generated (deterministic for a given :class:`HeadDataConfig`):

- Rooms from :func:`~llava3d_ros.sim.scene.compose_room` (real scanned LIBERO/HOPE/
  Google-scanned/pybullet assets, metric units normalised by the catalog; 1-3 pieces of
  furniture, 4-9 objects, textured or plain floors and walls, varied lights). *Training*
  rooms and *held-out* rooms come from disjoint seed ranges, so the held-out rooms are
  compositions (object sets, arrangements, furniture, surfaces, lights) never seen in
  training.
- Per room: frames along a walk-through loop (camera height band drawn per room) and
  close-ups / mid-range views of every object (:func:`~llava3d_ros.sim.scene.object_views`).
- Viewpoint hold-out: in training rooms, every frame whose camera azimuth (around the room
  centre for walk-through frames, around the looked-at object for close-ups) falls into
  ``heldout_sector_deg`` goes to the ``val_view`` split, never into training. Frames of
  held-out rooms form the ``val_scene`` split.
- Labels: every pixel gets a class from the instance mask (object or furniture category;
  room pixels split into floor / wall / ceiling by their height in the world, from the
  depth and the camera pose). Every DINOv2 patch stores the pixel count of each class
  inside its source rectangle (:meth:`PatchGeometry.patch_pixel_bounds`): the majority
  label and its fraction follow, and so do soft labels.
- Features: the ``dinov2_onnx`` backend's ``"vision"`` patch tokens (same preprocessing
  as at run time: whole frame resized to ``input_size``), stored as float16.

Training frames get a mild photometric jitter (gain, tint, gamma, sensor noise) so that
the head does not learn the renderer's exact colours; held-out frames stay clean.

Cache layout (never in git): ``<cache_dir>/headdata/<key>/scene_<seed>.npz`` plus
``manifest.json``; ``key`` hashes the per-room config (not the number of rooms: configs
that differ only there share rooms), the vocabulary, the asset catalog and the ONNX model
file, so a changed input never reuses stale features, and an interrupted run resumes per
room.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.encoders.onnx_dinov2 import default_cache_dir, default_model_path
from llava3d_ros.core.objects.crops import CropConfig, crop_box, crop_input
from llava3d_ros.sim.assets import catalog, describe_catalog, get_asset
from llava3d_ros.sim.scene import (
    SceneSpec,
    build_pyrender_scene,
    compose_room,
    object_boxes,
    object_views,
    walkthrough_poses,
)

__all__ = [
    "BACKGROUND_CLASSES",
    "DATA_VERSION",
    "DISTRACTOR_PROMPTS",
    "PARAPHRASES",
    "SPLITS",
    "HeadDataConfig",
    "HeadDataset",
    "HeadVocabulary",
    "cache_key",
    "catalog_fingerprint",
    "default_data_cache",
    "generate",
    "head_vocabulary",
    "heldout_paraphrases",
    "load_dataset",
    "patch_class_counts",
    "pixel_classes",
    "render_room_views",
]

DATA_VERSION = 2  # 2: crops of walk-through frames around each visible object

#: Room surfaces; the same words are among the grounder's default negative prompts, so a
#: head trained to put room patches here makes "beats every negative" mean "not room".
BACKGROUND_CLASSES: tuple[str, ...] = ("floor", "wall", "ceiling")

#: The grounder's other negative prompts: never a training target, but present in the
#: softmax so that every patch is pushed away from them (a wider calibrated margin).
DISTRACTOR_PROMPTS: tuple[str, ...] = ("object", "things", "stuff", "texture")

#: Split ids stored per frame.
SPLITS: tuple[str, ...] = ("train", "val_view", "val_scene")
TRAIN, VAL_VIEW, VAL_SCENE = 0, 1, 2
WALK, CLOSEUP, CROP = 0, 1, 2

#: Held-out query wordings per category: never used to build training targets (checked by
#: :func:`head_vocabulary`), used only to measure paraphrase robustness.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "alphabet_soup": ("can of alphabet soup", "tin of soup", "soup tin"),
    "basket": ("wicker basket", "basket for storage", "woven storage basket"),
    "bbq_sauce": ("bottle of barbecue sauce", "smoky bbq sauce", "barbecue sauce bottle"),
    "book": ("hardback book", "novel", "paperback"),
    "bookshelf": ("book shelf", "shelf for books", "bookshelves"),
    "bowl": ("serving bowl", "porcelain bowl", "cereal bowl"),
    "butter": ("pack of butter", "stick of butter", "butter box"),
    "cabinet": ("dresser", "sideboard", "drawer unit"),
    "chocolate_pudding": ("chocolate pudding box", "pudding mix", "box of pudding"),
    "coffee_table": ("sofa table", "small low table", "lounge table"),
    "cookies": ("pack of cookies", "biscuits", "cookie package"),
    "cream_cheese": ("pack of cream cheese", "cream cheese package", "cream cheese pack"),
    "desk_caddy": ("pen organizer", "stationery holder", "desk tidy"),
    "dish_rack": ("dish drying rack", "plate rack", "drying rack"),
    "fridge": ("freezer", "fridge freezer", "icebox"),
    "frying_pan": ("cooking pan", "fry pan", "frying skillet"),
    "ketchup": ("tomato ketchup bottle", "bottle of ketchup", "ketchup squeeze bottle"),
    "macaroni_and_cheese": ("box of macaroni and cheese", "macaroni box", "box of mac and cheese"),
    "milk": ("milk box", "carton with milk", "dairy milk carton"),
    "moka_pot": ("espresso pot", "stovetop coffee pot", "italian coffee maker"),
    "mug": ("tea cup", "coffee cup", "ceramic mug"),
    "orange_juice": ("carton of orange juice", "oj carton", "box of orange juice"),
    "plant": ("indoor plant", "plant in a pot", "green leaves"),
    "plate": ("round plate", "porcelain plate", "flat plate"),
    "popcorn": ("microwave popcorn", "popcorn packet", "pack of popcorn"),
    "ramekin": ("little bowl", "small porcelain dish", "tiny bowl"),
    "rubber_duck": ("bath duck", "yellow duck toy", "rubber ducky"),
    "salad_dressing": ("bottle of salad dressing", "ranch dressing bottle", "creamy dressing"),
    "shelf": ("shelves", "storage shelf", "wooden shelves"),
    "soccer_ball": ("football ball", "sports ball", "soccer football"),
    "storage_box": ("plastic storage box", "storage container", "bin for storage"),
    "table": ("kitchen table", "wooden desk", "big table"),
    "tomato_sauce": ("tin of tomato sauce", "canned tomato sauce", "tomato can"),
    "tray": ("tea tray", "platter", "serving platter"),
    "wine_bottle": ("bottle of red wine", "glass wine bottle", "wine"),
    "wine_rack": ("rack for wine bottles", "wine bottle holder", "wine shelf"),
}


# --------------------------------------------------------------------------------------
# Vocabulary.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadVocabulary:
    """The head's closed vocabulary: class keys in logit order (object categories,
    furniture categories, then the room surfaces), their natural names (training targets)
    and each class's role ("object", "furniture", "background")."""

    classes: tuple[str, ...]
    names: Mapping[str, tuple[str, ...]]
    roles: Mapping[str, str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, key: str) -> int:
        return self.classes.index(key)

    def by_role(self, role: str) -> list[int]:
        return [i for i, c in enumerate(self.classes) if self.roles[c] == role]

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "names": {k: list(v) for k, v in self.names.items()},
            "roles": dict(self.roles),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeadVocabulary:
        return cls(
            tuple(d["classes"]),
            {k: tuple(v) for k, v in d["names"].items()},
            dict(d["roles"]),
        )


def head_vocabulary() -> HeadVocabulary:
    """Categories of the installed, non-recoloured catalog assets with the names their
    assets carry (category names first, then colour/material forms), plus floor / wall /
    ceiling. Raises if a paraphrase coincides with a training name (it would not measure
    robustness) or a category has none."""

    names: dict[str, list[str]] = {}
    roles: dict[str, str] = {}
    for spec in sorted(catalog().values(), key=lambda s: s.asset_id):
        if spec.recoloured:
            continue
        lst = names.setdefault(spec.category, [])
        lst += [n for n in spec.names if n not in lst]
        roles[spec.category] = spec.role
    objects = sorted(c for c, r in roles.items() if r == "object")
    furniture = sorted(c for c, r in roles.items() if r == "furniture")
    classes = (*objects, *furniture, *BACKGROUND_CLASSES)
    out_names = {c: tuple(names[c]) for c in (*objects, *furniture)}
    for c in BACKGROUND_CLASSES:
        out_names[c] = (c,)
        roles[c] = "background"
    for c in (*objects, *furniture):
        if not heldout_paraphrases(c, out_names):
            raise ValueError(f"category {c!r} has no held-out paraphrases in PARAPHRASES")
    return HeadVocabulary(classes, out_names, {c: roles[c] for c in classes})


def _bare(text: str) -> str:
    """Lower case without a leading article ("the ketchup" and "ketchup" are one wording)."""
    t = text.lower().strip()
    for article in ("a ", "an ", "the "):
        if t.startswith(article):
            return t[len(article) :]
    return t


def heldout_paraphrases(category: str, names: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """``PARAPHRASES[category]`` minus any wording that is a training name of any class,
    with or without an article (the catalog's names may grow; a paraphrase that became a
    name measures nothing)."""
    train_words = {_bare(n) for v in names.values() for n in v}
    return tuple(p for p in PARAPHRASES.get(category, ()) if _bare(p) not in train_words)


# --------------------------------------------------------------------------------------
# Configuration and cache.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadDataConfig:
    """What to render. Defaults (the shipped head): 70 rooms, ~1600 frames, about 6
    minutes of rendering + encoding on a 2-core CPU."""

    train_rooms: int = 60
    heldout_rooms: int = 10
    train_seed_base: int = 10_000  # training rooms: compose_room(train_seed_base + i)
    heldout_seed_base: int = 90_000  # held-out rooms: compose_room(heldout_seed_base + i)
    objects_per_room: tuple[int, int] = (4, 9)  # inclusive range
    walk_frames: int = 10  # evenly spaced along one walk-through loop
    walk_candidates: int = 60  # loop resolution the frames are picked from
    height_bands: tuple[tuple[float, float], ...] = ((0.6, 1.0), (1.0, 1.4), (1.3, 1.7))
    closeup_fill: tuple[float, float] = (0.45, 0.95)  # object_views fill: close-up
    midrange_fill: tuple[float, float] = (0.15, 0.45)  # ... and mid-range
    heldout_sector_deg: tuple[float, float] = (0.0, 72.0)  # azimuths held out (val_view)
    width: int = 640
    height: int = 480
    input_size: int = 224
    jitter: bool = True  # photometric jitter on training frames
    # Crops of walk-through frames around every object seen there, made as the object
    # layer makes them at run time (JPEG keyframe, ``crop_box``, ``crop_input``): small
    # objects are labelled from such crops, so the head must know how they look.
    walk_crops: bool = True
    crop_min_pixels: int = 64  # the object layer's 4 samples at stride 4
    crop_stride: int = 4  # pixel sampling of the object layer (``objects.sample_stride_px``)
    crop_jpeg_quality: int = 90  # the keyframe store's JPEG quality
    version: int = DATA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def quick(cls) -> HeadDataConfig:
        """A small smoke-test set: 13 rooms, ~300 frames (about a minute and a half)."""
        return cls(train_rooms=10, heldout_rooms=3)

    def room_seeds(self) -> list[tuple[int, bool]]:
        """(seed, held_out) for every room, training rooms first."""
        return [(self.train_seed_base + i, False) for i in range(self.train_rooms)] + [
            (self.heldout_seed_base + i, True) for i in range(self.heldout_rooms)
        ]


def default_data_cache() -> Path:
    """``<llava3d_ros cache>/headdata`` (``$LLAVA3D_ROS_CACHE`` or ~/.cache/llava3d_ros)."""

    return default_cache_dir() / "headdata"


def _model_identity(model_path: Path) -> str:
    st = model_path.stat()
    return f"{model_path.name}|{st.st_size}"


#: Config fields that choose *which* rooms are rendered, not how: configs that differ only
#: in these share one cache directory (a room file depends on its seed and the rest).
_ROOM_COUNT_FIELDS = ("train_rooms", "heldout_rooms")


def catalog_fingerprint() -> str:
    """Hash of the asset catalog as rendered (ids, categories, sizes, scale sources): a
    re-scaled or re-categorised asset invalidates cached rooms."""

    return hashlib.sha256(describe_catalog().encode()).hexdigest()[:16]


def cache_key(cfg: HeadDataConfig, vocab: HeadVocabulary, model_path: Path) -> str:
    per_room = {k: v for k, v in cfg.to_dict().items() if k not in _ROOM_COUNT_FIELDS}
    ident = json.dumps(
        {
            "cfg": per_room,
            "classes": list(vocab.classes),
            "names": {k: list(v) for k, v in vocab.names.items()},
            "catalog": catalog_fingerprint(),
            "model": _model_identity(model_path),
        },
        sort_keys=True,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Labels.
# --------------------------------------------------------------------------------------


def pixel_classes(
    instance: np.ndarray,
    depth: np.ndarray,
    intrinsics: Any,
    t_world_camera: np.ndarray,
    instance_class: Mapping[int, int],
    background: tuple[int, int, int],
    room_height: float,
    surface_tol: float = 0.03,
) -> np.ndarray:
    """(H, W) int16 class per pixel: ``instance_class[id]`` for object/furniture pixels;
    room pixels (id 0) -> ``background`` (floor, wall, ceiling) by world height (within
    ``surface_tol`` of z = 0 / z = room height); -1 where nothing was hit."""
    h, w = instance.shape
    out = np.full((h, w), -1, np.int16)
    ids = np.unique(instance)
    for k in ids:
        if k != 0:
            if int(k) not in instance_class:
                raise KeyError(f"instance id {int(k)} has no class")
            out[instance == k] = instance_class[int(k)]
    room = (instance == 0) & (depth > 0)
    if room.any():
        v, u = np.nonzero(room)
        z = depth[v, u].astype(np.float64)
        x = (u - intrinsics.cx) / intrinsics.fx * z
        y = (v - intrinsics.cy) / intrinsics.fy * z
        r, t = t_world_camera[:3, :3], t_world_camera[:3, 3]
        zw = r[2, 0] * x + r[2, 1] * y + r[2, 2] * z + t[2]
        floor, wall, ceiling = background
        cls = np.full(len(z), wall, np.int16)
        cls[zw < surface_tol] = floor
        cls[zw > room_height - surface_tol] = ceiling
        out[v, u] = cls
    return out


def patch_class_counts(classes: np.ndarray, geometry: Any, num_classes: int) -> np.ndarray:
    """(H, W) class map (-1 = none) -> (num_patches, num_classes) uint16 pixel counts per
    patch rectangle (``geometry.patch_pixel_bounds``; row-major patch order)."""
    h, w = classes.shape
    bounds = geometry.patch_pixel_bounds(h, w)
    row_of = np.empty(h, np.int64)
    col_of = np.empty(w, np.int64)
    for i in range(geometry.grid_height):
        row_of[bounds[i, 0, 0] : bounds[i, 0, 1]] = i
    for j in range(geometry.grid_width):
        col_of[bounds[0, j, 2] : bounds[0, j, 3]] = j
    pid = row_of[:, None] * geometry.grid_width + col_of[None, :]
    valid = classes >= 0
    flat = pid[valid] * num_classes + classes[valid].astype(np.int64)
    counts = np.bincount(flat, minlength=geometry.num_patches * num_classes)
    return counts.reshape(geometry.num_patches, num_classes).astype(np.uint16)


# --------------------------------------------------------------------------------------
# Views.
# --------------------------------------------------------------------------------------


def _azimuth_deg(eye: np.ndarray, centre: np.ndarray) -> float:
    d = eye[:2] - centre[:2]
    return math.degrees(math.atan2(d[1], d[0])) % 360.0


def _in_sector(az: float, sector: tuple[float, float]) -> bool:
    lo, hi = sector
    return lo <= az < hi if lo <= hi else (az >= lo or az < hi)


@dataclass
class ViewPlan:
    poses: list[np.ndarray] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)  # WALK / CLOSEUP
    targets: list[int] = field(default_factory=list)  # instance id looked at (0 = room)
    azimuths: list[float] = field(default_factory=list)


def plan_views(spec: Any, cfg: HeadDataConfig, seed: int) -> ViewPlan:
    """Walk-through frames + a close-up and a mid-range view of every object."""

    rng = np.random.default_rng([seed, 7])
    plan = ViewPlan()
    band = cfg.height_bands[int(rng.integers(len(cfg.height_bands)))]
    try:
        loop = walkthrough_poses(spec, cfg.walk_candidates, seed, height_range=band)
    except RuntimeError:
        loop = walkthrough_poses(spec, cfg.walk_candidates, seed)
    step = cfg.walk_candidates / cfg.walk_frames
    offset = rng.uniform(0, step)
    for k in range(cfg.walk_frames):
        pose = loop[int(offset + k * step) % cfg.walk_candidates]
        plan.poses.append(pose)
        plan.kinds.append(WALK)
        plan.targets.append(0)
        plan.azimuths.append(_azimuth_deg(pose[:3, 3], np.zeros(3)))
    boxes = object_boxes(spec)
    for obj in spec.objects:
        centre = np.asarray(boxes[obj.instance_id].center)
        for j, fill in enumerate((cfg.closeup_fill, cfg.midrange_fill)):
            try:
                pose = object_views(
                    spec,
                    1,
                    seed=seed * 1000 + obj.instance_id * 10 + j,
                    instance_id=obj.instance_id,
                    fill=fill,
                )[0]
            except RuntimeError:
                continue  # no free viewpoint around this object
            plan.poses.append(pose)
            plan.kinds.append(CLOSEUP)
            plan.targets.append(obj.instance_id)
            plan.azimuths.append(_azimuth_deg(pose[:3, 3], centre))
    return plan


def _jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, per-channel tint, gamma and Gaussian sensor noise (uint8 in, uint8 out)."""
    x = rgb.astype(np.float32) / 255.0
    x = x * rng.uniform(0.75, 1.25) * rng.uniform(0.93, 1.07, 3)
    x = np.clip(x, 0, 1) ** rng.uniform(0.8, 1.25)
    x = x * 255.0 + rng.normal(0.0, rng.uniform(0.0, 4.0), x.shape)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


@dataclass
class RoomViews:
    """Rendered frames of one room (what :func:`render_room_views` returns)."""

    spec: Any
    rgb: list[np.ndarray]
    depth: list[np.ndarray]
    classes: list[np.ndarray]  # (H, W) int16 per frame
    plan: ViewPlan
    instance: list[np.ndarray] = field(default_factory=list)  # (H, W) instance id per frame
    instance_class: dict[int, int] = field(default_factory=dict)  # instance id -> class


def render_room_views(
    spec: Any, renderer: Any, cfg: HeadDataConfig, vocab: HeadVocabulary, seed: int
) -> RoomViews:
    """Render ``plan_views`` of one room: rgb, metric depth and the per-pixel class map."""

    plan = plan_views(spec, cfg, seed)
    scene = build_pyrender_scene(spec, renderer)
    instance_class = {
        p.instance_id: vocab.index(get_asset(p.asset_id).category) for p in spec.placements()
    }
    floor_c, wall_c, ceiling_c = (vocab.index(c) for c in BACKGROUND_CLASSES)
    bg = (floor_c, wall_c, ceiling_c)
    out = RoomViews(spec, [], [], [], plan, instance_class=instance_class)
    for pose in plan.poses:
        frame = renderer.render(scene, pose)
        out.rgb.append(frame.rgb)
        out.depth.append(frame.depth)
        out.instance.append(frame.instance)
        out.classes.append(
            pixel_classes(
                frame.instance,
                frame.depth,
                frame.intrinsics,
                pose,
                instance_class,
                bg,
                spec.room_size[2],
            )
        )
    return out


@dataclass
class ViewCrop:
    """An object crop of a walk-through frame, as the encoder sees it."""

    rgb: np.ndarray  # (input_h, input_w, 3) uint8
    counts: np.ndarray  # (num_patches, num_classes) uint16 class pixels per crop patch
    frame: int  # index of the frame it was cut from
    instance_id: int


def walk_crops(
    views: RoomViews,
    images: Sequence[np.ndarray],
    cfg: HeadDataConfig,
    vocab: HeadVocabulary,
    geometry: Any,
) -> list[ViewCrop]:
    """Crops of every object visible in the walk-through frames (``images``: the frames
    as encoded, jitter included), cut and resized as the object layer's ``CropRefiner``
    does from a JPEG keyframe."""
    crop_cfg = CropConfig()
    step = cfg.crop_stride
    min_samples = max(1, math.ceil(cfg.crop_min_pixels / step**2))
    object_ids = sorted(obj.instance_id for obj in views.spec.objects)
    out: list[ViewCrop] = []
    for i, (kind, img) in enumerate(zip(views.plan.kinds, images, strict=True)):
        if kind != WALK:
            continue
        ok, buf = cv2.imencode(
            ".jpg",
            np.ascontiguousarray(img[..., ::-1]),
            [cv2.IMWRITE_JPEG_QUALITY, cfg.crop_jpeg_quality],
        )
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if bgr is None:
            raise RuntimeError("JPEG round trip of a rendered frame failed")
        decoded = bgr[..., ::-1]
        inst, classes = views.instance[i], views.classes[i]
        h, w = inst.shape
        sampled = inst[::step, ::step]
        for iid in object_ids:
            vv, uu = np.nonzero(sampled == iid)
            if len(vv) < min_samples:
                continue
            pixels = np.stack([uu, vv], axis=1).astype(np.float64) * step
            box = crop_box(pixels, w, h, step, crop_cfg)
            if box is None:
                continue
            u0, v0, side = box
            counts = patch_class_counts(
                classes[v0 : v0 + side, u0 : u0 + side], geometry, vocab.num_classes
            )
            out.append(ViewCrop(crop_input(decoded, box, geometry), counts, i, iid))
    return out


# --------------------------------------------------------------------------------------
# Generation.
# --------------------------------------------------------------------------------------


def _room_file(root: Path, seed: int) -> Path:
    return root / f"scene_{seed}.npz"


def generate(
    cfg: HeadDataConfig,
    cache_dir: Path | None = None,
    *,
    encoder: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Render, label and encode every room of ``cfg`` (rooms already cached are skipped).
    Returns the cache directory of this config (``<cache_dir>/<key>``)."""
    from llava3d_ros.sim.render import RGBDRenderer

    _check_seeds_disjoint(cfg)
    vocab = head_vocabulary()
    model_path = default_model_path()
    root = Path(cache_dir or default_data_cache()) / cache_key(cfg, vocab, model_path)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": "llava3d_ros.headdata",
        "version": DATA_VERSION,
        "config": cfg.to_dict(),
        "vocabulary": vocab.to_dict(),
        "model": _model_identity(model_path),
        "catalog": catalog_fingerprint(),
        "splits": list(SPLITS),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    todo = [(s, h) for s, h in cfg.room_seeds() if not _room_file(root, s).is_file()]
    if not todo:
        return root
    if encoder is None:
        encoder = create_encoders({"backend": "dinov2_onnx", "input_size": cfg.input_size}).image
    geometry = encoder.geometry
    renderer = RGBDRenderer(cfg.width, cfg.height)
    bar = tqdm(total=len(todo), desc="rendering rooms", unit="room", disable=not progress)
    t_render = t_encode = 0.0
    n_frames = n_crops = 0
    try:
        for seed, held_out in todo:
            rng = np.random.default_rng([seed, 11])
            lo, hi = cfg.objects_per_room
            spec = compose_room(seed, n_objects=int(rng.integers(lo, hi + 1)))
            t0 = time.perf_counter()
            views = render_room_views(spec, renderer, cfg, vocab, seed)
            t1 = time.perf_counter()
            split = np.array(
                [
                    VAL_SCENE
                    if held_out
                    else (VAL_VIEW if _in_sector(a, cfg.heldout_sector_deg) else TRAIN)
                    for a in views.plan.azimuths
                ],
                np.uint8,
            )
            images = [
                _jitter(img, np.random.default_rng([seed, i, 13]))
                if (cfg.jitter and split[i] == TRAIN)
                else img
                for i, img in enumerate(views.rgb)
            ]
            feats = encoder.encode(images)["vision"].cpu().numpy().astype(np.float16)
            feats = feats.reshape(len(images), geometry.num_patches, -1)
            counts = np.stack(
                [patch_class_counts(c, geometry, vocab.num_classes) for c in views.classes]
            )
            kinds = np.asarray(views.plan.kinds, np.uint8)
            targets = np.asarray(views.plan.targets, np.int32)
            poses = np.stack(views.plan.poses).astype(np.float32)
            crops = walk_crops(views, images, cfg, vocab, geometry) if cfg.walk_crops else []
            if crops:
                crop_feats = encoder.encode([c.rgb for c in crops])["vision"].cpu().numpy()
                crop_feats = crop_feats.astype(np.float16).reshape(len(crops), *feats.shape[1:])
                frame_of = np.asarray([c.frame for c in crops])
                feats = np.concatenate([feats, crop_feats])
                counts = np.concatenate([counts, np.stack([c.counts for c in crops])])
                split = np.concatenate([split, split[frame_of]])
                kinds = np.concatenate([kinds, np.full(len(crops), CROP, np.uint8)])
                targets = np.concatenate(
                    [targets, np.asarray([c.instance_id for c in crops], np.int32)]
                )
                poses = np.concatenate([poses, poses[frame_of]])
            t2 = time.perf_counter()
            tmp = root / f".scene_{seed}.tmp{os.getpid()}.npz"
            np.savez(
                tmp,
                features=feats,
                counts=counts,
                split=split,
                kind=kinds,
                target=targets,
                poses=poses,
                target_class=np.asarray(
                    [views.instance_class.get(int(t), -1) for t in targets], np.int16
                ),
                seed=np.int64(seed),
                spec=np.frombuffer(json.dumps(spec.to_dict()).encode(), np.uint8),
            )
            os.replace(tmp, _room_file(root, seed))
            t_render += t1 - t0
            t_encode += t2 - t1
            n_frames += len(images)
            n_crops += len(crops)
            bar.set_postfix_str(f"{n_frames} frames, {n_crops} crops")
            bar.update(1)
    finally:
        bar.close()
        renderer.close()
    log(
        f"headdata: {n_frames} frames + {n_crops} crops from {len(todo)} rooms; "
        f"render {t_render:.0f} s, "
        f"encode {t_encode:.0f} s; cache {root}"
    )
    return root


# --------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------


@dataclass
class HeadDataset:
    """All cached patches, one row each. ``counts`` are per-class pixel counts inside the
    patch; ``split``/``kind``/``room``/``frame`` are per-patch copies of frame fields."""

    features: np.ndarray  # (N, D) float16
    counts: np.ndarray  # (N, C) uint16
    split: np.ndarray  # (N,) uint8
    kind: np.ndarray  # (N,) uint8
    room: np.ndarray  # (N,) int64 room seed
    frame: np.ndarray  # (N,) int64 global frame index (crops count as frames)
    target_class: np.ndarray  # (N,) int16 class of the object a close-up or crop is of; -1
    vocab: HeadVocabulary
    config: HeadDataConfig
    frames_per_split: dict[str, int]  # rendered frames (crops not counted)
    crops_per_split: dict[str, int]
    rooms_per_split: dict[str, int]

    def majority(self) -> tuple[np.ndarray, np.ndarray]:
        """(label (N,) int64, fraction of the patch's pixels it covers (N,) float32);
        label -1 for patches with no labelled pixel."""
        total = self.counts.sum(axis=1).astype(np.float32)
        label = self.counts.argmax(axis=1).astype(np.int64)
        frac = self.counts.max(axis=1) / np.maximum(total, 1.0)
        label[total == 0] = -1
        return label, frac.astype(np.float32)

    def __len__(self) -> int:
        return len(self.features)


def _config_from_dict(d: Mapping[str, Any]) -> HeadDataConfig:
    kw = dict(d)
    for key in ("objects_per_room", "closeup_fill", "midrange_fill", "heldout_sector_deg"):
        kw[key] = tuple(kw[key])
    kw["height_bands"] = tuple(tuple(b) for b in kw["height_bands"])
    return HeadDataConfig(**kw)


def iter_rooms(root: Path, cfg: HeadDataConfig | None = None) -> Iterator[tuple[int, Any]]:
    """(seed, arrays) of every room of ``cfg`` (default: the config in the manifest)."""
    if cfg is None:
        cfg = _config_from_dict(json.loads((Path(root) / "manifest.json").read_text())["config"])
    for seed, _ in cfg.room_seeds():
        path = _room_file(Path(root), seed)
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: run generate() for this config first")
        with np.load(path) as z:
            yield seed, {k: z[k] for k in z.files}


def load_dataset(root: Path, cfg: HeadDataConfig | None = None) -> HeadDataset:
    """Concatenate the cached rooms of ``cfg`` (default: the config that last wrote the
    manifest at ``root``)."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    if cfg is None:
        cfg = _config_from_dict(manifest["config"])
    vocab = HeadVocabulary.from_dict(manifest["vocabulary"])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "c", "s", "k", "r", "i", "t")}
    frames = {s: 0 for s in SPLITS}
    crops = {s: 0 for s in SPLITS}
    rooms: dict[str, set[int]] = {s: set() for s in SPLITS}
    frame0 = 0
    for seed, z in iter_rooms(root, cfg):
        f = z["features"]
        n_frames, n_patches = f.shape[0], f.shape[1]
        parts["f"].append(f.reshape(n_frames * n_patches, -1))
        parts["c"].append(z["counts"].reshape(n_frames * n_patches, -1))
        parts["s"].append(np.repeat(z["split"], n_patches))
        parts["k"].append(np.repeat(z["kind"], n_patches))
        parts["r"].append(np.full(n_frames * n_patches, seed, np.int64))
        parts["i"].append(np.repeat(np.arange(frame0, frame0 + n_frames), n_patches))
        parts["t"].append(np.repeat(z["target_class"], n_patches))
        frame0 += n_frames
        for s, k in zip(z["split"], z["kind"], strict=True):
            (crops if k == CROP else frames)[SPLITS[int(s)]] += 1
            rooms[SPLITS[int(s)]].add(seed)
    return HeadDataset(
        features=np.concatenate(parts["f"]),
        counts=np.concatenate(parts["c"]),
        split=np.concatenate(parts["s"]),
        kind=np.concatenate(parts["k"]),
        room=np.concatenate(parts["r"]),
        frame=np.concatenate(parts["i"]),
        target_class=np.concatenate(parts["t"]),
        vocab=vocab,
        config=cfg,
        frames_per_split=frames,
        crops_per_split=crops,
        rooms_per_split={k: len(v) for k, v in rooms.items()},
    )


def room_spec(z: Mapping[str, np.ndarray]) -> Any:
    """The SceneSpec stored with a cached room."""

    return SceneSpec.from_dict(json.loads(bytes(z["spec"]).decode()))


def _check_seeds_disjoint(cfg: HeadDataConfig) -> None:
    train = {s for s, h in cfg.room_seeds() if not h}
    held = {s for s, h in cfg.room_seeds() if h}
    if train & held:
        raise ValueError(f"training and held-out room seeds overlap: {sorted(train & held)}")


def summarize(ds: HeadDataset) -> dict[str, Any]:
    """Counts for the model card: frames, rooms and labelled patches per split."""
    label, _ = ds.majority()
    out: dict[str, Any] = {
        "frames": ds.frames_per_split,
        "crops": ds.crops_per_split,
        "rooms": ds.rooms_per_split,
    }
    out["patches"] = {s: int((ds.split == i).sum()) for i, s in enumerate(SPLITS)}
    obj = np.isin(label, ds.vocab.by_role("object"))
    out["object_patches"] = {s: int(((ds.split == i) & obj).sum()) for i, s in enumerate(SPLITS)}
    return out
