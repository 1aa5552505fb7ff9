"""The view tier: a LLaVA-1.5-family model (LLaVA-1.5, Spatial-LLaVA...) answering about
one camera image, as LLaVA's own inference does it.

Image path, the official one for LLaVA-1.5 (``image_aspect_ratio: pad``)::

    RGB frame -> pad to a square with the CLIP mean colour (centred) -> CLIP image
    processing (resize to 336, normalise) -> CLIP ViT-L/14-336 hidden_states[-2], CLS
    dropped (576 x 1024) -> mm_projector -> the <image> slot of the llava_v1 prompt

Checkpoints without ``image_aspect_ratio: pad`` get the CLIP processor's resize of the
short side and centre crop, LLaVA's fallback. The vision tower is a
:class:`~llava3d_ros.core.encoders.hf_clip.HFClipImageEncoder`: the memory's own encoder
when it is the same CLIP (shared: one copy of the weights), else one loaded for the model
from ``mm_vision_tower`` or a given directory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..encoders.base import VISION
from .config import FAMILY_2D, LlavaConfig, LlavaConfigError, LmmError
from .generate import CancelSource, Llava2DChat, LmmAnswer

logger = logging.getLogger(__name__)


def background_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    """The padding colour LLaVA uses: the processor's mean, in 0..255, truncated."""
    r, g, b = (int(float(m) * 255) for m in mean)
    return r, g, b


def expand_to_square(rgb: np.ndarray, background: Sequence[int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) with S = max(H, W): the image centred (offset
    ``(S - short) // 2``) on ``background``, as LLaVA's ``expand2square``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise LmmError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    s = max(h, w)
    out = np.empty((s, s, 3), np.uint8)
    out[:] = np.asarray(background, np.uint8)
    top, left = (s - h) // 2, (s - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_RECT_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


def parse_image_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """The 2D boxes in an answer: ``[x1, y1, x2, y2]`` normalised to 0..1 (LLaVA-1.5's
    referring format, in the square image the model saw), in order. Four-number lists
    outside 0..1 or with x2 <= x1 or y2 <= y1 are not boxes."""
    out = []
    for m in _RECT_RE.finditer(text):
        x0, y0, x1, y1 = (float(v) for v in m.groups())
        if all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)) and (
            x1 > x0 and y1 > y0
        ):
            out.append((x0, y0, x1, y1))
    return out


def check_view_tower(config: LlavaConfig, tower: Any) -> None:
    """Raise LlavaConfigError unless ``tower`` gives the features the model was trained on
    (its select layer, patch tokens without CLS, mm_hidden_size wide)."""
    if config.mm_vision_select_feature != "patch":
        raise LlavaConfigError(
            f"mm_vision_select_feature {config.mm_vision_select_feature!r} is not supported "
            "(the tower gives patch tokens, CLS dropped: 'patch')"
        )
    width = tower.feature_dims.get(VISION)
    if width != int(config.mm_hidden_size):
        raise LlavaConfigError(
            f"the vision tower gives {width}-d features, the model's projector takes "
            f"{config.mm_hidden_size}-d ({config.mm_vision_tower})"
        )
    if int(tower.select_layer) != int(config.mm_vision_select_layer):
        raise LlavaConfigError(
            f"the vision tower reads layer {tower.select_layer}, the model was trained on "
            f"layer {config.mm_vision_select_layer}"
        )


def load_view_tower(
    config: LlavaConfig,
    vision_tower: str,
    device: torch.device,
    dtype: torch.dtype,
    allow_network: bool = False,
) -> Any:
    """The model's CLIP vision tower from ``vision_tower`` (a directory or a cached repo
    id; empty = the config's ``mm_vision_tower``)."""
    from ..encoders.hf_clip import HFClipImageEncoder, load_clip, load_preprocessing

    name = vision_tower or config.mm_vision_tower
    if not name:
        raise LlavaConfigError("the checkpoint names no mm_vision_tower: give one")
    clip, _ = load_clip(name, allow_network)
    prep = load_preprocessing(str(name), allow_network)
    return HFClipImageEncoder(
        clip,
        prep.mean,
        prep.std,
        prep.resample,
        select_layer=int(config.mm_vision_select_layer),
        device=device,
        dtype=dtype,
        crop="center",
    )


