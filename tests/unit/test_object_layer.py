"""The object layer above segmentation: keyframe observations, feature pooling by patch
coverage, label vocabularies, grounding on instances (target x colour x relation with the
best anchor, superlatives), object-list answers, and the ObjectMap end to end on a
ray-cast scene (a table with two boxes on it, on a floor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.encoders.base import PatchGeometry, TextEncoder
from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.objects.answers import answer_object_question
from llava3d_ros.core.objects.crops import CropFeature, CropRefiner
from llava3d_ros.core.objects.features import (
    KeyframeObservation,
    LabelMap,
    observe_keyframe,
    pool_features,
)
from llava3d_ros.core.objects.grounding import ObjectGroundingConfig, rank_instances
from llava3d_ros.core.objects.instances import ObjectInstance, ObjectSnapshot
from llava3d_ros.core.objects.labels import LabelVocabulary, TopLabels
from llava3d_ros.core.questions import parse_question
from llava3d_ros.core.referring import parse_expression
from llava3d_ros.core.spatial import Box3D, Viewpoint

# --------------------------------------------------------------------------- fixtures

D = 8  # embedding width of the table-driven text space (TableText)


class TableText(TextEncoder):
    """Text embeddings from a table: each known word is a unit axis; a phrase is the
    normalised sum of its words' axes (unknown words: a fixed unrelated direction)."""

    name = "table"
    dim = D

    def __init__(self, axes: dict[str, int]) -> None:
        self.axes = axes

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), D)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                if w in ("a", "the"):
                    continue
                out[i, self.axes.get(w, D - 1)] += 1.0
        return torch.nn.functional.normalize(out + 1e-6, dim=1)


AXES = {"mug": 0, "cup": 0, "bowl": 1, "table": 2, "box": 3, "ketchup": 4}
CLASSES = {"mug": ("mug", "cup"), "bowl": ("bowl",), "table": ("table",), "box": ("box",)}


def _vocab() -> LabelVocabulary:
    return LabelVocabulary(TableText(AXES), CLASSES, temperature=0.05, templates=("{}",))


def _unit(i: int) -> torch.Tensor:
    v = torch.zeros(D)
    v[i] = 1.0
    return v


def _instance(
    iid: int,
    lo: Sequence[float],
    hi: Sequence[float],
    role: str = "object",
    support: int = 0,
    colour: str = "white",
    fractions: dict[str, float] | None = None,
) -> ObjectInstance:
    box = Box3D.from_min_max(lo, hi)
    pts = np.array([lo, hi], dtype=np.float32)
    return ObjectInstance(
        id=iid,
        role=role,
        box=box,
        aabb=box,
        points=pts,
        colors=np.ones_like(pts),
        support_id=support,
        colour=colour,
        colour_fractions=fractions or {colour: 1.0},
        labels=TopLabels(("x",), (1.0,)),
        first_seen=0.0,
        last_seen=1.0,
        observations=3,
        has_feature=True,
    )


def _scene() -> ObjectSnapshot:
    """A table (id 1) with a red mug (2) and a white mug (3) on it, a bowl (4) on the
    table between them, and a mug (5) on the floor far away."""
    insts = (
        _instance(1, (0, 0, 0), (1.0, 1.0, 0.75), role="furniture"),
        _instance(2, (0.1, 0.1, 0.75), (0.2, 0.2, 0.85), support=1, colour="red"),
        _instance(3, (0.7, 0.1, 0.75), (0.8, 0.2, 0.85), support=1, colour="white"),
        _instance(4, (0.4, 0.1, 0.75), (0.55, 0.25, 0.82), support=1),
        _instance(5, (3.0, 3.0, 0.0), (3.1, 3.1, 0.1)),
    )
    feats = torch.stack([_unit(2), _unit(0), _unit(0), _unit(1), _unit(0)])
    return ObjectSnapshot(instances=insts, features=feats)


# --------------------------------------------------------------------------- features


