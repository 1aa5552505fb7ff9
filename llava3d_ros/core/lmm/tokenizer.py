"""The LLaVA checkpoints' tokenizer: LLaMA's SentencePiece model, encoded the way the
official code encodes it.

LLaVA and LLaVA-3D load their tokenizer with ``AutoTokenizer.from_pretrained(path,
use_fast=False)`` under transformers 4.3x: the "slow" ``LlamaTokenizer``, a thin layer over
``sentencepiece`` reading ``tokenizer.model``. transformers 5 has no slow LLaMA tokenizer
any more (``use_fast`` is ignored; the SentencePiece model is converted to a ``tokenizers``
one), and the converted tokenizer encodes a text chunk that starts with a space without
that space (" in detail." loses its leading word boundary), which is exactly the kind of
chunk the prompt splicing makes around ``<image>`` and ``<boxes>``. So this module
reproduces the slow tokenizer's encoding on ``sentencepiece`` itself (decision record
0009): special tokens split out first, ``legacy`` read from ``tokenizer_config.json`` as
transformers 4 did (true when absent), BOS added when ``add_bos_token``.

Only what the LMM tier uses is implemented: ``__call__``/``encode`` (ids), ``decode``,
``convert_ids_to_tokens``, ``len``, the special token ids and ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS = "added_tokens.json"
SPIECE_UNDERLINE = "\u2581"


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, an AddedToken dict
    (``{"content": "<s>", ...}``) or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise ValueError(f"unreadable special token {value!r}")


class LlamaSentencePieceTokenizer:
    """transformers 4's slow ``LlamaTokenizer`` encoding, on ``sentencepiece``."""

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        *,
        bos_token: str | None = "<s>",
        eos_token: str | None = "</s>",
        unk_token: str | None = "<unk>",
        pad_token: str | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        legacy: bool = True,
        added_tokens: Mapping[str, int] | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        self.legacy = legacy
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.bos_token, self.eos_token = bos_token, eos_token
        self.unk_token, self.pad_token = unk_token, pad_token
        proto = self.model_file.read_bytes()
        if not legacy:
            # The non-legacy slow tokenizer turns the model's dummy prefix off and adds
            # the word boundary itself, once, at the start of the text.
            proto = _without_dummy_prefix(proto)
        self.sp_model = spm.SentencePieceProcessor(model_proto=proto)
        base = self.sp_model.get_piece_size()
        self.added_tokens = {str(k): int(v) for k, v in (added_tokens or {}).items()}
        bad = {k: v for k, v in self.added_tokens.items() if v < base and self._piece_id(k) != v}
        if bad:
            raise ValueError(f"added tokens {bad} collide with the SentencePiece vocabulary")
        self._id_to_added = {v: k for k, v in self.added_tokens.items()}
        self._init_kwargs = dict(init_kwargs or {})
        # transformers 4's default; LLaVA's tokenizer_config.json says false.
        self.clean_up_tokenization_spaces = bool(
            self._init_kwargs.get("clean_up_tokenization_spaces", True)
        )
        # Texts matched whole before SentencePiece sees the rest (longest first).
        specials = [t for t in (bos_token, eos_token, unk_token, pad_token) if t]
        self._split_tokens = sorted(set(specials) | set(self.added_tokens), key=len, reverse=True)
        self._special_ids = {self.convert_tokens_to_id(t) for t in specials}
        self._special_ids |= set(self._id_to_added)
        self._unk_pieces = len(self.sp_model.encode(unk_token or "<unk>", out_type=str))

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> LlamaSentencePieceTokenizer:
        """Read ``tokenizer.model`` plus ``tokenizer_config.json``,
        ``special_tokens_map.json`` and ``added_tokens.json`` where present."""
        d = Path(directory)
        model = d / SPIECE_MODEL
        if not model.is_file():
            raise FileNotFoundError(f"no {SPIECE_MODEL} in {d}")
        config = _read_json(d / TOKENIZER_CONFIG)
        special = _read_json(d / SPECIAL_TOKENS_MAP)
        added = _read_json(d / ADDED_TOKENS)

        legacy = config.get("legacy")  # transformers 4 read a missing one as true

        def token(name: str, default: str | None) -> str | None:
            if name in config:
                return _token_text(config[name])
            if name in special:
                return _token_text(special[name])
            return default

        return cls(
            model,
            bos_token=token("bos_token", "<s>"),
            eos_token=token("eos_token", "</s>"),
            unk_token=token("unk_token", "<unk>"),
            pad_token=token("pad_token", None),
            add_bos_token=bool(config.get("add_bos_token", True)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            legacy=True if legacy is None else bool(legacy),
            added_tokens={str(k): int(v) for k, v in added.items()},
            init_kwargs=config,
        )

    # ------------------------------------------------------------------ ids

    def _piece_id(self, piece: str) -> int:
        return int(self.sp_model.piece_to_id(piece))

    def convert_tokens_to_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        return self._piece_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.convert_tokens_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.convert_tokens_to_id(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return None if self.unk_token is None else self.convert_tokens_to_id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.convert_tokens_to_id(self.pad_token)

    def __len__(self) -> int:
        return max([self.sp_model.get_piece_size() - 1, *self._id_to_added]) + 1

    # ------------------------------------------------------------------ encoding

    def _split(self, text: str) -> list[tuple[str, bool]]:
        """(segment, is_special) pieces of ``text``, special tokens matched whole."""
        out: list[tuple[str, bool]] = []
        start = i = 0
        while i < len(text):
            hit = next((t for t in self._split_tokens if text.startswith(t, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                out.append((text[start:i], False))
            out.append((hit, True))
            i += len(hit)
            start = i
        if start < len(text):
            out.append((text[start:], False))
        return out

    def _encode_piece(self, text: str) -> list[str]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return list(self.sp_model.encode(text, out_type=str))
        # A leading space must survive: encode behind <unk> and cut it off again.
        pieces = list(self.sp_model.encode((self.unk_token or "<unk>") + text, out_type=str))
        return pieces[self._unk_pieces :]

    def tokenize(self, text: str) -> list[str]:
        if not self.legacy and text:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        tokens: list[str] = []
        for segment, special in self._split(text):
            tokens.extend([segment] if special else self._encode_piece(segment))
        if (
            not self.legacy
            and len(tokens) > 1
            and tokens[0] == SPIECE_UNDERLINE
            and tokens[1] in self._split_tokens
        ):
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.convert_tokens_to_id(t) for t in self.tokenize(text)]
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id, *ids]
            if self.add_eos_token and self.eos_token_id is not None:
                ids = [*ids, self.eos_token_id]
        return ids

    def __call__(
        self, text: str, add_special_tokens: bool = True, **_: Any
    ) -> dict[str, list[int]]:
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    # ------------------------------------------------------------------ decoding

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [
            self._id_to_added.get(int(i)) or str(self.sp_model.id_to_piece(int(i))) for i in ids
        ]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` as the slow tokenizer gives it: pieces between special tokens
        decoded together by SentencePiece (multi-byte characters split over byte pieces
        come out whole), the word boundary of the first piece dropped, and (legacy) a
        space in front of a special token."""
        kept = [int(i) for i in ids if not (skip_special_tokens and int(i) in self._special_ids)]
        tokens = self.convert_ids_to_tokens(kept)
        if not tokens:
            return ""
        if tokens[0].startswith(SPIECE_UNDERLINE):
            tokens[0] = tokens[0][1:]
        out, prev_special = "", False
        run: list[str] = []
        for i, (token_id, token) in enumerate(zip(kept, tokens, strict=True)):
            if token_id in self._special_ids:
                if not prev_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp_model.decode_pieces(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        out += self.sp_model.decode_pieces(run)
        return _clean_up(out) if self.clean_up_tokenization_spaces else out

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, directory: str | os.PathLike[str]) -> tuple[str, ...]:
        """The checkpoint layout: tokenizer.model, tokenizer_config.json (the slow class
        named, so the official loader reads it too), special_tokens_map.json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        model = d / SPIECE_MODEL
        if model.resolve() != self.model_file.resolve():
            shutil.copyfile(self.model_file, model)
        config = {
            **self._init_kwargs,
            "tokenizer_class": "LlamaTokenizer",
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "legacy": self.legacy,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        (d / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        special = {
            k: v
            for k, v in (
                ("bos_token", self.bos_token),
                ("eos_token", self.eos_token),
                ("unk_token", self.unk_token),
                ("pad_token", self.pad_token),
            )
            if v is not None
        }
        (d / SPECIAL_TOKENS_MAP).write_text(json.dumps(special, indent=2) + "\n")
        files = [model, d / TOKENIZER_CONFIG, d / SPECIAL_TOKENS_MAP]
        if self.added_tokens:
            (d / ADDED_TOKENS).write_text(json.dumps(self.added_tokens, indent=2) + "\n")
            files.append(d / ADDED_TOKENS)
        return tuple(str(f) for f in files)


def _clean_up(text: str) -> str:
    """transformers 4's ``clean_up_tokenization``: no space before punctuation and
    English contractions."""
    for a, b in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
        (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(a, b)
    return text


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def _without_dummy_prefix(proto: bytes) -> bytes:
    """The model with ``normalizer_spec.add_dummy_prefix`` off (what the non-legacy slow
    tokenizer loads)."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    m = model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf, no stub
    m.ParseFromString(proto)
    m.normalizer_spec.add_dummy_prefix = False
    return bytes(m.SerializeToString())
