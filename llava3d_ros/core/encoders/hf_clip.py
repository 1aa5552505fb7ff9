"""Backend "hf_clip": a Hugging Face CLIP checkpoint (vision + text towers) via transformers.

This is LLaVA-3D's vision tower (openai/clip-vit-large-patch14-336). Weights are loaded
from a local directory, or from the Hugging Face cache by repo id, with
``local_files_only=True`` unless the config sets ``allow_network: true``.

One forward of the vision tower gives two kinds per patch:

- ``"vision"``: LLaVA-3D's features, ``hidden_states[select_layer]`` (default -2) with the
  CLS token dropped -> (B, g, g, hidden), 24x24x1024 for ViT-L/14-336.
- ``"ground"``: dense features in CLIP's joint image-text space. CLIP's patch tokens are
  poorly localised; training-free fixes rewrite the *last* transformer block for the patch
  tokens and then apply ``post_layernorm`` and ``visual_projection`` (the path CLS takes):

  =============  ==========================================================
  ``maskclip``   out_proj(v_proj(ln1(x))): the value path, no q-k attention
  ``clearclip``  softmax(q q^T / sqrt(d)) v -> out_proj (self-self attention)
  ``sclip``      mean of softmax(q q^T) and softmax(k k^T) attention on v
  ``qk``         the block's own q-k attention, residual and FFN still dropped
  ``raw``        the block's normal output (baseline: residual and FFN kept)
  =============  ==========================================================

  All but ``raw`` drop the block's residual connection and FFN, as ClearCLIP (Lan et al.,
  ECCV 2024) found the residual stream to be the main source of noise. Default:
  ``clearclip``, which that paper reports ahead of MaskCLIP and SCLIP on all of its
  open-vocabulary segmentation benchmarks. Not measured here (no real CLIP offline):
  :func:`benchmarks.dense_variants.measure_dense_variants` does it for a real
  checkpoint. ``x`` is ``hidden_states[-2]``, the input of the last block, which with the
  default ``select_layer`` is exactly the "vision" output: the last block never runs in full.

Text: :class:`CLIPTextEncoder` (text tower + projection), prompt templates averaged.
Preprocessing: CLIP's image processor, as LLaVA-3D was trained with it: the short side
resized to the model's image size, the centred square cut out (``crop: center``;
``crop: none`` squashes the whole frame instead), with the checkpoint's own resample
filter and mean/std (``preprocessor_config.json``; ``crop: auto`` follows its
``do_center_crop``). The patch geometry follows the crop, so lifting places each patch
on the pixels it saw; the pixels outside the square are not lifted.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import (
    CROP_MODES,
    GROUND,
    VISION,
    CompiledForward,
    EncoderBundle,
    EncoderError,
    ImageEncoder,
    PatchGeometry,
    TextEncoder,
    check_compile_mode,
    check_images,
    resolve_torch_device,
    resolve_torch_dtype,
)
from .registry import parse_options, register_backend
from .text_common import check_texts

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

DENSE_MODES = ("maskclip", "clearclip", "sclip", "qk", "raw")
DEFAULT_DENSE_MODE = "clearclip"
# Used only when a checkpoint has no preprocessor_config.json (OpenAI CLIP's statistics).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_BICUBIC = 3
# A few generic templates: averaging prompts is a cheap, reliable gain for CLIP zero-shot.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "there is a {} in the scene.",
    "a photo of a {} in a room.",
)
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# --- loading ------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """Repo ids are ``org/name``; anything else with separators is meant as a directory."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or os.path.exists(name)
    )


def _check_model_type(model_type: Any, vision_tower: Any, name: str) -> None:
    if model_type in ("clip", "clip_vision_model"):
        return
    hint = ""
    if vision_tower:  # a LLaVA checkpoint: point at the CLIP it names instead
        hint = f" (a LLaVA checkpoint; its vision tower is {vision_tower!r}: load that)"
    raise EncoderError(
        f"hf_clip: {name} is a {model_type!r} model, expected a CLIP "
        f"checkpoint (model_type 'clip' or 'clip_vision_model'){hint}"
    )


