"""hf_clip backend on a tiny randomly initialised CLIP saved to disk with save_pretrained
and loaded through the same loader as a real checkpoint (no real CLIP is available offline).

What is checked: shapes, "vision" == hidden_states[select_layer] without CLS from an
independent plain forward, MaskCLIP / ClearCLIP dense features == hand computations from
the layer weights, unit norm, determinism, batching, text templates, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from llava3d_ros.core.encoders import GROUND, VISION, EncoderError, create_encoders, hf_clip
from tests.model_fixtures import check_graph_outputs_survive

pytest.importorskip("transformers")

MEAN = [0.5, 0.4, 0.3]  # deliberately not CLIP's: proves preprocessor_config.json is read
STD = [0.2, 0.25, 0.3]
GRID = 4  # 56 px / 14


def _tiny_tokenizer(tmp: Path):  # type: ignore[no-untyped-def]
    """A CLIP BPE tokenizer over single characters, built from files (no network)."""
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for ch in "abcdefghijklmnopqrstuvwxyz.,'":
        tokens += [ch, ch + "</w>"]
    # A few merged tokens, so BPE merges are exercised too.
    tokens += ["th", "the</w>", "ph", "pho", "phot", "photo</w>"]
    merges = ["#version: 0.2", "t h", "th e</w>", "p h", "ph o", "pho t", "phot o</w>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}  # ids must be unique and dense
    assert len(vocab) == len(tokens)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("\n".join(merges) + "\n")
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "unk_token": "<|endoftext|>",
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 77,
            }
        )
    )
    return CLIPTokenizer.from_pretrained(str(tmp)), len(vocab)


def _tiny_config(vocab_size: int):  # type: ignore[no-untyped-def]
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 56,
            "patch_size": 14,
        },
        projection_dim=24,
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPModel

    root = tmp_path_factory.mktemp("tiny_clip")
    tokenizer, vocab_size = _tiny_tokenizer(root / "tok_src")
    torch.manual_seed(0)
    model = CLIPModel(_tiny_config(vocab_size))
    with torch.no_grad():  # non-trivial LayerNorm affine params so the hand checks see them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    out = root / "clip"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": MEAN, "image_std": STD, "resample": 3, "crop_size": 56})
    )
    return out


@pytest.fixture(scope="module")
def bundle(tiny_dir: Path):  # type: ignore[no-untyped-def]
    return create_encoders({"backend": "hf_clip", "model": str(tiny_dir), "dense_mode": "maskclip"})


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 7 * i, 70, 3), dtype=np.uint8) for i in range(n)]


def _reference_model(tiny_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(tiny_dir), local_files_only=True).eval()


def test_shapes_dims_geometry(bundle) -> None:  # type: ignore[no-untyped-def]
    image = bundle.image
    assert image.feature_dims == {VISION: 32, GROUND: 24}
    assert image.geometry.grid_height == GRID and image.geometry.input_height == 56
    out = image.encode(_images(2))
    assert out[VISION].shape == (2, GRID, GRID, 32)
    assert out[GROUND].shape == (2, GRID, GRID, 24)
    assert out[VISION].dtype == out[GROUND].dtype == torch.float32
    for t in out.values():
        assert not t.is_inference() and not t.requires_grad
    text = bundle.text.encode_text(["mug"])
    assert not text.is_inference() and not text.requires_grad
    assert bundle.can_ground and bundle.text.dim == 24


def test_preprocessing_is_the_clip_image_processor(bundle, tiny_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The official CLIP processor (what LLaVA-3D was trained with): short side resized,
    centre cropped, the checkpoint's mean/std. Before, 4:3 frames were squashed."""
    from transformers import CLIPImageProcessorPil

    assert bundle.image.geometry.crop == "center"  # do_center_crop absent: CLIP's default
    official = CLIPImageProcessorPil(
        size={"shortest_edge": 56},
        crop_size={"height": 56, "width": 56},
        image_mean=MEAN,
        image_std=STD,
        resample=3,
    )
    for img in [*_images(3), np.ascontiguousarray(_images(1)[0].transpose(1, 0, 2))]:
        ours = bundle.image.preprocess([img])[0].numpy()
        expect = official(images=img, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(ours, expect, atol=1e-5)


def test_preprocessing_without_crop_squashes_the_frame(tiny_dir: Path) -> None:
    from PIL import Image

    enc = create_encoders(
        {"backend": "hf_clip", "model": str(tiny_dir), "text": False, "crop": "none"}
    ).image
    assert enc.geometry.crop == "none"
    img = _images(1)[0]
    ours = enc.preprocess([img])[0].numpy()
    resized = np.asarray(Image.fromarray(img).resize((56, 56), resample=Image.BICUBIC))
    expect = ((resized / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(ours, expect, atol=1e-5)
    with pytest.raises(EncoderError, match="crop"):
        create_encoders({"backend": "hf_clip", "model": str(tiny_dir), "crop": "squash"})


def test_patches_lift_onto_the_pixels_they_saw_after_the_crop(bundle) -> None:  # type: ignore[no-untyped-def]
    """A 640x480 frame whose depth changes by column: with the centre crop the first
    patch column sees source columns from 77 on (not 0; the tiny model's 56 px input
    resizes the long side to 74 px and crops from 9), and every patch's 3D point must lie
    on the surface of the pixels it saw."""
    from llava3d_ros.core.geometry import CameraIntrinsics
    from llava3d_ros.core.lifting import lift_patches

    g = bundle.image.geometry
    assert g.source_region(480, 640) == (0, 480, 77, 557)
    # LLaVA-3D's 336 px input: the centred 480x480 square exactly.
    clip336 = type(g)(336, 336, 14, 24, 24, "center")
    assert clip336.source_region(480, 640) == (0, 480, 80, 560)
    assert clip336.source_region(640, 480) == (80, 560, 0, 480)
    depth = np.empty((480, 640), np.float32)
    cols = np.arange(640)
    depth[:] = np.where(cols < 80, 1.0, np.where(cols >= 560, 5.0, 2.0 + cols / 640.0))
    intr = CameraIntrinsics(fx=500.0, fy=500.0, cx=320.0, cy=240.0, width=640, height=480)
    lifted = lift_patches(depth, intr, g)
    assert len(lifted) == g.num_patches
    bounds = g.patch_pixel_bounds(480, 640)
    assert bounds[0, 0, 2] == 77 and bounds[0, -1, 3] == 557
    for k, idx in enumerate(lifted.patch_index):
        r, c = divmod(int(idx), g.grid_width)
        r0, r1, c0, c1 = bounds[r, c]
        z = float(lifted.points[k, 2])
        band = depth[r0:r1, c0:c1]
        assert band.min() - 1e-4 <= z <= band.max() + 1e-4  # on what the patch saw
        u = 500.0 * float(lifted.points[k, 0]) / z + 320.0
        assert c0 - 1 <= u <= c1 + 1


@pytest.mark.parametrize("select_layer", [-2, -1, 1])
def test_vision_equals_plain_hidden_states(tiny_dir: Path, select_layer: int) -> None:
    enc = create_encoders(
        {"backend": "hf_clip", "model": str(tiny_dir), "text": False, "select_layer": select_layer}
    ).image
    images = _images(2)
    pixels = enc.preprocess(images)
    ref = _reference_model(tiny_dir)
    with torch.no_grad():
        hs = ref.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    expect = hs[select_layer][:, 1:, :].reshape(2, GRID, GRID, 32)
    assert torch.allclose(enc.encode(images)[VISION], expect, atol=1e-5)


def _np_layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _hand_dense(tiny_dir: Path, pixels: torch.Tensor, mode: str) -> np.ndarray:
    """Dense feature of every token from the saved weights, in float64 numpy."""
    ref = _reference_model(tiny_dir)
    with torch.no_grad():
        hs = ref.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    x = hs[-2][0].double().numpy()  # input of the last block, (T, D)
    sd = {k: v.double().numpy() for k, v in ref.state_dict().items()}
    pre = "vision_model.encoder.layers.2."
    eps = ref.config.vision_config.layer_norm_eps
    z = _np_layer_norm(x, sd[pre + "layer_norm1.weight"], sd[pre + "layer_norm1.bias"], eps)

    def lin(name: str, u: np.ndarray) -> np.ndarray:
        return u @ sd[pre + f"self_attn.{name}.weight"].T + sd[pre + f"self_attn.{name}.bias"]

    v = lin("v_proj", z)
    if mode == "maskclip":
        o = v
    else:  # clearclip: per-head softmax(q q^T / sqrt(d)) v
        q = lin("q_proj", z)
        heads, d = 4, 8
        o = np.empty_like(v)
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            logits = q[:, sl] @ q[:, sl].T / np.sqrt(d)
            a = np.exp(logits - logits.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            o[:, sl] = a @ v[:, sl]
    y = lin("out_proj", o)
    y = _np_layer_norm(
        y, sd["vision_model.post_layernorm.weight"], sd["vision_model.post_layernorm.bias"], eps
    )
    f = y @ sd["visual_projection.weight"].T
    return f / np.linalg.norm(f, axis=-1, keepdims=True)


@pytest.mark.parametrize("mode", ["maskclip", "clearclip"])
def test_dense_matches_hand_computation(tiny_dir: Path, mode: str) -> None:
    enc = create_encoders(
        {"backend": "hf_clip", "model": str(tiny_dir), "text": False, "dense_mode": mode}
    ).image
    img = _images(1, seed=3)
    got = enc.encode(img)[GROUND][0].numpy()  # (g, g, P)
    want = _hand_dense(tiny_dir, enc.preprocess(img), mode)[1:].reshape(GRID, GRID, -1)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Patch (1, 2) explicitly: token 1 + 1 * GRID + 2 in the sequence.
    np.testing.assert_allclose(got[1, 2], want.reshape(-1, want.shape[-1])[1 * GRID + 2], atol=2e-5)


def test_all_dense_modes_one_pass(bundle) -> None:  # type: ignore[no-untyped-def]
    image = bundle.image
    pixels = image.preprocess(_images(2))
    feats = image.forward_features(pixels, dense_modes=hf_clip.DENSE_MODES)
    assert set(feats) == {VISION} | {f"{GROUND}:{m}" for m in hf_clip.DENSE_MODES}
    for m in hf_clip.DENSE_MODES:
        f = feats[f"{GROUND}:{m}"]
        assert f.shape == (2, GRID, GRID, 24)
        assert torch.allclose(f.norm(dim=-1), torch.ones(2, GRID, GRID), atol=1e-5)
    # The variants really differ, and "raw" is CLIP's own patch-token path.
    assert not torch.allclose(feats[f"{GROUND}:maskclip"], feats[f"{GROUND}:clearclip"])
    ref = image.model
    with torch.no_grad():
        last = ref.vision_model(pixel_values=pixels).last_hidden_state
        raw = ref.visual_projection(ref.vision_model.post_layernorm(last))[:, 1:]
    raw = torch.nn.functional.normalize(raw, dim=-1).reshape(2, GRID, GRID, 24)
    assert torch.allclose(feats[f"{GROUND}:raw"], raw, atol=1e-5)


def test_default_mode_is_clearclip(tiny_dir: Path) -> None:
    enc = create_encoders({"backend": "hf_clip", "model": str(tiny_dir), "text": False}).image
    assert enc.dense_mode == hf_clip.DEFAULT_DENSE_MODE == "clearclip"


def test_deterministic_and_batching(bundle) -> None:  # type: ignore[no-untyped-def]
    image = bundle.image
    images = _images(3, seed=5)
    batch = image.encode(images)
    for kind in (VISION, GROUND):
        singles = torch.cat([image.encode([img])[kind] for img in images])
        assert torch.allclose(batch[kind], singles, atol=1e-5)
        assert torch.equal(batch[kind], image.encode(images)[kind])
    old = image._max_batch
    try:
        image._max_batch = 2  # forces two chunks
        chunked = image.encode(images)
    finally:
        image._max_batch = old
    assert torch.allclose(chunked[GROUND], batch[GROUND], atol=1e-5)


def test_other_input_size_interpolates_positions(tiny_dir: Path) -> None:
    enc = create_encoders(
        {"backend": "hf_clip", "model": str(tiny_dir), "text": False, "input_size": 84}
    ).image
    out = enc.encode(_images(1))
    assert out[VISION].shape == (1, 6, 6, 32) and out[GROUND].shape == (1, 6, 6, 24)
    with pytest.raises(EncoderError, match="multiple"):
        create_encoders({"backend": "hf_clip", "model": str(tiny_dir), "input_size": 50})


def test_bfloat16_runs_and_returns_float32(tiny_dir: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    enc = create_encoders(
        {
            "backend": "hf_clip",
            "model": str(tiny_dir),
            "text": False,
            "dtype": "bfloat16",
            "dense_mode": "maskclip",
        }
    ).image
    images = _images(1)
    out = enc.encode(images)
    assert out[GROUND].dtype == torch.float32
    cos = (out[GROUND] * bundle.image.encode(images)[GROUND]).sum(-1)
    assert float(cos.min()) > 0.95


def test_text_encoder_templates(bundle) -> None:  # type: ignore[no-untyped-def]
    text = bundle.text
    emb = text.encode_text(["red mug", "table"])
    assert emb.shape == (2, 24) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    # Average of the unit-length template embeddings, renormalised.
    per = text.embed_prompts([t.format("red mug") for t in text.templates])
    manual = torch.nn.functional.normalize(per.mean(0), dim=0)
    assert torch.allclose(emb[0], manual, atol=1e-5)
    assert torch.equal(text.encode_text(["red mug"]), text.encode_text(["red mug"]))
    # Independent check of the text path: transformers' own get_text_features.
    tok = text.tokenizer(["a photo of a red mug."], return_tensors="pt")
    with torch.no_grad():
        ref = text.model.get_text_features(**tok)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    ref = torch.nn.functional.normalize(ref, dim=-1)
    assert torch.allclose(text.embed_prompts(["a photo of a red mug."]), ref, atol=1e-5)


def test_text_guards(bundle, tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    for bad in ([""], [" "], "mug", []):
        with pytest.raises(ValueError):
            bundle.text.encode_text(bad)
    with caplog.at_level(logging.WARNING):
        emb = bundle.text.encode_text(["the mug " * 40])
    assert "truncated" in caplog.text and emb.shape == (1, 24)
    for templates in ([], ["no placeholder"], ["{} and {}"]):
        with pytest.raises(EncoderError, match="template"):
            create_encoders({"backend": "hf_clip", "model": str(tiny_dir), "templates": templates})


def test_vision_only_checkpoint(tmp_path: Path, tiny_dir: Path) -> None:
    from transformers import CLIPVisionModel

    vision = CLIPVisionModel.from_pretrained(str(tiny_dir), local_files_only=True)
    vision.save_pretrained(tmp_path / "vis")
    bundle = create_encoders({"backend": "hf_clip", "model": str(tmp_path / "vis")})
    assert bundle.text is None and not bundle.can_ground
    assert bundle.image.feature_dims == {VISION: 32}
    assert set(bundle.image.encode(_images(1))) == {VISION}


def test_loader_errors(tmp_path: Path, tiny_dir: Path) -> None:
    def make(cfg: dict) -> dict:
        return {"backend": "hf_clip", "model": str(tmp_path / cfg.pop("dir")), **cfg}

    with pytest.raises(EncoderError, match="not found"):
        create_encoders(make({"dir": "missing"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match=r"no config\.json"):
        create_encoders(make({"dir": "empty"}))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(EncoderError, match="no weights"):
        create_encoders(make({"dir": "noweights"}))
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text(
        json.dumps(
            {"model_type": "llava_llama", "mm_vision_tower": "openai/clip-vit-large-patch14-336"}
        )
    )
    with pytest.raises(EncoderError, match="clip-vit-large-patch14-336"):
        create_encoders(make({"dir": "llava"}))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EncoderError, match="'bert'"):
        create_encoders(make({"dir": "bert"}))
    (tmp_path / "notok").mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / "notok" / f).write_bytes((tiny_dir / f).read_bytes())
    with pytest.raises(EncoderError, match="tokenizer"):
        create_encoders(make({"dir": "notok"}))
    # Without tokenizer files the image side still loads when text is off.
    assert create_encoders(make({"dir": "notok", "text": False})).text is None
    with pytest.raises(EncoderError, match="allow_network"):
        create_encoders({"backend": "hf_clip", "model": "nobody/no-such-clip"})
    for bad in (
        {"dense_mode": "magic"},
        {"select_layer": 9},
        {"dtype": "int8"},
        {"device": "cuda:7"} if not torch.cuda.is_available() else {"dtype": "x"},
    ):
        with pytest.raises(EncoderError):
            create_encoders({"backend": "hf_clip", "model": str(tiny_dir), **bad})


def test_measure_dense_variants_runs(tiny_dir: Path) -> None:
    """The measurement code path (numbers are meaningless on random weights)."""
    from benchmarks.dense_variants import measure_dense_variants, patch_labels

    images = _images(2)
    labels = []
    for img in images:
        lab = np.zeros(img.shape[:2], np.int64)
        lab[:, img.shape[1] // 2 :] = 1
        lab[:5] = -1  # ignored pixels
        labels.append(lab)
    report = measure_dense_variants(
        str(tiny_dir), zip(images, labels, strict=True), ["mug", "table"], options={"device": "cpu"}
    )
    assert set(report) == set(hf_clip.DENSE_MODES)
    for stats in report.values():
        assert 0.0 <= stats["accuracy"] <= 1.0 and stats["chance"] == 0.5
        assert stats["patches"] == 2 * GRID * GRID
    from llava3d_ros.core.encoders.base import PatchGeometry

    grid = patch_labels(labels[0], PatchGeometry(56, 56, 14, 4, 4), 2)
    assert (grid[:, :2] == 0).all() and (grid[:, 2:] == 1).all()


@pytest.mark.slow
def test_compiled_tower_equals_eager_and_keeps_each_calls_features(tiny_dir: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    compiled = create_encoders(
        {
            "backend": "hf_clip",
            "model": str(tiny_dir),
            "dense_mode": "maskclip",
            "compile": True,
            "compile_mode": "reduce-overhead",
            "text": False,
        }
    )
    a, b = _images(2), _images(2, seed=1)
    first = compiled.image.encode(a)
    kept = {k: v.clone() for k, v in first.items()}
    compiled.image.encode(b)
    eager = bundle.image.encode(a)
    for kind in (VISION, GROUND):
        torch.testing.assert_close(first[kind], kept[kind])
        torch.testing.assert_close(first[kind], eager[kind], atol=1e-4, rtol=1e-4)
    with pytest.raises(EncoderError, match="compile_mode"):
        create_encoders({"backend": "hf_clip", "model": str(tiny_dir), "compile_mode": "turbo"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graphs_tower_keeps_each_frames_features(tiny_dir: Path) -> None:
    def make(**extra: object):  # type: ignore[no-untyped-def]
        options = {"backend": "hf_clip", "model": str(tiny_dir), "device": "cuda", "text": False}
        return create_encoders({**options, **extra}).image

    eager = make(dtype="float32")
    graphs = make(dtype="float32", compile=True, compile_mode="reduce-overhead")
    check_graph_outputs_survive(graphs, eager, _images(2), _images(2, seed=1))
