"""LLaVA checkpoint configuration (LLaVA-3D and the LLaVA-1.5 family): the official
``config.json`` read and written as is.

The official release stores one flat ``config.json``: the Llama keys of its language model
(vicuna-7b-v1.5) plus the keys LLaVA adds (``mm_*``, ``num_frames``...). ``model_type`` is
``"llava_llama"`` and ``architectures`` ``["LlavaLlamaForCausalLM"]`` with no ``auto_map``,
so transformers' Auto classes cannot build it; :class:`LlavaConfig` splits it into a
:class:`transformers.LlamaConfig` for the LLM and the LLaVA fields this package reads.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LLAVA_MODEL_TYPE = "llava_llama"
LLAVA_ARCHITECTURE = "LlavaLlamaForCausalLM"
SPATIAL_VIDEO_TOWER = "SpatialAwareModule"
# Model families the tier loads, told apart by config.json and the tensor names.
FAMILY_3D = "llava-3d"  # mm_video_tower SpatialAwareModule: scene tokens with 3D positions
FAMILY_2D = "llava-1.5"  # no video tower (LLaVA-1.5, Spatial-LLaVA...): one image
FAMILY_NAMES = {
    FAMILY_3D: "LLaVA-3D (scene tokens with a 3D position embedding)",
    FAMILY_2D: "LLaVA-1.5 family (one image, no 3D position embedding)",
}
# LLaVA's image_aspect_ratio values this package implements for the 2D family: "pad"
# (LLaVA-1.5: pad to a square with the CLIP mean colour) and the CLIP processor's own
# resize + centre crop (LLaVA's fallback for any other value except "anyres").
ASPECT_PAD = "pad"
# Hard-coded in LLaVA-3D's code, not config keys: 0.2 m voxel pooling, at most 2560 tokens.
DEFAULT_VOXEL_SIZE = 0.2
DEFAULT_MAX_SCENE_TOKENS = 2560

# Keys LLaVA adds to the Llama config that this package reads (the rest pass through).
LLAVA_KEYS = (
    "mm_vision_tower",
    "mm_video_tower",
    "mm_projector_type",
    "mm_hidden_size",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "num_frames",
    "mm_patch_merge_type",
    "mm_use_im_start_end",
    "tokenizer_model_max_length",
    "image_aspect_ratio",
)
# Bookkeeping keys that must not reach LlamaConfig (it has its own model_type).
_NOT_LLAMA_KEYS = (
    "model_type",
    "architectures",
    "auto_map",
    "_name_or_path",
    "transformers_version",
)
# transformers' generic PreTrainedConfig fields that mean nothing for a causal LM checkpoint.
_NOT_WRITTEN = (
    "architectures",
    "auto_map",
    "_name_or_path",
    "id2label",
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)
_PROJECTOR_RE = re.compile(r"^mlp(\d+)x_gelu$")


class LmmError(RuntimeError):
    """The language-model tier cannot load or run (bad checkpoint, bad input, no memory)."""


class LlavaConfigError(LmmError, ValueError):
    """config.json is not a LLaVA config this package can run (wrong model_type, unknown
    video tower, unsupported projector or image processing...)."""


@dataclass
class LlavaConfig:
    """A LLaVA config: the LLM's :class:`~transformers.LlamaConfig` plus the LLaVA keys.

    ``mm_video_tower`` tells the family apart (:attr:`family`): "SpatialAwareModule" for
    LLaVA-3D, absent (None) for the LLaVA-1.5 family.

    ``extra`` keeps every other key of the original file (training flags such as
    ``tune_mm_mlp_adapter``) so :meth:`to_dict` writes back what was read.
    """

    llama: Any  # transformers.LlamaConfig (imported lazily: transformers is heavy)
    mm_hidden_size: int = 1024
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_tower: str | None = "openai/clip-vit-large-patch14-336"
    mm_video_tower: str | None = SPATIAL_VIDEO_TOWER
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    num_frames: int = 20
    mm_patch_merge_type: str = "flat"
    mm_use_im_start_end: bool = False
    tokenizer_model_max_length: int | None = None
    image_aspect_ratio: str | None = None  # 2D family: "pad" (LLaVA-1.5) or the crop
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- derived -------------------------------------------------------------------

    @property
    def family(self) -> str:
        """FAMILY_3D with the 3D video tower, FAMILY_2D without one."""
        return FAMILY_3D if self.mm_video_tower else FAMILY_2D

    @property
    def pads_to_square(self) -> bool:
        """2D family: images are padded to a square with the mean colour (else resized and
        centre-cropped, as the CLIP image processor does)."""
        return self.image_aspect_ratio == ASPECT_PAD

    @property
    def hidden_size(self) -> int:
        return int(self.llama.hidden_size)

    @property
    def projector_depth(self) -> int:
        """Linear layers in the projector: 1 for "linear", N for "mlpNx_gelu"."""
        if self.mm_projector_type == "linear":
            return 1
        m = _PROJECTOR_RE.match(self.mm_projector_type)
        assert m is not None  # validate() checked
        return int(m.group(1))

    @property
    def context_length(self) -> int:
        """Most tokens (prompt + answer) the LLM's position embedding was trained for."""
        return int(self.llama.max_position_embeddings)

    @property
    def vision_feature_spec(self) -> str:
        """What the scene features must be, in words (for checking the memory's encoder)."""
        return (
            f"{self.mm_vision_tower} hidden_states[{self.mm_vision_select_layer}] "
            f"({self.mm_vision_select_feature}), {self.mm_hidden_size}-d per patch"
        )

    # -- checks --------------------------------------------------------------------

    def validate(self) -> None:
        if self.mm_video_tower and self.mm_video_tower != SPATIAL_VIDEO_TOWER:
            raise LlavaConfigError(
                f"mm_video_tower is {self.mm_video_tower!r}; LLaVA-3D's is "
                f"{SPATIAL_VIDEO_TOWER!r} and the LLaVA-1.5 family has none"
            )
        if self.image_aspect_ratio is not None and "anyres" in str(self.image_aspect_ratio):
            raise LlavaConfigError(
                f"image_aspect_ratio {self.image_aspect_ratio!r} (LLaVA-NeXT tiling) is not "
                f"supported; LLaVA-1.5 uses {ASPECT_PAD!r}"
            )
        if self.mm_projector_type != "linear" and not _PROJECTOR_RE.match(self.mm_projector_type):
            raise LlavaConfigError(
                f"unsupported mm_projector_type {self.mm_projector_type!r} "
                "(supported: 'linear', 'mlpNx_gelu')"
            )
        if int(self.mm_hidden_size) <= 0:
            raise LlavaConfigError(f"mm_hidden_size must be positive, got {self.mm_hidden_size}")
        if self.mm_vision_select_feature != "patch":
            # The memory stores patch tokens only (CLS dropped), as LLaVA-3D does.
            logger.warning(
                "mm_vision_select_feature is %r; scene features from the memory are "
                "patch tokens only",
                self.mm_vision_select_feature,
            )

    # -- (de)serialisation -----------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> LlavaConfig:
        """Parse an official config.json dict (either family: see :attr:`family`); raises
        LlavaConfigError when it is not a LLaVA (``llava_llama``) config."""
        from transformers import LlamaConfig

        model_type = raw.get("model_type")
        if model_type != LLAVA_MODEL_TYPE:
            hint = {
                "llama": "a plain Llama checkpoint (no projector, no 3D position embedding)",
                "llava": "transformers' LlavaForConditionalGeneration layout, not the "
                "LLaVA-3D release",
                "clip": "a CLIP checkpoint (that is the vision tower: load it as an encoder)",
            }.get(str(model_type), "not a LLaVA checkpoint")
            raise LlavaConfigError(
                f"{source}: model_type is {model_type!r}, expected {LLAVA_MODEL_TYPE!r} ({hint})"
            )
        archs = raw.get("architectures")
        if archs is not None and LLAVA_ARCHITECTURE not in archs:
            raise LlavaConfigError(
                f"{source}: architectures {archs!r} do not include {LLAVA_ARCHITECTURE!r}"
            )
        llama_keys = {
            k: v for k, v in raw.items() if k not in LLAVA_KEYS and k not in _NOT_LLAMA_KEYS
        }
        try:
            llama = LlamaConfig.from_dict(llama_keys)
        except (TypeError, ValueError) as exc:
            raise LlavaConfigError(f"{source}: bad Llama keys: {exc}") from exc
        extra = {k: v for k, v in raw.items() if k not in LLAVA_KEYS}
        try:
            return cls(
                llama=llama,
                mm_hidden_size=int(raw.get("mm_hidden_size", 1024)),
                mm_projector_type=str(raw.get("mm_projector_type", "linear")),
                mm_vision_tower=raw.get("mm_vision_tower"),
                mm_video_tower=raw.get("mm_video_tower") or None,
                mm_vision_select_layer=int(raw.get("mm_vision_select_layer", -2)),
                mm_vision_select_feature=str(raw.get("mm_vision_select_feature", "patch")),
                num_frames=int(raw.get("num_frames", 20)),
                mm_patch_merge_type=str(raw.get("mm_patch_merge_type", "flat")),
                mm_use_im_start_end=bool(raw.get("mm_use_im_start_end", False)),
                tokenizer_model_max_length=raw.get("tokenizer_model_max_length"),
                image_aspect_ratio=raw.get("image_aspect_ratio"),
                extra=extra,
            )
        except LlavaConfigError as exc:
            raise LlavaConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> LlavaConfig:
        file = Path(path) / "config.json"
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise LlavaConfigError(f"{file} not found: not a checkpoint directory") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise LlavaConfigError(f"unreadable {file}: {exc}") from exc
        if not isinstance(raw, dict):
            raise LlavaConfigError(f"{file}: expected a JSON object")
        return cls.from_dict(raw, source=str(file))

    def to_dict(self) -> dict[str, Any]:
        """The official flat config.json (Llama keys + LLaVA keys)."""
        out = dict(self.extra)
        out.update(self.llama.to_dict())
        for k in _NOT_WRITTEN:
            out.pop(k, None)
        rope = out.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            out.setdefault("rope_theta", rope["rope_theta"])  # the key transformers 4.x reads
        out.update(
            {
                "model_type": LLAVA_MODEL_TYPE,
                "architectures": [LLAVA_ARCHITECTURE],
                "mm_vision_tower": self.mm_vision_tower,
                "mm_projector_type": self.mm_projector_type,
                "mm_hidden_size": int(self.mm_hidden_size),
                "mm_vision_select_layer": int(self.mm_vision_select_layer),
                "mm_vision_select_feature": self.mm_vision_select_feature,
                "num_frames": int(self.num_frames),
                "mm_patch_merge_type": self.mm_patch_merge_type,
                "mm_use_im_start_end": bool(self.mm_use_im_start_end),
            }
        )
        if self.mm_video_tower:
            out["mm_video_tower"] = self.mm_video_tower
        if self.tokenizer_model_max_length is not None:
            out["tokenizer_model_max_length"] = int(self.tokenizer_model_max_length)
        if self.image_aspect_ratio is not None:
            out["image_aspect_ratio"] = self.image_aspect_ratio
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)
        (Path(path) / "config.json").write_text(text + "\n")