def test_observation_samples_voxels_and_patches_of_a_plane() -> None:
    h, w = 120, 160
    intr = CameraIntrinsics(100.0, 100.0, 79.5, 59.5, w, h)
    geo = PatchGeometry(56, 56, 14, 4, 4)
    depth = np.full((h, w), 2.0, np.float32)
    depth[:10] = np.nan  # invalid rows are skipped
    feats = torch.arange(16 * 3, dtype=torch.float32).reshape(4, 4, 3)
    obs = observe_keyframe(depth, intr, np.eye(4), geo, feats, 5.0, 0.02, stride=4)
    assert obs.features.shape == (16, 3) and obs.features.dtype == np.float16
    assert obs.patch_valid.sum() == obs.count.sum() > 0
    # Every sample lies on the plane z = 2 m (voxel index 100 along z).
    iz = (obs.keys & ((1 << 21) - 1)) - (1 << 20)
    assert set(iz.tolist()) == {100}
    # The top patch row lost its invalid rows (10 of 30 pixel rows: ~2 of 7 samples).
    assert obs.patch_valid[:4].sum() < obs.patch_valid[4:8].sum()


def test_pooling_uses_covered_patches_weighted_by_coverage() -> None:
    h, w = 120, 160
    intr = CameraIntrinsics(100.0, 100.0, 79.5, 59.5, w, h)
    geo = PatchGeometry(56, 56, 14, 4, 4)
    depth = np.full((h, w), 2.0, np.float32)
    feats = torch.zeros(4, 4, 2)
    feats[:, :2, 0] = 1.0  # left half of the patches says "A"
    feats[:, 2:, 1] = 1.0  # right half "B"
    obs = observe_keyframe(depth, intr, np.eye(4), geo, feats, 0.0, 0.02, stride=2)
    # Instance 0 = the left 40 % of the image; everything else is structure (-1).
    cols = np.arange(w)
    x = (cols - intr.cx) / intr.fx * 2.0
    pts = np.stack(np.meshgrid(x, (np.arange(h) - intr.cy) / intr.fy * 2.0), -1).reshape(-1, 2)
    pts = np.column_stack([pts, np.full(len(pts), 2.0)])
    labels = np.where(np.tile(cols, h) < 0.4 * w, 0, -1)
    label_map = LabelMap(vk.centred_keys(pts, 0.02), labels)
    pooled = pool_features([obs], label_map, 1, min_coverage=0.3)
    mean, has = pooled.means()
    assert has[0] and pooled.views[0] == 1
    # Patch columns 0 (100 % covered) and 1 (60 % covered) are both "A": the mean is A.
    assert mean[0, 0] == pytest.approx(1.0, abs=1e-3) and abs(float(mean[0, 1])) < 1e-3
    # A threshold above the partial column leaves only the fully covered one.
    strict = pool_features([obs], label_map, 1, min_coverage=0.9)
    assert strict.weights[0] < pooled.weights[0]


def test_label_map_tolerates_one_voxel_and_prefers_own_label() -> None:
    keys = vk.centred_keys(np.array([[0.0, 0.0, 0.0], [0.04, 0.0, 0.0]]), 0.02)
    lm = LabelMap(keys, np.array([3, 7]))
    near = vk.centred_keys(np.array([[0.02, 0.0, 0.0], [0.0, 0.02, 0.0], [0.5, 0.5, 0.5]]), 0.02)
    got = lm.lookup(near)
    assert got[0] in (3, 7) and got[1] == 3 and got[2] == -1
    assert lm.lookup(keys).tolist() == [3, 7]


# --------------------------------------------------------------------------- labels


def test_label_distribution_and_phrase_ownership() -> None:
    vocab = _vocab()
    probs = vocab.distribution(torch.stack([_unit(0), _unit(1)]))
    top = vocab.top(probs, 2)
    assert top[0].names[0] == "mug" and top[1].names[0] == "bowl"
    assert top[0].scores[0] > 0.9
    feats = torch.stack([_unit(0), _unit(1), _unit(2)])
    # "cup" names the mug class (one of its names): a mug scores high, not ~0.5.
    cup = vocab.phrase_scores("cup", feats)
    assert cup[0] > 0.9 and cup[1] < 0.1 and cup[2] < 0.1
    # A word outside the vocabulary competes with every class: low everywhere.
    assert vocab.phrase_scores("ketchup", feats).max() < 0.1


