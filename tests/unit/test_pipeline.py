"""ScenePipeline with a tiny random CLIP (vision + text-aligned dense features) loaded
through the real hf_clip loader: frame validation, keyframes, query codes, snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.geometry import CameraIntrinsics, make_transform
from tests.model_fixtures import make_tiny_clip

H, W = 120, 160
K = CameraIntrinsics(100.0, 100.0, 80.0, 60.0, W, H)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    clip = make_tiny_clip(tmp_path_factory.mktemp("m") / "clip")
    return create_encoders({"backend": "hf_clip", "model": str(clip)})


def _pipeline(bundle, **memory) -> pl.ScenePipeline:  # type: ignore[no-untyped-def]
    cfg = pl.PipelineConfig.from_dict(
        {"memory": {"voxel_size": 0.1, **memory}, "keyframes": {"max_interval_s": 0.0}}
    )
    return pl.ScenePipeline(cfg, bundle)


def _frame(seed: int = 0, depth: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8), np.full((H, W), depth, np.float32)


def _pose(x: float) -> np.ndarray:
    return make_transform([x, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])


def test_keyframes_integrate_and_skip(bundle) -> None:  # type: ignore[no-untyped-def]
    p = _pipeline(bundle)
    rgb, depth = _frame()
    first = p.process_frame(rgb, depth, K, _pose(0.0), 1.0)
    assert first.keyframe == "first" and first.patches == 16  # 4x4 tiny-CLIP grid
    assert len(p.memory) > 0 and set(first.timings) == {
        "lift",
        "encoder_wait",
        "encode",
        "fuse",
        "objects",
    }
    assert p.process_frame(rgb, depth, K, _pose(0.01), 1.1).keyframe is None
    assert p.process_frame(rgb, depth, K, _pose(0.5), 1.2).keyframe == "moved"
    assert p.memory.stats().frames_integrated == 2


def test_bad_frames_raise_with_reasons(bundle) -> None:  # type: ignore[no-untyped-def]
    p = _pipeline(bundle)
    rgb, depth = _frame()
    cases = {
        "size_mismatch": (rgb[:, :100], depth, K, _pose(0)),
        "intrinsics_mismatch": (rgb, depth, CameraIntrinsics(1, 1, 1, 1, 10, 10), _pose(0)),
        "bad_pose": (rgb, depth, K, np.full((4, 4), np.nan)),
        "no_valid_depth": (rgb, np.zeros_like(depth), K, _pose(0)),
    }
    for reason, args in cases.items():
        with pytest.raises(pl.FrameError) as err:
            p.process_frame(*args, 1.0)
        assert err.value.reason == reason
    assert len(p.memory) == 0
    # Depth outside [min_depth_m, max_depth_m] counts as invalid, too.
    with pytest.raises(pl.FrameError, match="valid depth"):
        p.process_frame(rgb, np.full_like(depth, 50.0), K, _pose(0), 1.0)


def test_query_codes(bundle) -> None:  # type: ignore[no-untyped-def]
    p = _pipeline(bundle)
    assert p.ground("mug").code == pl.EMPTY_MEMORY
    assert p.ground("  ").code == pl.BAD_QUERY
    assert "limit" in p.ground("x" * 1000).message
    rgb, depth = _frame()
    p.process_frame(rgb, depth, K, _pose(0.0), 1.0)
    out = p.ground("a red mug", cancel=lambda: True)
    assert out.code == pl.CANCELED
    stages: list[str] = []
    out = p.ground("a red mug", on_stage=lambda s, _p: stages.append(s))
    assert out.code in (pl.OK, pl.NO_MATCH) and out.memory_voxels == len(p.memory)
    # Objects first; this random tiny model matches no instance, so voxels are tried.
    assert stages[0] == "ranking_objects" and stages[1:3] == ["encoding_text", "scoring"]
    assert p.ask_open("What is here?").code == pl.MODEL_UNAVAILABLE


def test_describe_region(bundle) -> None:  # type: ignore[no-untyped-def]
    p = _pipeline(bundle)
    assert p.describe_region(np.zeros(3), np.zeros(3))[0] == pl.EMPTY_MEMORY
    rgb, depth = _frame()
    p.process_frame(rgb, depth, K, _pose(0.0), 1.0)
    # The camera looks along optical z = map z (identity rotation): the wall is at z = 2.
    code, caption, boxes = p.describe_region(np.array([0.0, 0.0, 2.0]), np.array([4.0, 4.0, 0.5]))
    assert code == pl.OK and "region" in caption and boxes[0].num_voxels > 0
    assert abs(boxes[0].center[2] - 2.0) < 0.1
    code, caption, _ = p.describe_region(np.array([9.0, 9.0, 9.0]), np.zeros(3))
    assert code == pl.NO_MATCH and "nothing" in caption


def test_snapshot_round_trip_and_mismatch(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = _pipeline(bundle)
    rgb, depth = _frame()
    p.process_frame(rgb, depth, K, _pose(0.0), 1.0)
    n = len(p.memory)
    path = str(tmp_path / "m.safetensors")
    p.save(path)
    assert p.clear() == n and len(p.memory) == 0
    assert p.load(path) == n
    other = pl.VoxelPatchMemory({"vision": 7}, voxel_size=0.1)
    other.save(str(tmp_path / "o.safetensors"))
    with pytest.raises(pl.SnapshotError, match="do not match"):
        p.load(str(tmp_path / "o.safetensors"))
    # The node's configuration wins: another voxel size or more voxels than allowed is
    # refused (a crafted header asking for 5e7 voxels allocates nothing).
    coarse = pl.VoxelPatchMemory(p.memory.feature_dims, voxel_size=0.2, max_voxels=10)
    coarse.save(str(tmp_path / "c.safetensors"))
    with pytest.raises(pl.SnapshotError, match="voxel_size"):
        p.load(str(tmp_path / "c.safetensors"))
    small = _pipeline(bundle, max_voxels=5)
    with pytest.raises(pl.SnapshotError, match="max_voxels"):
        small.load(path)
    assert len(p.memory) == n  # unchanged


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="memmory"):
        pl.PipelineConfig.from_dict({"memmory": {}})
    with pytest.raises(ValueError, match="voxel_sise"):
        pl.PipelineConfig.from_dict({"memory": {"voxel_sise": 1}})
    with pytest.raises(ValueError, match="max_voxels"):
        pl.PipelineConfig.from_dict({"memory": {"max_voxels": "many"}})


def test_a_count_is_never_below_what_ground_finds(bundle, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Counting: "How many ramekins?" answered 0 while "the ramekin" got a box: counting
    asks for a higher score (count_min_score) than grounding (min_score). The best
    instance that grounding would return is counted."""
    from types import SimpleNamespace

    p = _pipeline(bundle)
    if p.vocabulary is None:
        p.vocabulary = object()  # type: ignore[assignment]  # ranking is replaced below
    og = p.config.object_grounding
    assert og.min_score < og.count_min_score
    ranked: list[SimpleNamespace] = []
    monkeypatch.setattr(pl, "rank_instances", lambda *_a, **_k: ranked)

    def rows() -> list[int]:
        return p._instance_rows("ramekin", None, None, og.count_min_score, og.min_score)  # type: ignore[arg-type]

    ranked[:] = [
        SimpleNamespace(index=3, score=og.min_score + 0.01),
        SimpleNamespace(index=1, score=og.min_score / 2),
    ]
    assert rows() == [3]  # what ground returns is counted once
    assert p._instance_rows("ramekin", None, None, og.count_min_score) == []  # type: ignore[arg-type]
    ranked[0].score = og.min_score * 0.9
    assert rows() == []  # nothing ground would return: zero
    ranked[:] = [SimpleNamespace(index=i, score=s) for i, s in ((5, 0.9), (2, 0.6), (7, 0.3))]
    assert rows() == [5, 2]  # above the count threshold: only those


