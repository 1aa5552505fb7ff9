"""The view tier: LLaVA-1.5-family checkpoints (Spatial-LLaVA's layout) loaded through the
real loader, the official image preprocessing and prompt splicing, streaming, cancel,
family mismatches, and the keyframe ring a view question picks its image from.

Every model is a tiny random one written to disk in the official layout; references are
written from the official definitions (LLaVA's ``expand2square``, ``tokenizer_image_token``,
``encode_images``) with plain PIL / torch / transformers calls, not with this package.
"""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.lmm import (
    FAMILY_2D,
    FAMILY_3D,
    IMAGE_TOKEN_INDEX,
    SYSTEM_PROMPT_V1,
    CheckpointError,
    Llava2DChat,
    Llava2DModel,
    Llava3DModel,
    LlavaConfigError,
    LmmError,
    ViewAnswerer,
    background_colour,
    expand_to_square,
    load_llava,
    load_llava2d,
    load_llava3d,
    load_tokenizer,
)
from llava3d_ros.core.lmm.view import check_view_tower, load_view_tower, parse_image_boxes
from llava3d_ros.core.views import ViewRing
from tests.lmm_fixtures import (
    make_sentencepiece_tokenizer,
    make_tiny_checkpoint,
    make_tiny_checkpoint_2d,
    to_pytorch_bin,
)
from tests.model_fixtures import CLIP_WIDTH, make_tiny_clip, make_tiny_view_lmm

QUESTION = "Is the cup left of the laptop?"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("view")
    clip = make_tiny_clip(root / "clip")
    return {
        "clip": clip,
        "view": make_tiny_view_lmm(root / "view", clip),
        "3d": make_tiny_checkpoint(root / "3d", mm_hidden_size=CLIP_WIDTH),
    }


@pytest.fixture(scope="module")
def answerer(models: dict[str, Path]) -> ViewAnswerer:
    return ViewAnswerer.load(models["view"], device="cpu")


def _frame(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- loading and families ---------------------------------------------------------------------


def test_a_llava15_checkpoint_loads_by_the_official_names(models: dict[str, Path]) -> None:
    model, _ = load_llava2d(models["view"], device="cpu")
    assert isinstance(model, Llava2DModel) and model.family == FAMILY_2D
    raw = json.loads((models["view"] / "config.json").read_text())
    assert "mm_video_tower" not in raw and raw["image_aspect_ratio"] == "pad"
    assert raw["mm_use_im_patch_token"] is False  # extra keys written back as read
    on_disk: dict[str, torch.Tensor] = {}
    for shard in models["view"].glob("*.safetensors"):
        on_disk.update(load_file(str(shard)))
    assert set(on_disk) == set(model.official_parameters())
    assert {n for n in on_disk if "mm_projector" in n} == {
        f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    for name, param in model.official_parameters().items():
        torch.testing.assert_close(param, on_disk[name], rtol=0, atol=0)
    either, _ = load_llava(models["view"], device="cpu")
    assert isinstance(either, Llava2DModel)
    assert isinstance(load_llava(models["3d"], device="cpu")[0], Llava3DModel)


def test_pytorch_bin_shards_load_like_the_safetensors_ones(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """LLaVA-1.5's release: pytorch_model-*.bin + index, with a copy of CLIP inside."""
    import shutil

    d = tmp_path / "bin"
    shutil.copytree(models["view"], d)
    tower = "model.vision_tower.vision_tower.vision_model."
    clip_copy = {tower + "post_layernorm.weight": torch.ones(4)}
    to_pytorch_bin(d, clip_copy)
    assert not list(d.glob("*.safetensors"))
    a, _ = load_llava2d(models["view"], device="cpu")
    b, _ = load_llava2d(d, device="cpu")
    pa, pb = a.official_parameters(), b.official_parameters()
    assert set(pa) == set(pb)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=0, atol=0)


def test_hostile_bin_files_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "bin"
    shutil.copytree(models["view"], d)
    to_pytorch_bin(d)
    index = json.loads((d / "pytorch_model.bin.index.json").read_text())
    # An index pointing outside the directory.
    bad = {**index, "weight_map": {k: "../../etc/passwd" for k in index["weight_map"]}}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        load_llava2d(d, device="cpu")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    # A pickle that would run code on load: the safe unpickler refuses it.
    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    shard = sorted(d.glob("*.bin"))[0]
    shard.write_bytes(pickle.dumps({"model.embed_tokens.weight": Boom()}, protocol=2))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_llava2d(d, device="cpu")


def test_each_family_refuses_the_other(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"LLaVA-1\.5 family.*view\.checkpoint"):
        load_llava3d(models["view"], device="cpu")
    with pytest.raises(CheckpointError, match=r"LLaVA-3D .*lmm\.checkpoint"):
        load_llava2d(models["3d"], device="cpu")
    # A LLaVA-3D config over 2D weights: the weights lack the 3D modules.
    import shutil

    d = tmp_path / "mixed"
    shutil.copytree(models["view"], d)
    raw = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**raw, "mm_video_tower": "SpatialAwareModule"}))
    with pytest.raises(CheckpointError, match=r"no model\.video_tower"):
        load_llava(d, device="cpu")
    (d / "config.json").write_text(json.dumps({**raw, "mm_video_tower": "SomethingElse"}))
    with pytest.raises(LlavaConfigError, match="mm_video_tower"):
        load_llava(d, device="cpu")
    (d / "config.json").write_text(json.dumps({**raw, "image_aspect_ratio": "anyres"}))
    with pytest.raises(LlavaConfigError, match="anyres"):
        load_llava(d, device="cpu")


