"""LLaVA-3D language-model tier on tiny random checkpoints written in the official layout.

Every model here is loaded from disk through ``load_llava3d`` (the path a real checkpoint
takes); references are computed independently from the raw safetensors tensors with
plain torch ops and a bare ``LlamaForCausalLM`` run without a KV cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from llava3d_ros.core.lmm import (
    DEFAULT_DESCRIBE_QUESTION,
    IMAGE_TOKEN_INDEX,
    LOC_TOKEN_INDEX,
    SYSTEM_PROMPT_V1,
    SYSTEM_PROMPT_VICUNA_V1,
    CheckpointError,
    Llava3DChat,
    LlavaConfigError,
    LmmError,
    build_prompt,
    extract_locations,
    farthest_point_indices,
    load_llava3d,
    parse_boxes,
    select_token,
    template_named,
    tokenize_prompt,
    write_official_checkpoint,
)
from tests.lmm_fixtures import make_tiny_checkpoint, make_tiny_model

MM = 32  # tiny "CLIP" width (1024 in the release)
HIDDEN = 64
PE = "model.video_tower.video_tower.positional_embedding.position_embedding_head."
LOC = "model.video_tower.prompt_encoder.pos_emb3d.position_embedding_head."
QUESTION = "What is on the table ?"


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("llava3d") / "tiny",
        seed=0,
        shards=2,
        hidden_size=HIDDEN,
        mm_hidden_size=MM,
    )


@pytest.fixture(scope="module")
def loaded(ckpt: Path):
    return load_llava3d(ckpt, device="cpu")


@pytest.fixture(scope="module")
def chat(loaded) -> Llava3DChat:
    return Llava3DChat(*loaded)


@pytest.fixture(scope="module")
def scene() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(40, 3, generator=g) * 4.0, torch.randn(40, MM, generator=g)


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(ckpt, dst)
    return dst


def _edit_checkpoint(directory: Path, edit) -> None:
    """Apply ``edit(dict)`` to all tensors and write them back as two shards + index."""
    tensors = _tensors(directory)
    edit(tensors)
    for f in directory.glob("*.safetensors"):
        f.unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        file = f"model-{i:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


# -- independent reference ----------------------------------------------------------------


def _ref_mlp3(sd: dict[str, torch.Tensor], prefix: str, xyz: torch.Tensor) -> torch.Tensor:
    h = F.linear(xyz, sd[prefix + "0.weight"], sd[prefix + "0.bias"])
    h = F.layer_norm(h, (h.shape[-1],), sd[prefix + "1.weight"], sd[prefix + "1.bias"], 1e-5)
    return F.linear(F.relu(h), sd[prefix + "3.weight"], sd[prefix + "3.bias"])


def _ref_scene(sd: dict[str, torch.Tensor], pos: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    x = feat + _ref_mlp3(sd, PE, pos)
    x = F.linear(x, sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"])
    return F.linear(F.gelu(x), sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"])


def _ref_llm(ckpt: Path, sd: dict[str, torch.Tensor]):
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = json.loads((ckpt / "config.json").read_text())
    llama_keys = {
        k: v
        for k, v in raw.items()
        if not k.startswith("mm_") and k not in ("model_type", "architectures")
    }
    llm = LlamaForCausalLM(LlamaConfig.from_dict(llama_keys)).eval()
    llm.load_state_dict(
        {
            k: v
            for k, v in sd.items()
            if k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head."))
        },
        strict=True,
    )
    return llm


def _ref_greedy(llm, embeds: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding by full recomputation (no KV cache), EOS not special."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = llm(inputs_embeds=embeds).logits[0, -1]
            tok = int(torch.argmax(logits))
            out.append(tok)
            nxt = llm.get_input_embeddings()(torch.tensor([tok]))[None]
            embeds = torch.cat([embeds, nxt], 1)
    return out


# -- checkpoint layout and loading -------------------------------------------------------


def test_config_json_has_official_keys(ckpt: Path) -> None:
    raw = json.loads((ckpt / "config.json").read_text())
    assert raw["model_type"] == "llava_llama"
    assert raw["architectures"] == ["LlavaLlamaForCausalLM"]
    assert "auto_map" not in raw
    assert raw["mm_video_tower"] == "SpatialAwareModule"
    assert raw["mm_projector_type"] == "mlp2x_gelu"
    assert raw["mm_hidden_size"] == MM
    assert raw["mm_vision_select_layer"] == -2
    assert raw["mm_vision_select_feature"] == "patch"
    assert raw["mm_patch_merge_type"] == "flat"
    assert raw["num_frames"] == 20
    assert raw["mm_vision_tower"] == "openai/clip-vit-large-patch14-336"
    assert raw["hidden_size"] == HIDDEN and raw["num_hidden_layers"] == 2


def test_official_names_and_shapes(ckpt: Path) -> None:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert files == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    sd = _tensors(ckpt)
    assert set(sd) == set(index["weight_map"])
    expected = {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.0.bias",
        "model.mm_projector.2.weight",
        "model.mm_projector.2.bias",
    }
    for layer in range(2):
        p = f"model.layers.{layer}."
        expected |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        expected |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    for prefix in (PE, LOC):
        expected |= {prefix + f"{i}.{w}" for i in (0, 1, 3) for w in ("weight", "bias")}
    assert set(sd) == expected
    assert sd[PE + "0.weight"].shape == (MM, 3)
    assert sd[PE + "3.weight"].shape == (MM, MM)
    assert sd[LOC + "0.weight"].shape == (HIDDEN, 3)
    assert sd[LOC + "3.weight"].shape == (HIDDEN, HIDDEN)
    assert sd["model.mm_projector.0.weight"].shape == (HIDDEN, MM)
    assert sd["model.mm_projector.2.weight"].shape == (HIDDEN, HIDDEN)
    assert not any("bias" in k for k in sd if k.startswith(("lm_head", "model.layers")))


def test_round_trip_weights_equal(ckpt: Path, loaded) -> None:
    model, _ = loaded
    on_disk = _tensors(ckpt)
    in_model = model.official_state_dict()
    assert set(on_disk) == set(in_model)
    for name, t in on_disk.items():
        assert torch.equal(in_model[name], t), name
    # ... and equal to the model the checkpoint was written from.
    src = make_tiny_model(len(loaded[1]), seed=0, std=0.2, hidden_size=HIDDEN, mm_hidden_size=MM)
    for name, t in src.official_state_dict().items():
        assert torch.equal(in_model[name], t), name
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert not any(p.requires_grad for p in model.parameters())


def test_single_file_checkpoint_and_rewrite(loaded, tmp_path: Path) -> None:
    model, tok = loaded
    out = write_official_checkpoint(model, tok, tmp_path / "one", shards=1)
    assert (out / "model.safetensors").is_file()
    assert not (out / "model.safetensors.index.json").exists()
    again, _ = load_llava3d(out, device="cpu")
    for name, t in model.official_state_dict().items():
        assert torch.equal(again.official_state_dict()[name], t)
    # Rewriting as 3 shards replaces the single file.
    write_official_checkpoint(again, tok, out, shards=3)
    assert not (out / "model.safetensors").exists()
    assert len(list(out.glob("model-*-of-00003.safetensors"))) == 3


def test_dtype_option_and_memory_log(ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llava3d_ros.core.lmm"):
        model, _ = load_llava3d(ckpt, device="cpu", dtype="bf16", max_scene_tokens=100)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    msg = "\n".join(r.getMessage() for r in caplog.records)
    assert "parameters" in msg and "KV cache" in msg and "bfloat16" in msg


def test_tied_embeddings_and_gqa(tmp_path: Path) -> None:
    d = make_tiny_checkpoint(
        tmp_path / "tied",
        tie_word_embeddings=True,
        num_kv_heads=2,
        hidden_size=HIDDEN,
        mm_hidden_size=MM,
    )
    assert "lm_head.weight" not in _tensors(d)
    model, tok = load_llava3d(d, device="cpu")
    assert model.llm.lm_head.weight.data_ptr() == model.llm.model.embed_tokens.weight.data_ptr()
    g = torch.Generator().manual_seed(0)
    ans = Llava3DChat(model, tok).answer(
        QUESTION,
        torch.rand(5, 3, generator=g),
        torch.randn(5, MM, generator=g),
        max_new_tokens=3,
        ignore_eos=True,
    )
    assert ans.num_tokens == 3


# -- clear errors ---------------------------------------------------------------------------


def test_missing_key_is_reported(ckpt: Path, tmp_path: Path) -> None:
    d = _copy(ckpt, tmp_path)
    _edit_checkpoint(d, lambda t: t.pop(PE + "3.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\)") as err:
        load_llava3d(d, device="cpu")
    assert PE + "3.bias" in str(err.value)


def test_unexpected_key_and_shape_mismatch_reported_together(ckpt: Path, tmp_path: Path) -> None:
    d = _copy(ckpt, tmp_path)
    bad = "model.mm_projector.2.weight"

    def edit(t: dict[str, torch.Tensor]) -> None:
        t["model.foo.weight"] = torch.zeros(2)
        t[bad] = torch.zeros(HIDDEN, HIDDEN + 1)
        t.pop("model.layers.1.mlp.up_proj.weight")

    _edit_checkpoint(d, edit)
    with pytest.raises(CheckpointError) as err:
        load_llava3d(d, device="cpu")
    msg = str(err.value)
    assert "missing keys (1): model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected keys (1): model.foo.weight" in msg
    assert (
        f"shape mismatches (1): {bad}: checkpoint [{HIDDEN}, {HIDDEN + 1}] vs model "
        f"[{HIDDEN}, {HIDDEN}]" in msg
    )


def test_known_extra_tensors_are_skipped(ckpt: Path, tmp_path: Path) -> None:
    """CLIP weights (loaded separately) and old rotary caches are not errors."""
    d = _copy(ckpt, tmp_path)

    def edit(t: dict[str, torch.Tensor]) -> None:
        t["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = torch.ones(4)
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)

    _edit_checkpoint(d, edit)
    model, _ = load_llava3d(d, device="cpu")
    assert "model.vision_tower" not in " ".join(model.official_parameters())


def test_wrong_model_type_rejected(ckpt: Path, tmp_path: Path) -> None:
    d = _copy(ckpt, tmp_path)
    raw = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**raw, "model_type": "llama"}))
    with pytest.raises(LlavaConfigError, match="plain Llama checkpoint"):
        load_llava3d(d, device="cpu")
    # A config without the video tower over LLaVA-3D weights: config and weights disagree.
    no_3d = {k: v for k, v in raw.items() if k != "mm_video_tower"}
    (d / "config.json").write_text(json.dumps(no_3d))
    with pytest.raises(CheckpointError, match=r"no mm_video_tower.*do not match"):
        load_llava3d(d, device="cpu")
    (d / "config.json").write_text(json.dumps({**raw, "mm_projector_type": "qformer"}))
    with pytest.raises(LlavaConfigError, match="mm_projector_type"):
        load_llava3d(d, device="cpu")


def test_missing_files_reported(ckpt: Path, tmp_path: Path) -> None:
    d = _copy(ckpt, tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors"):
        load_llava3d(d, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_llava3d(tmp_path / "nowhere", device="cpu")
    # A repo id that is not in the local cache never goes to the network.
    with pytest.raises(CheckpointError, match="allow_network"):
        load_llava3d("nobody-here/llava-3d-missing", device="cpu")


# -- prompts ----------------------------------------------------------------------------------


def test_v1_prompts_exact() -> None:
    """Default: vicuna_v1, the template LLaVA-3D was trained with ("curious user");
    llava_v1 ("curious human", LLaVA's inference scripts) by name."""
    assert SYSTEM_PROMPT_VICUNA_V1 == (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    p = build_prompt("What is this?")
    assert p.text == (f"{SYSTEM_PROMPT_VICUNA_V1} USER: <image>\nWhat is this? ASSISTANT:")
    assert p.locations == ()
    multi = build_prompt("And now?", history=[("What is this?", "A chair.")])
    assert multi.text == (
        f"{SYSTEM_PROMPT_VICUNA_V1} USER: <image>\nWhat is this? ASSISTANT: "
        "A chair.</s>USER: And now? ASSISTANT:"
    )
    human = build_prompt("What is this?", template=template_named("llava_v1"))
    assert human.text == (f"{SYSTEM_PROMPT_V1} USER: <image>\nWhat is this? ASSISTANT:")
    with pytest.raises(LmmError, match="unknown conversation template"):
        template_named("chatml")


def test_describe_prompt_is_the_released_wording() -> None:
    assert DEFAULT_DESCRIBE_QUESTION == (
        "The related object is located at <boxes>. Describe the object in detail."
    )


def test_location_prompts() -> None:
    text, pts = extract_locations("Compare [1, 2.5, -0.25] and [0.1,0.2,0.3,1,1,1] ok")
    assert text == "Compare <boxes> and <boxes> ok"
    assert pts == [(1.0, 2.5, -0.25), (0.1, 0.2, 0.3)]
    p = build_prompt("What is at <boxes> next to [3,2,1] ?", location=(0.12345, 1, 2))
    assert p.locations == ((0.123, 1.0, 2.0), (3.0, 2.0, 1.0))  # text order, 1 mm rounding
    assert p.text.count("<boxes>") == 2
    with pytest.raises(LmmError, match="location slot"):
        build_prompt("What is here?", location=(1, 2, 3))
    with pytest.raises(LmmError, match="finite"):
        build_prompt("at <boxes>", location=(1, float("nan"), 3))


def test_tokenize_prompt_placeholders(chat: Llava3DChat) -> None:
    tok = chat.tokenizer
    p = build_prompt("What is at [1,2,3] ?")
    ids = tokenize_prompt(tok, p.text)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids.count(LOC_TOKEN_INDEX) == 1
    head = tok(f"{SYSTEM_PROMPT_VICUNA_V1} USER:", add_special_tokens=False)["input_ids"]
    assert ids[1 : 1 + len(head)] == head and ids[1 + len(head)] == IMAGE_TOKEN_INDEX
    assert ids.index(LOC_TOKEN_INDEX) > ids.index(IMAGE_TOKEN_INDEX)


def test_parse_boxes() -> None:
    text = (
        "The chair is at [1.0, 2.0, 0.5, 0.4, 0.4, 0.9] and the table at "
        "[-1,2e0,+.5,1.5,0.8,0.75]; a point [1,2,3], bad [1,2,3,-1,1,1], [1,2,3,4,5]"
    )
    boxes = parse_boxes(text)
    assert len(boxes) == 2
    assert boxes[0].center == (1.0, 2.0, 0.5) and boxes[0].size == (0.4, 0.4, 0.9)
    assert boxes[1].center == (-1.0, 2.0, 0.5) and boxes[1].size == (1.5, 0.8, 0.75)
    assert text[boxes[0].start : boxes[0].end] == "[1.0, 2.0, 0.5, 0.4, 0.4, 0.9]"
    assert boxes[0].min_corner == pytest.approx((0.8, 1.8, 0.05))
    assert boxes[0].max_corner == pytest.approx((1.2, 2.2, 0.95))
    assert parse_boxes("no boxes here") == []


# -- inputs ------------------------------------------------------------------------------------


def test_inputs_embeds_layout(chat: Llava3DChat, ckpt: Path, scene) -> None:
    pos, feat = scene
    sd = _tensors(ckpt)
    prep = chat.prepare("What is at [1.0, 2.0, 0.5] ?", pos, feat)
    ids = prep.input_ids
    i_img, i_loc = ids.index(IMAGE_TOKEN_INDEX), ids.index(LOC_TOKEN_INDEX)
    emb = prep.inputs_embeds[0]
    t = pos.shape[0]
    assert emb.shape == (len(ids) - 1 + t, HIDDEN)
    assert prep.scene_tokens == t
    torch.testing.assert_close(emb[i_img : i_img + t], _ref_scene(sd, pos, feat))
    # The location row sits where <boxes> was (shifted by the T-1 extra scene rows) and is
    # the location MLP of the point, without the projector.
    loc_row = emb[i_loc + t - 1]
    torch.testing.assert_close(loc_row, _ref_mlp3(sd, LOC, torch.tensor([1.0, 2.0, 0.5])))
    table = sd["model.embed_tokens.weight"]
    torch.testing.assert_close(emb[:i_img], table[torch.tensor(ids[:i_img])])
    torch.testing.assert_close(
        emb[i_img + t : i_loc + t - 1], table[torch.tensor(ids[i_img + 1 : i_loc])]
    )
    torch.testing.assert_close(emb[i_loc + t :], table[torch.tensor(ids[i_loc + 1 :])])
    # An explicit location into a <boxes> slot gives the same inputs.
    same = chat.prepare("What is at <boxes> ?", pos, feat, location=[1.0, 2.0, 0.5])
    assert torch.equal(same.inputs_embeds, prep.inputs_embeds)


def test_scene_token_cap(ckpt: Path) -> None:
    model, tok = load_llava3d(ckpt, device="cpu", max_scene_tokens=16)
    chat = Llava3DChat(model, tok)
    fed: list[int] = []
    hook = model.mm_projector.register_forward_hook(lambda m, i, o: fed.append(i[0].shape[0]))
    try:
        g = torch.Generator().manual_seed(2)
        pos, feat = torch.rand(50, 3, generator=g) * 5, torch.randn(50, MM, generator=g)
        a = chat.prepare(QUESTION, pos, feat)
        b = chat.prepare(QUESTION, pos, feat)
        ans = chat.answer(QUESTION, pos, feat, max_new_tokens=2)
    finally:
        hook.remove()
    assert fed and max(fed) == 16
    assert a.scene_tokens == 16 and ans.scene_tokens == 16
    assert a.inputs_embeds.shape[1] == len(a.input_ids) - 1 + 16
    assert torch.equal(a.inputs_embeds, b.inputs_embeds)  # deterministic subset


def test_farthest_point_cap_is_spatially_fair() -> None:
    g = torch.Generator().manual_seed(3)
    dense = torch.rand(95, 3, generator=g) * 0.3
    far = torch.rand(5, 3, generator=g) * 0.3 + 10.0
    pts = torch.cat([dense, far])
    keep = farthest_point_indices(pts, 8)
    assert keep.tolist() == sorted(set(keep.tolist())) and len(keep) == 8
    assert (keep >= 95).any() and (keep < 95).any()  # both clusters represented
    assert torch.equal(keep, farthest_point_indices(pts, 8))
    assert torch.equal(farthest_point_indices(pts, 200), torch.arange(100))


def test_bad_scene_inputs(chat: Llava3DChat) -> None:
    with pytest.raises(LmmError, match=rf"\(T, {MM}\)"):
        chat.answer(QUESTION, torch.zeros(4, 3), torch.zeros(4, MM + 1))
    with pytest.raises(LmmError, match="NaN"):
        chat.answer(QUESTION, torch.full((4, 3), float("nan")), torch.zeros(4, MM))
    with pytest.raises(LmmError, match="positions"):
        chat.answer(QUESTION, torch.zeros(4, 3), torch.zeros(5, MM))
    empty = chat.answer(QUESTION, torch.zeros(0, 3), torch.zeros(0, MM), max_new_tokens=2)
    assert empty.scene_tokens == 0


# -- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_greedy_deterministic_and_matches_reference(
    loaded, ckpt: Path, scene, kv_cache: str
) -> None:
    chat = Llava3DChat(*loaded, kv_cache=kv_cache)
    pos, feat = scene
    n = 12
    a = chat.answer(QUESTION, pos, feat, max_new_tokens=n, ignore_eos=True)
    b = chat.answer(QUESTION, pos, feat, max_new_tokens=n, ignore_eos=True)
    assert a.token_ids == b.token_ids and a.text == b.text and a.num_tokens == n
    # Independent path: hand-built ids and embeddings, bare LlamaForCausalLM, no KV cache.
    sd = _tensors(ckpt)
    tok = chat.tokenizer
    before = [tok.bos_token_id] + tok(
        f"{SYSTEM_PROMPT_VICUNA_V1} USER: ", add_special_tokens=False
    )["input_ids"]
    after = tok(f"\n{QUESTION} ASSISTANT:", add_special_tokens=False)["input_ids"]
    table = sd["model.embed_tokens.weight"]
    embeds = torch.cat(
        [table[torch.tensor(before)], _ref_scene(sd, pos, feat), table[torch.tensor(after)]]
    )[None]
    assert a.prompt_tokens == embeds.shape[1]
    ref = _ref_greedy(_ref_llm(ckpt, sd), embeds, n)
    assert a.token_ids == ref
    assert a.text == tok.decode(ref, skip_special_tokens=True).lstrip()
    assert a.prefill_s > 0 and a.decode_tokens_per_s > 0 and not a.cancelled


def test_position_embedding_changes_output(chat: Llava3DChat, scene) -> None:
    pos, feat = scene

    def logits(p: torch.Tensor) -> torch.Tensor:
        prep = chat.prepare(QUESTION, p, feat)
        with torch.no_grad():
            return chat.model.llm(inputs_embeds=prep.inputs_embeds).logits[0, -1]

    base = logits(pos)
    assert torch.equal(base, logits(pos.clone()))
    moved = pos + torch.tensor([1.5, -0.5, 0.25])
    assert not torch.allclose(base, logits(moved), atol=1e-4)


def test_location_changes_output(chat: Llava3DChat, scene) -> None:
    pos, feat = scene

    def run(q: str) -> tuple[torch.Tensor, list[int]]:
        prep = chat.prepare(q, pos, feat)
        with torch.no_grad():
            out = chat.model.llm(inputs_embeds=prep.inputs_embeds).logits[0, -1]
        return out, chat.answer(q, pos, feat, max_new_tokens=8, ignore_eos=True).token_ids

    la, ta = run("What is at [1.0, 2.0, 0.5] ?")
    lb, _ = run("What is at [3.0, 0.0, 1.5] ?")
    assert not torch.allclose(la, lb, atol=1e-4)
    assert run("What is at [1.0, 2.0, 0.5] ?")[1] == ta
    described = chat.describe([1.0, 2.0, 0.5], pos, feat, max_new_tokens=3, ignore_eos=True)
    assert described.num_tokens == 3


def test_streaming_deltas_concatenate(chat: Llava3DChat, scene) -> None:
    pos, feat = scene
    deltas: list[str] = []
    ans = chat.answer(
        QUESTION, pos, feat, max_new_tokens=15, ignore_eos=True, on_text=deltas.append
    )
    assert "".join(deltas) == ans.text
    assert all(deltas) and len(deltas) > 1


def test_cancel_between_tokens(chat: Llava3DChat, scene) -> None:
    pos, feat = scene
    full = chat.answer(QUESTION, pos, feat, max_new_tokens=10, ignore_eos=True)
    for k in (0, 1, 4):
        # Polled once before the prefill, then once before each token: True from the
        # (k + 2)-th poll on means "cancel after k tokens".
        polls = iter(range(1, 100))

        def cancel(k: int = k, polls=polls) -> bool:
            return next(polls) > k + 1

        ans = chat.answer(QUESTION, pos, feat, max_new_tokens=10, ignore_eos=True, cancel=cancel)
        assert ans.cancelled and ans.stop_reason == "cancelled"
        assert ans.num_tokens == k and ans.token_ids == full.token_ids[:k]
    # A threading.Event set from the streaming callback stops right after that token.
    ev = threading.Event()
    seen: list[int] = []

    def on_text(delta: str) -> None:
        seen.append(1)
        ev.set()

    ans = chat.answer(
        QUESTION, pos, feat, max_new_tokens=10, ignore_eos=True, on_text=on_text, cancel=ev
    )
    assert ans.cancelled and len(seen) == 1
    assert 1 <= ans.num_tokens < 10 and ans.token_ids == full.token_ids[: ans.num_tokens]
    # Already cancelled: nothing runs.
    done = chat.answer(QUESTION, pos, feat, cancel=ev)
    assert done.cancelled and done.num_tokens == 0 and done.prefill_s == 0.0


def test_stop_strings(chat: Llava3DChat, scene) -> None:
    pos, feat = scene
    full = chat.answer(QUESTION, pos, feat, max_new_tokens=15, ignore_eos=True)
    words = full.text.split(" ")
    stop_word = next(w for w in words[2:] if w)  # a word that is not at the start
    cut = full.text.index(" " + stop_word)
    deltas: list[str] = []
    ans = chat.answer(
        QUESTION,
        pos,
        feat,
        max_new_tokens=15,
        ignore_eos=True,
        stop=[" " + stop_word, "never-generated"],
        on_text=deltas.append,
    )
    assert ans.stop_reason == "stop_string" and not ans.cancelled
    assert ans.text == full.text[:cut]
    assert "".join(deltas) == ans.text  # the stop string was never streamed
    assert ans.token_ids == full.token_ids[: ans.num_tokens]


def test_eos_and_context_limits(tmp_path: Path) -> None:
    d = make_tiny_checkpoint(
        tmp_path / "short", max_position_embeddings=64, hidden_size=HIDDEN, mm_hidden_size=MM
    )
    model, tok = load_llava3d(d, device="cpu")
    chat = Llava3DChat(model, tok)
    g = torch.Generator().manual_seed(0)
    pos, feat = torch.rand(10, 3, generator=g), torch.randn(10, MM, generator=g)
    ans = chat.answer(QUESTION, pos, feat, max_new_tokens=100, ignore_eos=True)
    assert ans.prompt_tokens + ans.num_tokens == 64  # answer cut to the context
    with pytest.raises(LmmError, match="context"):
        chat.answer(QUESTION, torch.rand(40, 3), torch.randn(40, MM))
    eos_id = torch.tensor([tok.eos_token_id])
    hook = model.llm.lm_head.register_forward_hook(  # make EOS the top choice
        lambda m, i, out: out.index_fill(-1, eos_id, 1e4)
    )
    try:
        eos = chat.answer(QUESTION, pos, feat, max_new_tokens=5)
    finally:
        hook.remove()
    assert eos.stop_reason == "eos" and eos.num_tokens == 0 and eos.text == ""


def test_sampling_is_seeded(chat: Llava3DChat, scene) -> None:
    pos, feat = scene
    kw = dict(max_new_tokens=8, temperature=1.5, top_p=0.95, ignore_eos=True)
    a = chat.answer(QUESTION, pos, feat, seed=3, **kw)
    b = chat.answer(QUESTION, pos, feat, seed=3, **kw)
    assert a.token_ids == b.token_ids
    others = {tuple(chat.answer(QUESTION, pos, feat, seed=s, **kw).token_ids) for s in range(4, 8)}
    assert len(others | {tuple(a.token_ids)}) > 1


def test_select_token() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    assert select_token(logits, 0.0, None, None) == 1
    g = torch.Generator().manual_seed(0)
    # top_p below the top token's probability keeps only the top token.
    assert {select_token(logits, 1.0, 0.01, g) for _ in range(20)} == {1}
    picks = {select_token(logits, 1.0, None, g) for _ in range(200)}
    assert {1, 2} <= picks


def test_chat_load_convenience(ckpt: Path, scene) -> None:
    chat = Llava3DChat.load(ckpt, device="cpu", kv_cache="dynamic", max_scene_tokens=8)
    pos, feat = scene
    assert chat.answer(QUESTION, pos, feat, max_new_tokens=1, ignore_eos=True).scene_tokens == 8
    with pytest.raises(ValueError, match="kv_cache"):
        Llava3DChat(chat.model, chat.tokenizer, kv_cache="paged")
