"""Tiny LLaVA-3D checkpoints for tests and benchmarks (random weights, offline tokenizer).

:func:`make_tiny_checkpoint` writes a directory in the official layout that
:func:`~llava3d_ros.core.lmm.load_llava3d` loads like a real one, so the ROS ask/describe
actions can be exercised end to end without the 7B weights. Outputs are random text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llava3d_ros.core.lmm.checkpoint import write_official_checkpoint
from llava3d_ros.core.lmm.config import DEFAULT_MAX_SCENE_TOKENS, LlavaConfig
from llava3d_ros.core.lmm.model import Llava3DModel
from llava3d_ros.core.lmm.prompt import SYSTEM_PROMPT_V1, SYSTEM_PROMPT_VICUNA_V1

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
# Words of the llava_v1 template plus some question words, so prompts tokenize without <unk>.
_WORDS = (
    "USER: ASSISTANT: What Where Which How is are the a an of on in at to and chair "
    "table cup mug room object color Describe describe detail. left right above below "
    "near red blue green there ? . ,"
)
BASE_WORDS = tuple(
    dict.fromkeys(SYSTEM_PROMPT_V1.split() + SYSTEM_PROMPT_VICUNA_V1.split() + _WORDS.split(" "))
)


def make_word_tokenizer(words: Iterable[str] = (), vocab_size: int | None = None) -> Any:
    """A whitespace word-level tokenizer (``<unk>``=0, ``<s>``=1, ``</s>``=2) that adds BOS
    like Llama's. ``vocab_size`` pads the vocabulary with ``w0, w1, ...`` to that size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *BASE_WORDS, *words):
        vocab.setdefault(w, len(vocab))
    i = 0
    while vocab_size is not None and len(vocab) < vocab_size:
        vocab.setdefault(f"w{i}", len(vocab))
        i += 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


# Text the tiny SentencePiece model is trained on: the template, prompts, numbers, accents.
_SP_CORPUS = (
    SYSTEM_PROMPT_V1,
    "USER: What is on the table? ASSISTANT: A mug [1.0,2.0,0.5,0.4,0.4,0.9] and a book.",
    "The related object is located at the point. Describe the object in detail.",
    "Is the chair left of the sofa? How many cups are there? 0123456789 école 深度",
)


def make_sentencepiece_tokenizer(
    directory: Path, *, legacy: bool = False, vocab_size: int = 400
) -> Path:
    """Train a tiny LLaMA-style SentencePiece model (BPE, byte fallback, split digits,
    ``<unk>``=0 ``<s>``=1 ``</s>``=2, dummy prefix) offline and write it as the released
    LLaVA checkpoints ship their tokenizer: ``tokenizer.model``, ``tokenizer_config.json``
    naming the slow ``LlamaTokenizer`` (LLaVA-1.5's says ``legacy: false``) and
    ``special_tokens_map.json``. Returns ``directory``."""
    import io
    import json

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SP_CORPUS * 20),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False},
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False},
        "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False},
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": legacy,
        "model_max_length": 2048,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    return directory


def tiny_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 128,
    mm_hidden_size: int = 32,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = False,
) -> LlavaConfig:
    from transformers import LlamaConfig

    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tie_word_embeddings,
    )
    return LlavaConfig(llama=llama, mm_hidden_size=mm_hidden_size)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Fill every parameter in place from N(0, std) (norm weights: 1 + N(0, std)), with a
    CPU generator so the values do not depend on the device. Works after ``to_empty``."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights
                continue
            seen.add(id(p))
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
            if is_norm and name == "weight":
                noise += 1.0  # norm gains around 1
            p.copy_(noise)
    return model


def make_tiny_model(
    vocab_size: int,
    seed: int = 0,
    std: float = 0.2,
    max_scene_tokens: int = DEFAULT_MAX_SCENE_TOKENS,
    **config_kw: Any,
) -> Llava3DModel:
    """A randomly initialised tiny model (fp32, CPU). ``std`` 0.2 gives peaked logits, so
    greedy choices are not near-ties."""
    model = Llava3DModel(tiny_config(vocab_size, **config_kw), max_scene_tokens)
    return randomize_(model, seed, std).eval()


def make_tiny_checkpoint(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    shards: int = 2,
    words: Iterable[str] = (),
    std: float = 0.2,
    **config_kw: Any,
) -> Path:
    """Write a tiny random LLaVA-3D checkpoint + tokenizer in the official layout."""
    tokenizer = make_word_tokenizer(words)
    model = make_tiny_model(len(tokenizer), seed=seed, std=std, **config_kw)
    return write_official_checkpoint(model, tokenizer, path, shards=shards)


# -- the LLaVA-1.5 family (2D: Spatial-LLaVA and the like) -------------------------------------


def tiny_config_2d(vocab_size: int, *, mm_vision_tower: str = "", **kw: Any) -> LlavaConfig:
    """A LLaVA-1.5-shaped config: no video tower, ``image_aspect_ratio: pad``, the keys
    LLaVA-1.5's config.json carries (``mm_use_im_patch_token``, ``tune_mm_mlp_adapter``...)."""
    base = tiny_config(vocab_size, **kw)
    return LlavaConfig(
        llama=base.llama,
        mm_hidden_size=base.mm_hidden_size,
        mm_projector_type="mlp2x_gelu",
        mm_vision_tower=mm_vision_tower or "openai/clip-vit-large-patch14-336",
        mm_video_tower=None,
        mm_vision_select_layer=-2,
        image_aspect_ratio="pad",
        extra={
            "mm_use_im_patch_token": False,
            "tune_mm_mlp_adapter": False,
            "freeze_mm_mlp_adapter": False,
            "use_cache": True,
        },
    )


def make_tiny_model_2d(vocab_size: int, seed: int = 0, std: float = 0.2, **kw: Any) -> Any:
    from llava3d_ros.core.lmm.model import Llava2DModel

    model = Llava2DModel(tiny_config_2d(vocab_size, **kw))
    return randomize_(model, seed, std).eval()


def to_pytorch_bin(directory: Path, clip_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Rewrite a checkpoint's safetensors shards as LLaVA-1.5's release ships them:
    ``pytorch_model-0000i-of-0000N.bin`` + ``pytorch_model.bin.index.json``, plus (as
    that release does) a copy of the CLIP tower under ``model.vision_tower.*``."""
    import json

    from safetensors.torch import load_file

    shards = sorted(directory.glob("model*.safetensors"))
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, 1):
        tensors = load_file(str(shard))
        if i == len(shards) and clip_tensors:
            tensors.update(clip_tensors)
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(tensors, directory / name)
        weight_map.update(dict.fromkeys(tensors, name))
        shard.unlink()
    (directory / "model.safetensors.index.json").unlink(missing_ok=True)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return directory


def make_tiny_checkpoint_2d(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    shards: int = 2,
    std: float = 0.2,
    tokenizer: Any = None,
    never_eos: bool = False,
    **config_kw: Any,
) -> Path:
    """Write a tiny random LLaVA-1.5-family checkpoint (safetensors) + tokenizer."""
    tokenizer = tokenizer or make_word_tokenizer()
    model = make_tiny_model_2d(len(tokenizer), seed=seed, std=std, **config_kw)
    if never_eos:  # greedy generation runs to max_new_tokens (see model_fixtures)
        with torch.no_grad():
            model.llm.lm_head.weight[tokenizer.eos_token_id] = 0.0
    return write_official_checkpoint(model, tokenizer, path, shards=shards)