# -- image preprocessing ------------------------------------------------------------------------


def _reference_expand2square(img: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """LLaVA's expand2square, from its definition: a new background-filled RGB image with
    the long side as its edge, the image pasted centred ((long - short) // 2)."""
    from PIL import Image

    pil = Image.fromarray(img)
    w, h = pil.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(pil.mode, (side, side), background)
    out.paste(pil, ((side - w) // 2, (side - h) // 2))
    return np.asarray(out)


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (40, 40), (45, 62), (7, 3)])
def test_pad_to_square_is_llava_expand2square(shape: tuple[int, int]) -> None:
    bg = background_colour((0.48145466, 0.4578275, 0.40821073))
    assert bg == (122, 116, 104)  # LLaVA-1.5's padding colour for OpenAI CLIP
    img = _frame(*shape)
    np.testing.assert_array_equal(expand_to_square(img, bg), _reference_expand2square(img, bg))
    with pytest.raises(LmmError, match="uint8"):
        expand_to_square(img.astype(np.float32), bg)


def test_view_pixels_are_the_official_processing_of_the_padded_image(
    answerer: ViewAnswerer,
) -> None:
    from transformers import CLIPImageProcessorPil

    size = answerer.tower.geometry.input_height
    mean = answerer.tower.image_mean
    official = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(mean),
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    )
    for img in (_frame(48, 64), _frame(64, 48, seed=1)):
        padded = _reference_expand2square(img, tuple(int(m * 255) for m in mean))  # type: ignore[arg-type]
        expect = official(images=padded, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(answerer.pixels(img)[0].numpy(), expect, atol=1e-5)


def test_image_features_are_clip_layer_minus_2_without_cls(
    answerer: ViewAnswerer, models: dict[str, Path]
) -> None:
    """LLaVA's encode_images input: hidden_states[-2][:, 1:] of the vision tower."""
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(str(models["clip"])).eval()
    img = _frame()
    with torch.no_grad():
        hs = tower(pixel_values=answerer.pixels(img), output_hidden_states=True).hidden_states
    expect = hs[-2][0, 1:]
    got = answerer.image_features(img)
    assert got.shape == (16, CLIP_WIDTH)  # 56 px / 14 = 4 x 4 patches
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


def test_the_vision_tower_must_give_the_trained_features(
    answerer: ViewAnswerer, models: dict[str, Path]
) -> None:
    config = answerer.chat.model.config
    other_layer = load_view_tower(config, str(models["clip"]), torch.device("cpu"), torch.float32)
    other_layer.select_layer = -1
    with pytest.raises(LlavaConfigError, match="layer"):
        check_view_tower(config, other_layer)
    # Sharing falls back to the model's own tower when the memory's is not the right one.
    shared = ViewAnswerer.load(models["view"], shared_tower=other_layer, device="cpu")
    assert not shared.shared and shared.tower is not other_layer
    same = load_view_tower(config, str(models["clip"]), torch.device("cpu"), torch.float32)
    shared = ViewAnswerer.load(models["view"], shared_tower=same, device="cpu")
    assert shared.shared and shared.tower is same
    wide = load_view_tower(config, str(models["clip"]), torch.device("cpu"), torch.float32)
    wide.feature_dims = {"vision": CLIP_WIDTH + 1}
    with pytest.raises(LlavaConfigError, match="features"):
        check_view_tower(config, wide)


# -- prompts and generation ----------------------------------------------------------------------


def _official_image_prompt_ids(tok, prompt: str) -> list[int]:  # type: ignore[no-untyped-def]
    """LLaVA's tokenizer_image_token from its definition: chunks split at <image>, each
    tokenized with BOS; the first BOS kept, the others cut; -200 between chunks."""
    chunks = [tok(c)["input_ids"] for c in prompt.split("<image>")]
    ids = [chunks[0][0]] if chunks[0] and chunks[0][0] == tok.bos_token_id else []
    cut = len(ids)
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[cut:])
    return ids


