"""The LLaMA SentencePiece tokenizer of the LLaVA checkpoints (issue 13, item 1).

The expected ids and texts below were produced by transformers 4.37.2's slow
``LlamaTokenizer`` (what the official LLaVA / LLaVA-3D code loads with ``use_fast=False``)
on the same tiny SentencePiece model, trained here at test time (training is
deterministic: same corpus, one thread). transformers 5 has no slow LLaMA tokenizer, so
they are frozen here rather than computed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llava3d_ros.core.lmm import (
    IMAGE_TOKEN_INDEX,
    LOC_TOKEN_INDEX,
    Llava3DChat,
    build_prompt,
    load_llava3d,
    load_tokenizer,
    tokenize_prompt,
)
from llava3d_ros.core.lmm.checkpoint import write_official_checkpoint
from llava3d_ros.core.lmm.tokenizer import LlamaSentencePieceTokenizer
from tests.lmm_fixtures import make_sentencepiece_tokenizer, make_tiny_model

PROBES = [
    "A chat between a curious human and an artificial intelligence assistant. USER: ",
    "\nWhat is on the table? ASSISTANT:",
    " in detail. ASSISTANT:",
    ". Describe the object in detail.",
    "USER: hi</s>USER: Is the chair left? ASSISTANT: Yes</s>",
    "école 深度 [1.5,-2.0,3e-2]",
    " ",
    "  two  spaces",
    "<s>start",
    "▁odd",
]

# transformers 4.37.2 LlamaTokenizer(...)(text, add_special_tokens=False)["input_ids"]
REFERENCE_IDS = {
    True: [
        [
            275,
            268,
            294,
            290,
            272,
            288,
            281,
            259,
            296,
            357,
            283,
            340,
            308,
            277,
            264,
            259,
            338,
            348,
            326,
            322,
            319,
            298,
            287,
            353,
            284,
            370,
            281,
            321,
            310,
            354,
            344,
            317,
            312,
            376,
            344,
        ],
        [
            344,
            13,
            390,
            294,
            299,
            269,
            350,
            262,
            261,
            318,
            267,
            369,
            275,
            316,
            314,
            365,
            311,
            365,
            376,
        ],
        [344, 298, 307, 353, 354, 275, 316, 314, 365, 311, 365, 376],
        [344, 354, 341, 271, 324, 348, 320, 262, 309, 298, 307, 353, 354],
        [
            344,
            317,
            312,
            376,
            344,
            351,
            348,
            2,
            344,
            317,
            312,
            376,
            344,
            315,
            262,
            268,
            351,
            270,
            357,
            344,
            267,
            327,
            369,
            275,
            316,
            314,
            365,
            311,
            365,
            376,
            344,
            92,
            271,
            2,
        ],
        [
            344,
            397,
            323,
            267,
            344,
            399,
            398,
            343,
            372,
            354,
            374,
            359,
            48,
            373,
            354,
            360,
            359,
            380,
            345,
            48,
            373,
            392,
        ],
        [344, 344],
        [344, 344, 261, 371, 352, 344, 344, 349, 367, 347, 355, 271],
        [1, 344, 349, 346, 347, 338],
        [344, 269, 356, 356],
    ],
    False: [
        [
            275,
            268,
            294,
            290,
            272,
            288,
            281,
            259,
            296,
            357,
            283,
            340,
            308,
            277,
            264,
            259,
            338,
            348,
            326,
            322,
            319,
            298,
            287,
            353,
            284,
            370,
            281,
            321,
            310,
            354,
            344,
            317,
            312,
            376,
            344,
        ],
        [
            344,
            13,
            390,
            294,
            299,
            269,
            350,
            262,
            261,
            318,
            267,
            369,
            275,
            316,
            314,
            365,
            311,
            365,
            376,
        ],
        [344, 298, 307, 353, 354, 275, 316, 314, 365, 311, 365, 376],
        [344, 354, 341, 271, 324, 348, 320, 262, 309, 298, 307, 353, 354],
        [
            344,
            317,
            312,
            376,
            344,
            351,
            348,
            2,
            317,
            312,
            376,
            344,
            315,
            262,
            268,
            351,
            270,
            357,
            344,
            267,
            327,
            369,
            275,
            316,
            314,
            365,
            311,
            365,
            376,
            344,
            92,
            271,
            2,
        ],
        [
            344,
            397,
            323,
            267,
            344,
            399,
            398,
            343,
            372,
            354,
            374,
            359,
            48,
            373,
            354,
            360,
            359,
            380,
            345,
            48,
            373,
            392,
        ],
        [344, 344],
        [344, 344, 261, 371, 352, 344, 344, 349, 367, 347, 355, 271],
        [1, 349, 346, 347, 338],
        [344, 269, 356, 356],
    ],
}
# ... .decode([1, *ids, 2], skip_special_tokens=k) for k in (True, False), per probe
REFERENCE_TEXT = {
    True: [
        "A chat between a curious human and an artificial intelligence assistant. USER: ",
        "<s> A chat between a curious human and an artificial intelligence assistant. USER: </s>",
        "\nWhat is on the table? ASSISTANT:",
        "<s> \nWhat is on the table? ASSISTANT:</s>",
        "in detail. ASSISTANT:",
        "<s>  in detail. ASSISTANT:</s>",
        ". Describe the object in detail.",
        "<s> . Describe the object in detail.</s>",
        "USER: hi USER: Is the chair left? ASSISTANT: Yes",
        "<s> USER: hi</s> USER: Is the chair left? ASSISTANT: Yes</s></s>",
        "école 深度 [1.5,-2.0,3e-2]",
        "<s> école 深度 [1.5,-2.0,3e-2]</s>",
        "",
        "<s>  </s>",
        " two  spaces",
        "<s>   two  spaces</s>",
        "start",
        "<s><s> start</s>",
        "odd",
        "<s>  odd</s>",
    ],
    False: [
        "A chat between a curious human and an artificial intelligence assistant. USER: ",
        "<s> A chat between a curious human and an artificial intelligence assistant. USER: </s>",
        "\nWhat is on the table? ASSISTANT:",
        "<s> \nWhat is on the table? ASSISTANT:</s>",
        " in detail. ASSISTANT:",
        "<s>  in detail. ASSISTANT:</s>",
        ". Describe the object in detail.",
        "<s> . Describe the object in detail.</s>",
        "USER: hiUSER: Is the chair left? ASSISTANT: Yes",
        "<s> USER: hi</s>USER: Is the chair left? ASSISTANT: Yes</s></s>",
        "école 深度 [1.5,-2.0,3e-2]",
        "<s> école 深度 [1.5,-2.0,3e-2]</s>",
        " ",
        "<s>  </s>",
        "  two  spaces",
        "<s>   two  spaces</s>",
        "start",
        "<s><s>start</s>",
        " odd",
        "<s>  odd</s>",
    ],
}


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non_legacy"])
def sp_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"), legacy=request.param)


def _legacy(sp_dir: Path) -> bool:
    return '"legacy": true' in (sp_dir / "tokenizer_config.json").read_text()


def test_ids_and_text_match_the_official_slow_tokenizer(sp_dir: Path) -> None:
    tok = load_tokenizer(sp_dir)
    assert isinstance(tok, LlamaSentencePieceTokenizer)
    legacy = _legacy(sp_dir)
    assert tok.legacy is legacy
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in PROBES]
    assert ids == REFERENCE_IDS[legacy]
    texts = [tok.decode([1, *i, 2], skip_special_tokens=k) for i in ids for k in (True, False)]
    assert texts == REFERENCE_TEXT[legacy]
    # Special tokens: BOS in front by default (add_bos_token), never EOS.
    assert tok("What")["input_ids"][0] == tok.bos_token_id == 1
    assert tok.eos_token_id == 2 and tok.unk_token_id == 0 and tok.pad_token_id is None
    assert len(tok) == 400


def test_a_leading_space_of_a_chunk_is_kept(sp_dir: Path) -> None:
    """Prompt splicing tokenizes the text after <boxes> on its own; its leading space is
    a word boundary the model was trained with (transformers 5's converted fast
    tokenizer drops it, which is why the slow one is reproduced)."""
    tok = load_tokenizer(sp_dir)
    with_space = tok(" in detail.", add_special_tokens=False)["input_ids"]
    without = tok("in detail.", add_special_tokens=False)["input_ids"]
    assert with_space[1:] == without and tok.convert_ids_to_tokens(with_space[:1]) == ["\u2581"]


def test_save_and_reload_give_the_same_ids(sp_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(sp_dir)
    tok.save_pretrained(tmp_path / "copy")
    again = load_tokenizer(tmp_path / "copy")
    assert isinstance(again, LlamaSentencePieceTokenizer) and again.legacy == tok.legacy
    for t in PROBES:
        assert again(t)["input_ids"] == tok(t)["input_ids"]


def test_prompt_splicing_with_the_sentencepiece_tokenizer(sp_dir: Path) -> None:
    tok = load_tokenizer(sp_dir)
    prompt = build_prompt("What is at <boxes> in detail?", location=[1.0, 2.0, 0.5])
    ids = tokenize_prompt(tok, prompt.text)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids.count(LOC_TOKEN_INDEX) == 1
    # Each chunk is tokenized on its own, without special tokens.
    after_box = prompt.text.split("<boxes>")[1]
    tail = tok(after_box, add_special_tokens=False)["input_ids"]
    assert ids[-len(tail) :] == tail


def test_a_checkpoint_with_tokenizer_model_loads_and_answers(tmp_path: Path) -> None:
    sp = make_sentencepiece_tokenizer(tmp_path / "sp")
    tok = load_tokenizer(sp)
    model = make_tiny_model(len(tok), seed=0)
    ckpt = write_official_checkpoint(model, tok, tmp_path / "ckpt")
    assert (ckpt / "tokenizer.model").is_file() and not (ckpt / "tokenizer.json").exists()
    loaded, tokenizer = load_llava3d(ckpt, device="cpu", dtype="fp32")
    assert isinstance(tokenizer, LlamaSentencePieceTokenizer)
    chat = Llava3DChat(loaded, tokenizer)
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(16, 3, generator=g) * 4.0
    feat = torch.randn(16, loaded.config.mm_hidden_size, generator=g)
    streamed: list[str] = []
    ans = chat.answer("What is on the table?", pos, feat, max_new_tokens=6, on_text=streamed.append)
    assert ans.num_tokens >= 1 and "".join(streamed) == ans.text


def test_broken_tokenizer_files_are_a_clear_error(tmp_path: Path) -> None:
    from llava3d_ros.core.lmm import CheckpointError

    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)


def _official_splice(tok: LlamaSentencePieceTokenizer, prompt: str) -> list[int]:
    """LLaVA's ``tokenizer_image_token``, written from its definition and extended to the
    ``<boxes>`` placeholder as LLaVA-3D does: every chunk between placeholders tokenized
    *with* BOS, the first chunk's BOS kept, every other BOS cut, the placeholder's index
    (-200 image, -300 boxes) in between."""
    import re

    pieces = re.split(r"(<image>|<boxes>)", prompt)
    chunks = [tok(c)["input_ids"] for c in pieces[0::2]]
    marks = [-200 if m == "<image>" else -300 for m in pieces[1::2]]
    ids: list[int] = []
    offset = 0
    if chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        ids.extend(chunk[offset:])
        if i < len(marks):
            ids.append(marks[i])
    return ids


def test_prompt_splicing_matches_the_official_definition(sp_dir: Path) -> None:
    tok = load_tokenizer(sp_dir)
    prompts = [
        build_prompt("What is on the table?"),
        build_prompt("What is at <boxes> in detail?", location=[1.0, 2.0, 0.5]),
        build_prompt("Compare [1,2,3] and <boxes> now.", location=[0.0, 0.0, 0.0]),
        build_prompt("And the chair?", history=[("Is there a mug?", "Yes, one.")]),
    ]
    for p in prompts:
        assert tokenize_prompt(tok, p.text) == _official_splice(tok, p.text), p.text
