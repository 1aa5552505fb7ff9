"""Input checks shared by the text encoders."""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# Characters kept before tokenising: far more than any encoder's token limit needs, and it
# bounds tokeniser time when a caller passes a whole document by mistake.
MAX_CHARS = 10_000


def check_texts(texts: Sequence[str], max_chars: int = MAX_CHARS) -> list[str]:
    """Validate queries: a non-empty list of non-blank strings; cut absurdly long ones.

    Returns the texts stripped of surrounding whitespace (an embedding should not depend
    on a trailing newline from a terminal)."""
    if isinstance(texts, (str, bytes)):
        # Iterating a bare string would embed its characters one by one.
        raise ValueError("encode_text() takes a list of strings, not a single string")
    out: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i}: expected a string, got {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise ValueError(f"text {i}: empty or blank query")
        if len(stripped) > max_chars:
            logger.warning(
                "text %d: %d characters, cut to %d before tokenising", i, len(stripped), max_chars
            )
            stripped = stripped[:max_chars]
        out.append(stripped)
    if not out:
        raise ValueError("encode_text() needs at least one text")
    return out