def test_prompt_and_splicing_follow_llava15(answerer: ViewAnswerer, tmp_path: Path) -> None:
    chat = answerer.chat
    feats = torch.randn(16, CLIP_WIDTH, generator=torch.Generator().manual_seed(0))
    p = chat.prepare(QUESTION, feats)
    # llava_v1, as LLaVA-1.5's eval scripts build it: image first, then the question.
    assert p.prompt == f"{SYSTEM_PROMPT_V1} USER: <image>\n{QUESTION} ASSISTANT:"
    assert p.input_ids == _official_image_prompt_ids(chat.tokenizer, p.prompt)
    assert p.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    # The image rows are projector(features), the text rows the LLM's embedding table.
    model = chat.model
    at = p.input_ids.index(IMAGE_TOKEN_INDEX)
    with torch.no_grad():
        proj = model.mm_projector(feats)
        table = model.llm.get_input_embeddings().weight
    torch.testing.assert_close(p.inputs_embeds[0, at : at + 16], proj)
    torch.testing.assert_close(p.inputs_embeds[0, at - 1], table[p.input_ids[at - 1]])
    torch.testing.assert_close(p.inputs_embeds[0, at + 16], table[p.input_ids[at + 1]])
    # Coordinates in a 2D question are text: no location slot, no LOC placeholder.
    q = chat.prepare("What is at [1.0,2.0,0.5]?", feats)
    assert min(q.input_ids) == IMAGE_TOKEN_INDEX and q.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    assert "[1.0,2.0,0.5]" in q.prompt
    with pytest.raises(LmmError, match="location"):
        chat.prepare("What is at <boxes>?", feats)


def test_sentencepiece_splicing_matches_the_official_definition(tmp_path: Path) -> None:
    """With LLaVA's real tokenizer kind (SentencePiece, leading-space rules)."""
    sp = make_sentencepiece_tokenizer(tmp_path / "sp")
    tok = load_tokenizer(sp)
    ckpt = make_tiny_checkpoint_2d(tmp_path / "ckpt", tokenizer=tok, mm_hidden_size=8)
    model, tokenizer = load_llava2d(ckpt, device="cpu")
    chat = Llava2DChat(model, tokenizer)
    for q in (QUESTION, "What is on the table? Describe the object in detail."):
        p = chat.prepare(q, torch.zeros(4, 8))
        assert p.input_ids == _official_image_prompt_ids(tokenizer, p.prompt)


