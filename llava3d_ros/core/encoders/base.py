"""Encoder backend interface shared by every vision / text model the memory can use.

An image encoder turns RGB frames into a grid of patch features. A backend feeds the
network the whole frame resized to a fixed input size, or (CLIP's processor, which
LLaVA-3D was trained with) its centred square; either way each patch covers a known
rectangle of the source image: `PatchGeometry` says which, and the lifting step uses it
to give every patch a 3D point (on the full-resolution depth, so nothing is resampled).

A backend may return two feature kinds per patch, keyed by name:
- ``"vision"``: the backbone's patch features (for LLaVA-3D: CLIP layer -2, 1024-d),
  what the language-model tier consumes;
- ``"ground"``: features in the text encoder's embedding space, what grounding scores.
One forward pass gives both, so the memory never re-encodes images per query.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

VISION = "vision"
GROUND = "ground"


#: How a frame is fitted to the network input (see :class:`PatchGeometry`).
CROP_MODES = ("none", "center")


class EncoderError(RuntimeError):
    """A model could not be loaded or run (missing files, bad shapes, corrupt weights)."""


@dataclass(frozen=True)
class PatchGeometry:
    """How network patches map onto source-image pixels.

    ``crop``: "none" - the whole frame is resized to the network input (squashed when
    the aspect ratios differ); "center" - the short side is resized to the input size and
    the middle cut out (CLIP's and so LLaVA's image processor): pixels left and right of
    the centred square (top and bottom for a portrait frame) belong to no patch."""

    input_height: int  # pixels the network sees
    input_width: int
    patch_size: int  # network patch edge in input pixels
    grid_height: int  # patches per column / row
    grid_width: int
    crop: str = "none"

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.crop == "center" and self.input_height != self.input_width:
            raise ValueError("a centre crop needs a square network input")

    @property
    def num_patches(self) -> int:
        return self.grid_height * self.grid_width

    def source_region(self, image_height: int, image_width: int) -> tuple[int, int, int, int]:
        """[row0, row1, col0, col1) of the source image the network sees.

        For "center" the same arithmetic as the CLIP image processor: the long side is
        resized to ``int(size * long / short)``, the crop starts ``(resized - size) // 2``
        pixels in, mapped back to source pixels."""
        if self.crop == "none":
            return 0, image_height, 0, image_width
        size = self.input_height
        short, long = min(image_height, image_width), max(image_height, image_width)
        resized_long = int(size * long / short)
        start = round((resized_long - size) // 2 * short / size)
        start = min(start, long - short)
        if image_height <= image_width:
            return 0, image_height, start, start + short
        return start, start + short, 0, image_width

    def patch_pixel_bounds(self, image_height: int, image_width: int) -> np.ndarray:
        """Source-pixel rectangle of every patch: (grid_h, grid_w, 4) int [row0, row1, col0, col1).

        Rows/cols are half-open; patches tile the region the network sees
        (:meth:`source_region`) exactly (edges rounded so no pixel is lost or shared)."""
        r0, r1, c0, c1 = self.source_region(image_height, image_width)
        rows = r0 + np.round(np.linspace(0, r1 - r0, self.grid_height + 1)).astype(np.int64)
        cols = c0 + np.round(np.linspace(0, c1 - c0, self.grid_width + 1)).astype(np.int64)
        out = np.empty((self.grid_height, self.grid_width, 4), dtype=np.int64)
        out[..., 0] = rows[:-1, None]
        out[..., 1] = rows[1:, None]
        out[..., 2] = cols[None, :-1]
        out[..., 3] = cols[None, 1:]
        return out


class ImageEncoder(ABC):
    """Frames in, patch features out. Implementations must be safe to call from one thread
    at a time; batching is the caller's choice (the TensorRT backend fixes the batch size)."""

    name: str
    geometry: PatchGeometry
    feature_dims: dict[str, int]  # e.g. {"vision": 1024, "ground": 768}
    device: torch.device

    @abstractmethod
    def encode(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """RGB uint8 images (H, W, 3), any size, -> {kind: (B, grid_h, grid_w, C) float tensor}.

        Tensors stay on ``self.device``; callers move them if they need to."""

    @property
    def max_batch_size(self) -> int:
        """Largest batch one call accepts (engines built for a fixed batch override this)."""
        return 64


class TextEncoder(ABC):
    """Text in, L2-normalised embeddings in the same space as the ``"ground"`` features."""

    name: str
    dim: int

    @abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """-> (N, dim) float32 tensor on the CPU, each row unit length."""


@dataclass
class EncoderBundle:
    """What a model configuration provides: an image encoder and, for grounding, a text
    encoder. A grounding model trained on a closed vocabulary (the default alignment head)
    also says which classes, with which names and prompt templates, and its learned
    logit scale: the object layer labels instances with them by default."""

    image: ImageEncoder
    text: TextEncoder | None = None
    label_vocabulary: Mapping[str, tuple[str, ...]] | None = None  # class -> names
    label_roles: Mapping[str, str] | None = None  # class -> object / furniture / background
    label_templates: tuple[str, ...] = ("{}", "a {}", "the {}")
    logit_scale: float | None = None  # 1 / temperature of ground-vs-text cosines

    @property
    def can_ground(self) -> bool:
        return self.text is not None and GROUND in self.image.feature_dims


def check_images(images: Sequence[np.ndarray]) -> None:
    """Clear errors for malformed frames before they reach a network."""
    if len(images) == 0:
        raise ValueError("encode() needs at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            shape = getattr(img, "shape", None)
            raise ValueError(f"image {i}: expected an (H, W, 3) RGB array, got shape {shape}")
        if img.dtype != np.uint8:
            raise ValueError(f"image {i}: expected uint8 pixels, got {img.dtype}")
        if img.shape[0] < 2 or img.shape[1] < 2:
            raise ValueError(f"image {i}: too small ({img.shape[0]}x{img.shape[1]})")


_TORCH_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_torch_device(device: str, backend: str) -> torch.device:
    """``auto`` -> CUDA when available; a CUDA device without CUDA is an EncoderError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"{backend}: device {device!r} requested but CUDA is not available")
    return dev


def resolve_torch_dtype(dtype: str, device: torch.device, backend: str) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 on CPU (CPU half kernels are slow)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _TORCH_DTYPES:
        raise EncoderError(
            f"{backend}: dtype must be auto or one of {sorted(_TORCH_DTYPES)}, got {dtype!r}"
        )
    return _TORCH_DTYPES[dtype]


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_mode(mode: str, backend: str) -> None:
    if mode not in COMPILE_MODES:
        raise EncoderError(
            f"{backend}: compile_mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}"
        )


class CompiledForward:
    """``fn`` through ``torch.compile(mode=...)``. ``reduce-overhead`` and ``max-autotune``
    replay CUDA graphs on a GPU (one launch instead of hundreds of kernel launches), and
    a graph writes every call's outputs into the same buffers: each call is marked as a
    new step and its tensors are copied out, or features kept from one frame would be
    overwritten by the next."""

    def __init__(
        self, fn: Callable[..., Any], mode: str, device: torch.device, backend: str
    ) -> None:
        check_compile_mode(mode, backend)
        self._fn = torch.compile(fn, mode=mode)
        self.cuda_graphs = mode in ("reduce-overhead", "max-autotune") and device.type == "cuda"

    def __call__(self, *args: Any) -> Any:
        if not self.cuda_graphs:
            return self._fn(*args)
        torch.compiler.cudagraph_mark_step_begin()
        out = self._fn(*args)
        if isinstance(out, dict):
            return {k: v.clone() for k, v in out.items()}
        return out.clone()