class ViewAnswerer:
    """A 2D chat plus its vision tower: camera frame in, streamed answer out."""

    def __init__(self, chat: Llava2DChat, tower: Any, *, shared: bool = False) -> None:
        config = chat.model.config
        if config.family != FAMILY_2D:
            raise LlavaConfigError(f"the view tier needs a {FAMILY_2D} model, got {config.family}")
        check_view_tower(config, tower)
        self.chat = chat
        self.tower = tower
        self.shared = shared  # the memory's encoder: the pipeline sets tower_lock to its own
        self.tower_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.chat.name

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike[str],
        *,
        vision_tower: str = "",
        shared_tower: Any = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        template: str = "llava_v1",
        allow_network: bool = False,
    ) -> ViewAnswerer:
        """Load the checkpoint (:func:`~.checkpoint.load_llava2d`) and its tower:
        ``shared_tower`` (the memory's CLIP encoder) when it gives the right features,
        else ``vision_tower`` / the config's ``mm_vision_tower``."""
        chat = Llava2DChat.load(
            checkpoint, device, dtype, template=template, allow_network=allow_network
        )
        config = chat.model.config
        if shared_tower is not None:
            try:
                check_view_tower(config, shared_tower)
            except LlavaConfigError as exc:
                logger.warning("not sharing the memory's vision tower: %s", exc)
            else:
                logger.info("view model shares the memory's vision tower")
                return cls(chat, shared_tower, shared=True)
        tower = load_view_tower(
            config, vision_tower, chat.model.device, chat.model.dtype, allow_network
        )
        return cls(chat, tower, shared=False)

    def pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S) tower input of a frame, LLaVA's preprocessing for the config."""
        config = self.chat.model.config
        if config.pads_to_square:
            square = expand_to_square(rgb, background_colour(self.tower.image_mean))
            return self.tower.preprocess([square], crop="center")
        return self.tower.preprocess([rgb], crop="center")

    def to_pixels(
        self, box: tuple[float, float, float, float], height: int, width: int
    ) -> tuple[float, float, float, float]:
        """A normalised box of the square the model saw -> (u0, v0, u1, v1) pixels of the
        (height x width) frame: undoes the padding (or the centre crop)."""
        if self.chat.model.config.pads_to_square:  # the frame sits centred in the square
            side = max(height, width)
            row0, col0 = -((side - height) // 2), -((side - width) // 2)
        else:  # centre crop: the square is the frame's middle
            side = min(height, width)
            crop = dataclasses.replace(self.tower.geometry, crop="center")
            row0, _, col0, _ = crop.source_region(height, width)
        x0, y0, x1, y1 = box
        return (
            float(col0 + x0 * side),
            float(row0 + y0 * side),
            float(col0 + x1 * side),
            float(row0 + y1 * side),
        )

    def pixel_boxes(self, text: str, height: int, width: int) -> list[tuple[float, ...]]:
        """The 2D boxes of an answer (:func:`parse_image_boxes`) in frame pixels."""
        return [self.to_pixels(b, height, width) for b in parse_image_boxes(text)]

    def image_features(self, rgb: np.ndarray) -> torch.Tensor:
        """(P, mm_hidden) patch features of one frame (P = 576 for ViT-L/14-336)."""
        with self.tower_lock:
            grid = self.tower.forward_features(self.pixels(rgb), dense_modes=[])[VISION]
        return grid[0].reshape(-1, grid.shape[-1])

    def answer(
        self,
        question: str,
        rgb: np.ndarray,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        on_text: Callable[[str], None] | None = None,
        cancel: CancelSource | None = None,
        **kwargs: Any,
    ) -> tuple[LmmAnswer, float]:
        """(answer, seconds spent encoding the image)."""
        t0 = time.perf_counter()
        features = self.image_features(rgb)
        encode_s = time.perf_counter() - t0
        answer = self.chat.answer(
            question,
            features,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            on_text=on_text,
            cancel=cancel,
            **kwargs,
        )
        return answer, encode_s