def test_open_questions_get_the_scene_frame_and_the_object_list(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Plumbing only (a tiny random LLaVA-3D): the pipeline fits the scene frame to the
    pooled tokens and, with lmm.object_context, puts the object list (scene-frame
    centres, no brackets: they would be clicks) in front of the question."""
    from dataclasses import replace

    from llava3d_ros.core.lmm import Llava3DChat, load_llava3d
    from llava3d_ros.core.objects.instances import ObjectInstance, ObjectSnapshot
    from llava3d_ros.core.objects.labels import TopLabels
    from llava3d_ros.core.spatial import Box3D
    from tests.lmm_fixtures import make_tiny_checkpoint

    dim = bundle.image.feature_dims["vision"]
    chat = Llava3DChat(
        *load_llava3d(make_tiny_checkpoint(tmp_path / "lmm", mm_hidden_size=dim), device="cpu")
    )
    cfg = pl.PipelineConfig.from_dict(
        {
            "memory": {"voxel_size": 0.1},
            "keyframes": {"max_interval_s": 0.0},
            "lmm": {"object_context": 5, "max_new_tokens": 2},
        }
    )
    p = pl.ScenePipeline(cfg, bundle, lmm=chat)
    rgb, depth = _frame()
    p.process_frame(rgb, depth, K, _pose(100.0), 1.0)  # a map origin 100 m away
    mug = ObjectInstance(
        id=1,
        role="object",
        box=Box3D(np.array([100.2, 0.1, 2.0]), np.array([0.1, 0.1, 0.12])),
        aabb=Box3D(np.array([100.2, 0.1, 2.0]), np.array([0.1, 0.1, 0.12])),
        points=np.zeros((1, 3), np.float32),
        colors=np.zeros((1, 3), np.float32),
        support_id=0,
        colour="red",
        colour_fractions={},
        labels=TopLabels(("mug",), (0.9,)),
        first_seen=1.0,
        last_seen=1.0,
        observations=1,
        has_feature=True,
    )
    unseen = replace(mug, id=2, labels=TopLabels((), ()), has_feature=False)
    assert p.objects is not None
    p.objects.snapshot = lambda: ObjectSnapshot(instances=(mug, unseen))  # type: ignore[method-assign]
    seen: dict[str, object] = {}
    answer = chat.answer

    def recording(question: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.update(question=question, frame=kwargs.get("frame"))
        return answer(question, *args, **kwargs)  # type: ignore[arg-type]

    chat.answer = recording  # type: ignore[method-assign]
    out = p.ask_open("What is on the table?")
    assert out.code == pl.OK and "scene_frame" in out.timings
    frame = seen["frame"]
    assert frame is not None
    centre = frame.to_scene(np.array([[100.2, 0.1, 2.0]]))[0]  # type: ignore[attr-defined]
    assert abs(centre[0]) < 5.0  # the 100 m are gone
    question = str(seen["question"])
    first, rest = question.split("\n", 1)
    assert rest == "What is on the table?"
    assert first.startswith("Objects in the scene") and "[" not in first
    assert f"mug at ({centre[0]:.2f}, {centre[1]:.2f}, {centre[2]:.2f})" in first
    assert first.count(" at (") == 1  # the unlabelled instance is left out