def load_clip(
    model: str | os.PathLike[str],
    allow_network: bool = False,
    revision: str | None = None,
) -> tuple[nn.Module, Any]:
    """Load a CLIPModel (or a vision-only CLIPVisionModel) -> (model in eval mode, config).

    Raises EncoderError for a missing directory, missing config/weights, a checkpoint that
    is not CLIP, or a repo id absent from the cache when the network is not allowed."""
    try:
        from transformers import AutoConfig, CLIPModel, CLIPVisionModel
    except ImportError as exc:
        raise EncoderError("hf_clip needs the 'transformers' package") from exc

    name = os.fspath(model)
    local = _looks_like_path(name)
    if local:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise EncoderError(f"hf_clip: model directory not found: {path}")
        if not (path / "config.json").is_file():
            raise EncoderError(
                f"hf_clip: {path} has no config.json; not a Hugging Face model directory"
            )
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EncoderError(f"hf_clip: unreadable {path / 'config.json'}: {exc}") from exc
        # Check the type before transformers does: its error for e.g. a LLaVA checkpoint
        # ("unrecognized model type") does not say what to load instead.
        _check_model_type(raw.get("model_type"), raw.get("mm_vision_tower"), str(path))
        if not any((path / f).is_file() for f in _WEIGHT_FILES):
            raise EncoderError(
                f"hf_clip: {path} has no weights (looked for {', '.join(_WEIGHT_FILES)})"
            )
        name = str(path)
    kwargs: dict[str, Any] = {"local_files_only": not allow_network}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except OSError as exc:
        if local:
            raise EncoderError(f"hf_clip: cannot read {name}/config.json: {exc}") from exc
        hint = (
            ""
            if allow_network
            else ": not a local directory, not in the Hugging Face cache, and allow_network "
            "is false (download it on a connected machine, or pass a directory)"
        )
        raise EncoderError(f"hf_clip: cannot load {name!r}{hint}") from exc
    except ValueError as exc:  # unknown model_type
        raise EncoderError(f"hf_clip: {name}: {exc}") from exc

    model_type = getattr(config, "model_type", None)
    _check_model_type(model_type, getattr(config, "mm_vision_tower", None), name)
    cls = CLIPModel if model_type == "clip" else CLIPVisionModel
    try:
        net = cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise EncoderError(f"hf_clip: cannot load weights from {name}: {exc}") from exc
    net.eval()
    return net, config


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    resample: int = PIL_BICUBIC
    center_crop: bool = True  # CLIPImageProcessor's do_center_crop default


