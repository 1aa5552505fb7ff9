"""Tiny, randomly initialised models written to disk in their real formats, loaded by
the node through the same loaders as real checkpoints (no network, seconds to build),
and a tiny DINOv2 backbone in memory for the torch encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CLIP_WIDTH = 32  # vision hidden size of the tiny CLIP = the tiny LMM's mm_hidden_size


def make_tiny_dinov2(**config: Any) -> torch.nn.Module:
    """A transformers DINOv2 at a tiny shape (patch 14, width 32, 2 layers), seed 0, in
    eval mode; ``config`` overrides Dinov2Config fields."""
    from transformers import Dinov2Config, Dinov2Model

    fields = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14
    )
    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(**{**fields, **config})).eval()


def make_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A CLIP checkpoint (save_pretrained layout) with a character-level BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    tok_dir = out.parent / (out.name + "_tokenizer_src")
    tok_dir.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for ch in "abcdefghijklmnopqrstuvwxyz.,'":
        tokens += [ch, ch + "</w>"]
    (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    (tok_dir / "tokenizer_config.json").write_text(
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
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokens),
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
            "hidden_size": CLIP_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 56,
            "patch_size": 14,
        },
        projection_dim=24,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_lmm(out: Path, seed: int = 0, never_eos: bool = True) -> Path:
    """A LLaVA-3D checkpoint in the official layout whose scene features are the tiny
    CLIP's width. ``never_eos``: the end-of-sequence logit is held at 0 while the best of
    the ~60 random logits is positive (all negative has probability ~2^-60), so greedy
    generation runs to max_new_tokens: long enough to cancel deterministically."""
    from llava3d_ros.core.lmm import write_official_checkpoint
    from tests.lmm_fixtures import make_tiny_model, make_word_tokenizer

    tokenizer = make_word_tokenizer()
    model = make_tiny_model(
        len(tokenizer), seed=seed, mm_hidden_size=CLIP_WIDTH, max_position_embeddings=16384
    )
    if never_eos:
        with torch.no_grad():
            model.llm.lm_head.weight[tokenizer.eos_token_id] = 0.0
    return write_official_checkpoint(model, tokenizer, out, shards=2)


def make_tiny_view_lmm(out: Path, clip: Path, seed: int = 1) -> Path:
    """A LLaVA-1.5-family checkpoint (Spatial-LLaVA's layout) whose vision tower is the
    tiny CLIP at ``clip`` (its ``mm_vision_tower``); greedy answers never end early."""
    from tests.lmm_fixtures import make_tiny_checkpoint_2d

    return make_tiny_checkpoint_2d(
        out,
        seed=seed,
        mm_hidden_size=CLIP_WIDTH,
        mm_vision_tower=str(clip),
        max_position_embeddings=16384,
        never_eos=True,
    )


def check_graph_outputs_survive(graphs: Any, eager: Any, a: list[Any], b: list[Any]) -> None:
    """An encoder replaying CUDA graphs writes every call's outputs into the same buffers:
    features kept from frames ``a`` must survive encoding ``b``, and both equal eager's."""
    from llava3d_ros.core.encoders import VISION

    for _ in range(3):  # cudagraph trees record after warm-up calls
        graphs.encode(a)
    first = graphs.encode(a)[VISION]
    kept = first.clone()
    second = graphs.encode(b)[VISION]
    torch.testing.assert_close(first, kept)
    torch.testing.assert_close(first, eager.encode(a)[VISION], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(second, eager.encode(b)[VISION], atol=1e-3, rtol=1e-3)