def test_answers_stream_and_cancel_between_tokens(answerer: ViewAnswerer) -> None:
    img = _frame()
    streamed: list[str] = []
    ans, encode_s = answerer.answer(QUESTION, img, max_new_tokens=8, on_text=streamed.append)
    assert ans.num_tokens == 8 and "".join(streamed) == ans.text and encode_s > 0
    assert ans.scene_tokens == 16  # image tokens
    again, _ = answerer.answer(QUESTION, img, max_new_tokens=8)
    assert again.token_ids == ans.token_ids  # greedy: the same call, the same tokens
    # Cancel after 3 tokens: exactly 3.
    stop = threading.Event()
    count = [0]

    def on_text(_delta: str) -> None:
        count[0] += 1
        if count[0] == 3:
            stop.set()

    cut, _ = answerer.answer(QUESTION, img, max_new_tokens=50, on_text=on_text, cancel=stop)
    assert cut.cancelled and cut.num_tokens == 3
    assert cut.token_ids == ans.token_ids[:3]


# -- the keyframe ring --------------------------------------------------------------------------


K = CameraIntrinsics(fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)


def _pose(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    """Camera at (x, 0, 0) looking along +z of the map, turned by yaw about the map y."""
    a = np.radians(yaw_deg)
    t = np.eye(4)
    t[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    t[0, 3] = x
    return t


def test_the_ring_keeps_the_latest_copies_and_finds_the_view_that_faces_a_point() -> None:
    ring = ViewRing(3)
    assert ring.latest() is None and ring.facing(np.zeros(3)) is None
    depth = np.full((48, 64), 5.0, np.float32)
    img = _frame()
    for i, (x, yaw) in enumerate([(0.0, 0.0), (0.0, 20.0), (1.0, -10.0), (3.0, 0.0)]):
        ring.add(1_000 + i, img, depth, K, _pose(x, yaw))
    img[:] = 0  # the ring holds copies
    assert len(ring) == 3 and ring.latest().stamp_ns == 1_003  # type: ignore[union-attr]
    assert ring.latest().rgb.any() and not ring.latest().rgb.flags.writeable  # type: ignore[union-attr]
    point = np.array([1.0, 0.0, 3.0])
    # Views 1 (yaw 20 from x=0), 2 (x=1, yaw -10), 3 (x=3): view 2 is off its axis by 10 deg,
    # view 1 by about 1.6 deg, view 3 by 33.7 deg.
    assert ring.facing(point).stamp_ns == 1_001  # type: ignore[union-attr]
    assert ring.facing(np.array([1.0, 0.0, -3.0])) is None  # behind every camera
    # Nearer depth covers the point in every view: none sees it.
    for v in list(ring._views):
        object.__setattr__(v, "depth_m", np.full((48, 64), 1.0, np.float32))
    assert ring.facing(point) is None
    ring.clear()
    assert ring.latest() is None
    with pytest.raises(ValueError):
        ViewRing(0)


def test_family_constants_are_what_configs_say(answerer: ViewAnswerer) -> None:
    assert answerer.chat.model.config.family == FAMILY_2D
    assert FAMILY_3D != FAMILY_2D
    assert answerer.chat.model.config.pads_to_square


# -- the pipeline ----------------------------------------------------------------------------------


def test_the_pipeline_answers_view_questions_from_its_kept_keyframes(
    models: dict[str, Path],
) -> None:
    from llava3d_ros.core import pipeline as pl
    from llava3d_ros.core.encoders import create_encoders
    from llava3d_ros.core.spatial import Box3D

    bundle = create_encoders({"backend": "hf_clip", "model": str(models["clip"])})
    view = ViewAnswerer.load(models["view"], shared_tower=bundle.image, device="cpu")
    assert view.shared  # one CLIP for the memory and the view model
    config = pl.PipelineConfig.from_dict({"objects": {"enabled": False}, "view": {"ring_size": 2}})
    assert pl.ScenePipeline(config, bundle).ask_view("What do you see?").code == (
        pl.MODEL_UNAVAILABLE
    )
    pipe = pl.ScenePipeline(config, bundle, None, view)
    assert view.tower_lock is pipe._encoder_lock  # ingest and view encodes take turns
    assert pipe.ask_view("What do you see?").code == pl.EMPTY_MEMORY
    depth = np.full((48, 64), 2.0, np.float32)
    stamps = [1_700_000_000_123_456_789, 1_700_000_001_123_456_789, 1_700_000_002_987_654_321]
    for i, (stamp, yaw) in enumerate(zip(stamps, (0.0, 30.0, -30.0), strict=True)):
        out = pipe.process_frame(
            _frame(seed=i), depth, K, _pose(0.0, yaw), stamp * 1e-9, force=True, stamp_ns=stamp
        )
        assert out.keyframe == "forced"
    assert len(pipe.views) == 2  # type: ignore[arg-type]

    streamed: list[str] = []
    ans = pipe.ask_view(" What do you see? ", max_new_tokens=5, on_text=streamed.append)
    assert ans.code == pl.OK and ans.num_tokens == 5 and "".join(streamed) == ans.text
    assert ans.view_stamp_ns == stamps[-1]  # exact: not rounded through float seconds
    assert ans.model == str(models["view"]) and ans.scene_tokens == 16
    assert {"encode", "prefill", "total"} <= set(ans.timings)
    # The answer is the model's answer about that keyframe's image.
    direct, _ = view.answer("What do you see?", _frame(seed=2), max_new_tokens=5)
    assert direct.text == ans.text
    assert pipe.ask_view("   ").code == pl.BAD_QUERY

    # frame_choice "facing": the kept keyframe that sees the grounded object squarely.
    facing = pl.ScenePipeline(
        pl.PipelineConfig.from_dict(
            {"objects": {"enabled": False}, "view": {"frame_choice": "facing"}}
        ),
        bundle,
        None,
        view,
    )
    wall = np.full((48, 64), 3.0, np.float32)  # behind the mug in every view
    for i, (stamp, yaw) in enumerate(zip(stamps, (0.0, 30.0, -30.0), strict=True)):
        facing.process_frame(
            _frame(seed=i), wall, K, _pose(0.0, yaw), stamp * 1e-9, force=True, stamp_ns=stamp
        )
    # 31 deg right of the first view's axis (still in it), 1 deg off the second's.
    mug = Box3D(np.array([1.2, 0.0, 2.0]), np.full(3, 0.1), 0.0, "mug", 0.9)
    facing.ground = lambda *a, **k: pl.GroundOutcome(pl.OK, "", [mug], 1)  # type: ignore[method-assign]
    out = facing.ask_view("What colour is the mug?", max_new_tokens=1)
    assert out.view_stamp_ns == stamps[1] and out.message == ""
    facing.ground = lambda *a, **k: pl.GroundOutcome(pl.NO_MATCH, "", [], 1)  # type: ignore[method-assign]
    out = facing.ask_view("What colour is the mug?", max_new_tokens=1)
    assert out.view_stamp_ns == stamps[-1] and "latest" in out.message
    facing.clear()
    assert facing.ask_view("What do you see?").code == pl.EMPTY_MEMORY


# -- 2D boxes in view answers, lifted to 3D ---------------------------------------------------


def test_normalised_2d_boxes_are_read_from_answers() -> None:
    text = "The mug [0.1, 0.2, 0.5,0.6] and the cup [.5,.5,.9,1]; not [0.5,0.5,0.2,0.9]"
    assert parse_image_boxes(text) == [(0.1, 0.2, 0.5, 0.6), (0.5, 0.5, 0.9, 1.0)]
    assert parse_image_boxes("[1, 2, 3, 4] [0.1,0.2,0.3,0.4,0.5,0.6] [0.1, 0.2, 0.3]") == []


def test_boxes_of_the_square_map_back_to_frame_pixels(answerer: ViewAnswerer) -> None:
    # Padded (LLaVA-1.5): a 64 x 48 frame sits 8 px down in a 64 x 64 square.
    assert answerer.to_pixels((0.0, 0.0, 1.0, 1.0), 48, 64) == (0.0, -8.0, 64.0, 56.0)
    assert answerer.to_pixels((0.0, 0.125, 1.0, 0.875), 48, 64) == (0.0, 0.0, 64.0, 48.0)
    assert answerer.to_pixels((0.0, 0.0, 1.0, 1.0), 64, 48) == (-8.0, 0.0, 56.0, 64.0)
    # Centre crop (checkpoints without pad): the square is the frame's middle, columns
    # 8..56 as CLIP's processor cuts them (56 px input).
    config = answerer.chat.model.config
    config.image_aspect_ratio = None
    try:
        assert answerer.to_pixels((0.0, 0.0, 1.0, 1.0), 48, 64) == (8.0, 0.0, 56.0, 48.0)
    finally:
        config.image_aspect_ratio = "pad"


def _block_view(ring: ViewRing, t_map_camera: np.ndarray) -> None:
    depth = np.full((48, 64), 3.0, np.float32)  # a wall at 3 m
    depth[10:30, 20:40] = 1.0  # a block 1 m in front of the camera
    depth[10:12, 20:22] = np.nan
    ring.add(5, _frame(), depth, K, t_map_camera)


def test_a_2d_box_lifts_to_the_surface_it_frames_not_the_wall_behind() -> None:
    ring = ViewRing(1)
    pose = np.eye(4)
    pose[:3, 3] = [10.0, 0.0, 0.0]  # the map is not the camera frame
    _block_view(ring, pose)
    view = ring.latest()
    assert view is not None
    box = view.lift_box((15.0, 5.0, 45.0, 35.0), "mug")  # the block plus wall around it
    assert box is not None and box.label == "mug" and box.num_voxels == 20 * 20 - 4
    # The block spans columns 20..39 at 1 m: x from (20 - 32) / 50 to (39 - 32) / 50.
    np.testing.assert_allclose(
        box.center, [10.0 + (-0.24 + 0.14) / 2, (-0.28 + 0.1) / 2, 1.0], atol=0.02
    )
    assert abs(box.size[0] - 0.38) < 0.03 and box.size[2] < 1e-6
    assert view.lift_box((70.0, 0.0, 80.0, 10.0)) is None  # outside the image
    assert view.lift_box((20.0, 10.0, 22.0, 12.0)) is None  # no depth there


def test_view_answers_carry_their_boxes_in_3d(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llava3d_ros.core import pipeline as pl
    from llava3d_ros.core.encoders import create_encoders
    from llava3d_ros.core.lmm import LmmAnswer

    bundle = create_encoders({"backend": "hf_clip", "model": str(models["clip"])})
    view = ViewAnswerer.load(models["view"], shared_tower=bundle.image, device="cpu")
    pipe = pl.ScenePipeline(
        pl.PipelineConfig.from_dict({"objects": {"enabled": False}}), bundle, None, view
    )
    depth = np.full((48, 64), 3.0, np.float32)
    depth[10:30, 20:40] = 1.0
    pipe.process_frame(_frame(), depth, K, np.eye(4), 1.0, force=True)
    # The block in the square the model saw: columns 20..40 of 64, rows 8 + 10..30.
    said = "The mug is at [0.3125, 0.28125, 0.625, 0.59375]."
    monkeypatch.setattr(
        view.chat, "answer", lambda *a, **k: LmmAnswer(said, [], 9, 0.0, 0.0, False)
    )
    out = pipe.ask_view("Where is the mug in this image?")
    assert out.code == pl.OK and out.text == said and len(out.boxes) == 1
    assert abs(out.boxes[0].center[2] - 1.0) < 1e-6 and out.boxes[0].label == "answer"