# --------------------------------------------------------------------------- grounding


def _rank(query: str, vp: Viewpoint | None = None) -> list[int]:
    snap = _scene()
    expr = parse_expression(query)
    cfg = ObjectGroundingConfig()
    return [m.instance.id for m in rank_instances(expr, snap, _vocab(), vp, cfg) if m.score > 0.1]


def test_target_relation_anchor_colour_and_superlative() -> None:
    assert _rank("the bowl") == [4]
    assert set(_rank("the mug")) == {2, 3, 5}
    # Relation with the best anchor: the mugs on the table, not the one on the floor.
    assert set(_rank("the mug on the table")) == {2, 3}
    assert _rank("the red mug on the table")[0] == 2
    assert _rank("the white mug on the table")[0] == 3
    # Viewer-relative: seen from y = -2 looking along +y, x grows to the right.
    vp = Viewpoint(np.array([0.5, -2.0, 1.0]), np.array([0.0, 1.0, 0.0]))
    assert _rank("the mug left of the bowl", vp)[0] == 2
    assert _rank("the mug right of the bowl", vp)[0] == 3
    assert _rank("the leftmost mug", vp)[0] == 2
    assert _rank("the mug closest to the bowl")[0] in (2, 3)
    assert _rank("the bowl between the red mug and the white mug")[0] == 4
    # The table is an anchor, not an answer, for "the mug on the table".
    assert 1 not in _rank("the mug on the table")


def test_object_list_answers() -> None:
    snap = _scene()
    vocab = _vocab()

    def ground(phrase: str) -> list[int]:
        expr = parse_expression(phrase)
        cfg = ObjectGroundingConfig()
        return [m.index for m in rank_instances(expr, snap, vocab, None, cfg) if m.score > 0.25]

    labelled = ObjectSnapshot(
        instances=tuple(
            ObjectInstance(**{**inst.__dict__, "labels": TopLabels((name,), (0.9,))})
            for inst, name in zip(
                snap.instances, ["table", "mug", "mug", "bowl", "mug"], strict=True
            )
        ),
        features=snap.features,
    )
    q = parse_question("What is on the table?")
    assert q is not None
    a = answer_object_question(q, labelled, ground, None)
    assert a.value == 3 and "red mug" in a.text and "bowl" in a.text
    a = answer_object_question(parse_question("What colour is the bowl?"), labelled, ground, None)  # type: ignore[arg-type]
    assert a.value == "white"
    a = answer_object_question(parse_question("List the objects"), labelled, ground, None)  # type: ignore[arg-type]
    assert a.value == 4 and "table" in a.text
    a = answer_object_question(parse_question("What is on the sofa?"), labelled, ground, None)  # type: ignore[arg-type]
    assert a.missing == ["sofa"]


# --------------------------------------------------------------------------- object map


def _planted_features(index: np.ndarray, geo: PatchGeometry, parts: list) -> torch.Tensor:
    """Planted patch features: per patch, the one-hot axis of the part covering most of
    it (a perfect encoder that sees what is there), so pooled features can be checked
    exactly."""
    h, w = index.shape
    bounds = geo.patch_pixel_bounds(h, w)
    axis = {"red_box": 0, "blue_box": 1, "table": 2}
    out = torch.zeros(geo.grid_height, geo.grid_width, D)
    for r in range(geo.grid_height):
        for c in range(geo.grid_width):
            r0, r1, c0, c1 = bounds[r, c]
            ids, n = np.unique(index[r0:r1, c0:c1], return_counts=True)
            name = parts[int(ids[np.argmax(n)])].name if ids[np.argmax(n)] >= 0 else "none"
            out[r, c, axis.get(name.rstrip("0123"), D - 2)] = 1.0
    return out


@pytest.fixture(scope="module")
def ray_scene():  # type: ignore[no-untyped-def]
    from tests.raycast_scene import Raycaster, ring_poses, table_scene

    parts = table_scene()
    caster = Raycaster(parts)
    frames = [(pose, *caster.render(pose)) for pose in ring_poses(12)]
    return parts, caster, frames