def load_preprocessing(
    model: str, allow_network: bool = False, revision: str | None = None
) -> Preprocessing:
    """Mean, std, PIL resample and centre crop from the checkpoint's
    preprocessor_config.json, or OpenAI CLIP's."""
    path: str | None = None
    if os.path.isdir(os.path.expanduser(model)):
        candidate = Path(model).expanduser() / "preprocessor_config.json"
        path = str(candidate) if candidate.is_file() else None
    else:
        try:
            from transformers.utils import cached_file

            path = cached_file(
                model,
                "preprocessor_config.json",
                local_files_only=not allow_network,
                revision=revision,
                _raise_exceptions_for_missing_entries=False,
            )
        except Exception as exc:  # optional file: fall back to defaults below
            logger.debug("hf_clip: no preprocessor config for %s: %s", model, exc)
    if path is None:
        logger.warning(
            "hf_clip: %s has no preprocessor_config.json; using OpenAI CLIP "
            "mean/std, bicubic resize and centre crop",
            model,
        )
        return Preprocessing()
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderError(f"hf_clip: unreadable {path}: {exc}") from exc
    mean = tuple(float(v) for v in cfg.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(float(v) for v in cfg.get("image_std", OPENAI_CLIP_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise EncoderError(f"hf_clip: bad image_mean/image_std in {path}")
    resample = cfg.get("resample", PIL_BICUBIC)
    return Preprocessing(
        mean,
        std,
        int(resample) if isinstance(resample, int) else PIL_BICUBIC,
        bool(cfg.get("do_center_crop", True)),
    )


def load_tokenizer(model: str, allow_network: bool = False, revision: str | None = None) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise EncoderError("hf_clip needs the 'transformers' package") from exc
    advice = (
        "the text side needs tokenizer files (tokenizer.json, or vocab.json + "
        "merges.txt); or set text: false for image features only"
    )
    local = Path(model).expanduser()
    # transformers 5 builds an (almost empty) CLIP tokenizer when the files are missing
    # instead of failing, so check for them here.
    if local.is_dir() and not (
        (local / "tokenizer.json").is_file()
        or ((local / "vocab.json").is_file() and (local / "merges.txt").is_file())
    ):
        raise EncoderError(f"hf_clip: no tokenizer files in {local}; {advice}")
    kwargs: dict[str, Any] = {"local_files_only": not allow_network}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return AutoTokenizer.from_pretrained(model, **kwargs)
    except Exception as exc:  # OSError, ValueError, and the tokenizers library's own errors
        raise EncoderError(f"hf_clip: no usable tokenizer in {model} ({exc}); {advice}") from exc


# --- image encoder ------------------------------------------------------------------------


class HFClipImageEncoder(ImageEncoder):
    """CLIP vision tower -> "vision" (layer ``select_layer``) and "ground" (dense) features."""

    name = "hf_clip"

    def __init__(
        self,
        model: Any,  # a transformers CLIP model (duck-typed: see below)
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        resample: int = PIL_BICUBIC,
        select_layer: int = -2,
        dense_mode: str = DEFAULT_DENSE_MODE,
        input_size: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 16,
        crop: str = "center",
        compile: bool = False,
        compile_mode: str = "default",
    ) -> None:
        """``compile``: torch.compile the tower pass of :meth:`encode` in ``compile_mode``
        (``reduce-overhead`` replays CUDA graphs on a GPU: see ``CompiledForward``)."""
        check_compile_mode(compile_mode, "hf_clip")
        # CLIPModel has .vision_model + .visual_projection; CLIPVisionModel is the tower
        # itself in transformers 5 and wraps it in .vision_model in 4.x.
        tower = getattr(model, "vision_model", model)
        if not all(
            hasattr(tower, a) for a in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm")
        ):
            raise EncoderError(f"hf_clip: {type(model).__name__} has no CLIP vision tower")
        # transformers modules, duck-typed: nn.Module's __getattr__ types every attribute
        # as Tensor | Module, which says nothing about a CLIP tower.
        self._vision: Any = tower
        self._projection: Any = getattr(model, "visual_projection", None)
        self.model = model
        vcfg = self._vision.config
        patch = int(vcfg.patch_size)
        native = int(vcfg.image_size)
        size = native if input_size is None else int(input_size)
        if size < patch or size % patch:
            raise EncoderError(
                f"hf_clip: input_size {size} must be a multiple of the patch size {patch}"
            )
        self._interpolate = size != native  # other sizes need interpolated position embeddings
        grid = size // patch
        if crop not in CROP_MODES:
            raise EncoderError(f"hf_clip: crop must be one of {CROP_MODES}, got {crop!r}")
        self.geometry = PatchGeometry(size, size, patch, grid, grid, crop)
        layers = self._vision.encoder.layers
        self._n_layers = len(layers)
        if not -(self._n_layers + 1) <= select_layer <= self._n_layers:
            raise EncoderError(
                f"hf_clip: select_layer {select_layer} out of range for "
                f"{self._n_layers} layers (hidden_states has "
                f"{self._n_layers + 1} entries)"
            )
        self.select_layer = select_layer
        self._select_index = select_layer % (self._n_layers + 1)
        if dense_mode not in DENSE_MODES:
            raise EncoderError(
                f"hf_clip: dense_mode must be one of {', '.join(DENSE_MODES)}, got {dense_mode!r}"
            )
        self.dense_mode = dense_mode
        if max_batch_size < 1:
            raise EncoderError("hf_clip: max_batch_size must be >= 1")
        self._max_batch = int(max_batch_size)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model.to(device=self.device, dtype=dtype)
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)
        self._resample = int(resample)
        # transformers 4.x layers take (h, mask, causal_mask) and return tuples; 5.x (h, mask).
        params = inspect.signature(layers[0].forward).parameters
        self._legacy_layer = "causal_attention_mask" in params
        self.feature_dims = {VISION: int(vcfg.hidden_size)}
        if self._projection is not None:
            self.feature_dims[GROUND] = int(self._projection.out_features)
        self._features: Callable[[torch.Tensor], dict[str, torch.Tensor]] = (
            CompiledForward(self.forward_features, compile_mode, self.device, "hf_clip")
            if compile
            else self.forward_features
        )

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    @property
    def image_mean(self) -> tuple[float, float, float]:
        """The checkpoint's normalisation mean (0..1 per channel)."""
        r, g, b = (float(v) for v in self._mean)
        return r, g, b

    def preprocess(self, images: Sequence[np.ndarray], crop: str | None = None) -> torch.Tensor:
        """RGB uint8 frames -> (B, 3, S, S) on the model's device/dtype: the short side
        resized to S and the centre cut out (``crop`` "center"), or the whole frame
        resized to S x S ("none"). ``crop`` None: the encoder's own (its geometry's)."""
        from PIL import Image

        check_images(images)
        crop = self.geometry.crop if crop is None else crop
        if crop not in CROP_MODES:
            raise EncoderError(f"hf_clip: crop must be one of {CROP_MODES}, got {crop!r}")
        s = self.geometry.input_height
        batch = np.empty((len(images), 3, s, s), np.float32)
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            if crop == "center" and h != w:
                # CLIPImageProcessor: resize the short side, then crop (in that order, so
                # the border pixels are interpolated from their true neighbours).
                rw, rh = (int(s * w / h), s) if h <= w else (s, int(s * h / w))
                img = np.asarray(Image.fromarray(img).resize((rw, rh), resample=self._resample))
                top, left = (rh - s) // 2, (rw - s) // 2
                img = img[top : top + s, left : left + s]
            elif h != s or w != s:
                img = np.asarray(Image.fromarray(img).resize((s, s), resample=self._resample))
            x = (img.astype(np.float32) / 255.0 - self._mean) / self._std
            batch[i] = x.transpose(2, 0, 1)
        return torch.from_numpy(batch).to(self.device, self.dtype)

    def _layer(self, layer: Any, h: torch.Tensor) -> torch.Tensor:
        out = layer(h, None, None) if self._legacy_layer else layer(h, None)
        return out[0] if isinstance(out, tuple) else out

    def hidden_states(self, pixel_values: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """HF-convention hidden states 0..upto (0 = embeddings after pre-LN, k = layer k out)."""
        vm = self._vision
        h = vm.embeddings(pixel_values, interpolate_pos_encoding=self._interpolate)
        h = vm.pre_layrnorm(h)
        states = [h]
        for layer in vm.encoder.layers[:upto]:
            h = self._layer(layer, h)
            states.append(h)
        return states

    def dense_from_block_input(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Last-block rewrite ``mode`` on its input ``x`` (B, T, D) -> (B, T, proj) unit length."""
        if self._projection is None:
            raise EncoderError(
                "hf_clip: a vision-only checkpoint has no visual_projection; "
                "'ground' needs the full CLIPModel"
            )
        block = self._vision.encoder.layers[-1]
        if mode == "raw":
            y = self._layer(block, x)
        else:
            attn = block.self_attn
            z = block.layer_norm1(x)
            b, t, d = z.shape
            heads = attn.num_heads
            v = attn.v_proj(z)
            if mode == "maskclip":
                o = v  # each token attends only to itself: the value embedding
            else:

                def split(u: torch.Tensor) -> torch.Tensor:
                    return u.view(b, t, heads, d // heads).transpose(1, 2)

                vh = split(v)
                if mode == "clearclip":
                    q = split(attn.q_proj(z))
                    oh = F.scaled_dot_product_attention(q, q, vh)
                elif mode == "sclip":
                    q = split(attn.q_proj(z))
                    k = split(attn.k_proj(z))
                    # Averaging the two softmaxes == averaging the two attention outputs.
                    oh = 0.5 * (
                        F.scaled_dot_product_attention(q, q, vh)
                        + F.scaled_dot_product_attention(k, k, vh)
                    )
                else:  # "qk"
                    q = split(attn.q_proj(z))
                    k = split(attn.k_proj(z))
                    oh = F.scaled_dot_product_attention(q, k, vh)
                o = oh.transpose(1, 2).reshape(b, t, d)
            y = attn.out_proj(o)
        y = self._projection(self._vision.post_layernorm(y))
        return F.normalize(y.float(), dim=-1)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        patches = tokens[:, 1:, :]  # drop CLS (select_feature "patch" in LLaVA)
        return patches.reshape(tokens.shape[0], g.grid_height, g.grid_width, -1).float()

    def forward_features(
        self, pixel_values: torch.Tensor, dense_modes: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """One tower pass -> {"vision": ..., "ground": ...} for the configured dense mode, or
        {"vision": ..., "ground:<mode>": ...} for each of ``dense_modes`` (for comparisons)."""
        modes = [self.dense_mode] if dense_modes is None else list(dense_modes)
        for mode in modes:
            if mode not in DENSE_MODES:
                raise EncoderError(f"hf_clip: unknown dense mode {mode!r}")
        want_dense = self._projection is not None and modes
        last_in = self._n_layers - 1  # index of the last block's input
        upto = max(self._select_index, last_in if want_dense else 0)
        with torch.no_grad():
            states = self.hidden_states(pixel_values, upto)
            out = {VISION: self._grid(states[self._select_index])}
            if want_dense:
                for mode in modes:
                    key = GROUND if dense_modes is None else f"{GROUND}:{mode}"
                    out[key] = self._grid(self.dense_from_block_input(states[last_in], mode))
        return out

    def encode(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        check_images(images)
        parts: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(images), self._max_batch):
            pixels = self.preprocess(images[start : start + self._max_batch])
            parts.append(self._features(pixels))
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}


# --- text encoder -------------------------------------------------------------------------


class CLIPTextEncoder(TextEncoder):
    """CLIP text tower + text_projection, unit length; prompt templates averaged per query."""

    name = "hf_clip_text"

    def __init__(
        self,
        model: Any,  # a transformers CLIP model (duck-typed: see below)
        tokenizer: Any,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
    ) -> None:
        if not hasattr(model, "text_model") or not hasattr(model, "text_projection"):
            raise EncoderError(f"hf_clip: {type(model).__name__} has no CLIP text tower")
        templates = list(templates)
        if not templates:
            raise EncoderError("hf_clip: templates must not be empty (use ['{}'] for none)")
        for t in templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise EncoderError(f"hf_clip: template {t!r} must contain '{{}}' exactly once")
        self.model: Any = model  # a transformers CLIPModel (duck-typed, see the image side)
        self.tokenizer = tokenizer
        self.templates = templates
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dim = int(model.text_projection.out_features)
        n_vocab = len(tokenizer)
        model_vocab = int(model.text_model.config.vocab_size)
        if n_vocab < 10 or n_vocab > model_vocab:
            raise EncoderError(
                f"hf_clip: tokenizer has {n_vocab} tokens, the text tower "
                f"embeds {model_vocab}: tokenizer files missing or mismatched"
            )
        limit = int(model.text_model.config.max_position_embeddings)
        tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
        self.max_tokens = int(min(limit, tok_limit))

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Raw prompts -> (N, dim) unit-length float32 (no templates)."""
        chunks = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                part = list(prompts[start : start + self.batch_size])
                tok = self.tokenizer(
                    part,
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                pooled = self.model.text_model(
                    input_ids=tok["input_ids"].to(self.device),
                    attention_mask=tok["attention_mask"].to(self.device),
                ).pooler_output
                feats = self.model.text_projection(pooled)
                chunks.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(chunks, dim=0)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        items = check_texts(texts)
        prompts = [t.format(text) for text in items for t in self.templates]
        n_t = len(self.templates)
        for i in range(len(items)):
            # A BPE token spans >= 1 character: only long prompts can overflow the window.
            longest = max(prompts[i * n_t : (i + 1) * n_t], key=len)
            if len(longest) + 2 > self.max_tokens:
                n = self._count_tokens(longest)
                if n > self.max_tokens:
                    logger.warning(
                        "hf_clip: text %d is %d tokens with its longest template; truncated to %d",
                        i,
                        n,
                        self.max_tokens,
                    )
        feats = self.embed_prompts(prompts).view(len(items), len(self.templates), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)


# --- factory ------------------------------------------------------------------------------


@dataclass
class HFClipOptions:
    model: str  # local directory, or a repo id resolved from the Hugging Face cache
    select_layer: int = -2  # LLaVA's mm_vision_select_layer
    dense_mode: str = DEFAULT_DENSE_MODE
    input_size: int | None = None  # default: the checkpoint's image_size (336 for LLaVA)
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    allow_network: bool = False  # let transformers download missing files
    revision: str | None = None
    templates: list[str] | None = None  # default DEFAULT_TEMPLATES; ["{}"] = raw text
    crop: str = "auto"  # auto (the checkpoint's do_center_crop), center, none
    text: bool = True  # build the text encoder (needs tokenizer files)
    max_batch_size: int = 16
    compile: bool = False  # torch.compile the tower pass (first frames slower)
    # torch.compile mode: default, reduce-overhead (CUDA graphs on a GPU), max-autotune,
    # max-autotune-no-cudagraphs
    compile_mode: str = "default"


@register_backend("hf_clip")
def create_hf_clip(options: Mapping[str, Any]) -> EncoderBundle:
    opts = parse_options(HFClipOptions, options, "backend 'hf_clip'")
    device = resolve_torch_device(opts.device, "hf_clip")
    # Half precision on GPUs (LLaVA runs CLIP in fp16/bf16).
    dtype = resolve_torch_dtype(opts.dtype, device, "hf_clip")
    model, config = load_clip(opts.model, opts.allow_network, opts.revision)
    prep = load_preprocessing(opts.model, opts.allow_network, opts.revision)
    if opts.crop not in ("auto", *CROP_MODES):
        raise EncoderError(f"hf_clip: crop must be auto, center or none, got {opts.crop!r}")
    crop = opts.crop if opts.crop != "auto" else ("center" if prep.center_crop else "none")
    image = HFClipImageEncoder(
        model,
        prep.mean,
        prep.std,
        prep.resample,
        crop=crop,
        select_layer=opts.select_layer,
        dense_mode=opts.dense_mode,
        input_size=opts.input_size,
        device=device,
        dtype=dtype,
        max_batch_size=opts.max_batch_size,
        compile=opts.compile,
        compile_mode=opts.compile_mode,
    )
    text = None
    if opts.text and config.model_type == "clip":
        tokenizer = load_tokenizer(opts.model, opts.allow_network, opts.revision)
        templates = opts.templates if opts.templates is not None else DEFAULT_TEMPLATES
        text = CLIPTextEncoder(model, tokenizer, templates, device)
    scale = getattr(model, "logit_scale", None)
    logit_scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else None
    return EncoderBundle(image=image, text=text, logit_scale=logit_scale)