def _object_map(vocab: LabelVocabulary | None):  # type: ignore[no-untyped-def]
    from llava3d_ros.core.objects.object_map import ObjectConfig, ObjectMap
    from llava3d_ros.core.objects.segmentation import SegmentationConfig
    from llava3d_ros.core.objects.tracking import TrackingConfig
    from llava3d_ros.core.objects.tsdf import GeometryConfig

    return ObjectMap(
        ObjectConfig(crops=False), GeometryConfig(), SegmentationConfig(), TrackingConfig(), vocab
    )


def test_object_map_segments_labels_and_keeps_ids(ray_scene) -> None:  # type: ignore[no-untyped-def]
    parts, caster, frames = ray_scene
    geo = PatchGeometry(392, 392, 14, 28, 28)  # ~11 x 9 px patches: the boxes fill some
    vocab = LabelVocabulary(
        TableText({"red": 0, "blue": 1, "table": 2}),
        {"red box": ("red",), "blue box": ("blue",), "table": ("table",)},
        temperature=0.05,
        templates=("{}",),
        roles={"red box": "object", "blue box": "object", "table": "furniture"},
    )
    om = _object_map(vocab)
    for i, (pose, rgb, depth, index) in enumerate(frames[:6]):
        om.integrate(
            rgb,
            depth,
            caster.intrinsics,
            pose,
            float(i),
            None,
            _planted_features(index, geo, parts),
            geo,
        )
    first = om.update()
    for i, (pose, rgb, depth, index) in enumerate(frames[6:], start=6):
        om.integrate(
            rgb,
            depth,
            caster.intrinsics,
            pose,
            float(i),
            None,
            _planted_features(index, geo, parts),
            geo,
        )
    snap = om.update()
    objects = [o for o in snap.instances if o.role == "object"]
    furniture = [o for o in snap.instances if o.role == "furniture"]
    assert len(objects) == 2 and len(furniture) == 1
    table = furniture[0]
    assert table.label == "table" and all(o.support_id == table.id for o in objects)
    by_label = {o.label: o for o in objects}
    assert set(by_label) == {"red", "blue"}  # display names: each class's first name
    red = by_label["red"]
    assert red.colour == "red" and by_label["blue"].colour == "blue"
    assert np.allclose(red.aabb.center, (-0.25, -0.05, 0.80), atol=0.03)
    assert red.label_score > 0.9 and red.observations >= 6
    # Ids persist: the same instances keep the ids of the first update.
    assert {o.id for o in snap.instances} == {o.id for o in first.instances}

    # Save, load into a fresh map: same geometry, same ids, labels before any new view.
    header, tensors = om.state()
    other = _object_map(vocab)
    other.apply_state(other.prepare_state(header, tensors))
    again = other.update()
    assert {(o.id, o.label) for o in again.instances} == {(o.id, o.label) for o in snap.instances}
    bad = dict(tensors, features=torch.full_like(tensors["features"], float("nan")))
    with pytest.raises(ValueError, match="malformed"):
        other.prepare_state(header, bad)


def test_crop_cache_forgets_views_that_left_the_keyframe_store() -> None:
    """A long run chooses ever newer views; crops of views no longer in the store can never
    be chosen again and must not pile up (the cache grew with every keyframe)."""
    geometry = PatchGeometry(224, 224, 14, 16, 16)
    refiner = CropRefiner(lambda crops: torch.zeros(len(crops), 16, 16, 8), geometry)
    for stamp in (1.0, 2.0, 3.0):
        refiner.cache.setdefault(7, {})[stamp] = CropFeature(np.ones(8, np.float32), 1.0, 10)
    p = geometry.num_patches
    obs = KeyframeObservation(
        stamp=3.0,
        keys=np.zeros(1, np.int64),
        patch=np.zeros(1, np.int32),
        count=np.ones(1, np.int32),
        pixel=np.zeros((1, 2), np.uint16),
        patch_valid=np.ones(p, np.int32),
        features=np.zeros((p, 8), np.float16),
    )
    refiner.plan([7], ["object"], [10], [1], [obs], [np.zeros(1, np.int32)])
    assert sorted(refiner.cache[7]) == [3.0]
